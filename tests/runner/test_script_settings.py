"""runner.script_settings: the world a scripts/<method>/*.sh run uses, from configs.py as the runner resolves it."""
from __future__ import annotations

import subprocess
import sys

import pytest

import configs
from runner.config import REPO_ROOT
from runner.script_settings import main, resolve, shell_assignments
from tests.runner.conftest import module_of, sweep_base


@pytest.fixture
def no_data(monkeypatch):
    monkeypatch.delenv("DATA", raising=False)


@pytest.mark.parametrize("task, asked, used", [
    ("coop", "caltech101", "demo_shapes"),  # b2n: the first of demo datasets_base_to_new
    ("coop", "demo_symbols", "demo_symbols"),  # a demo dataset is used as given
    ("coop_all", "dtd", "demo_shapes"),  # few-shot: the first of demo datasets_all
    ("coop_xd", "imagenet_a", "demo_shapes_sketch"),  # a domain-generalisation target: the demo one
    ("coop_xd", "oxford_pets", "demo_symbols"),  # another cross-dataset target: the first other demo target
])
def test_demo_world_replaces_real_datasets(no_data, task, asked, used):
    world = resolve(configs, task, asked)
    assert world.demo and world.root == "" and world.dataset == used
    expected = f"dataset {used} as given" if asked == used else f"dataset {used} instead of {asked}"
    assert world.note.startswith(expected)


def test_demo_world_takes_configs_demo_settings(no_data):
    world = resolve(configs, "skip_tuning_xd", "", "")
    assert world.cfg == configs.skip_tuning_xd["demo"]["cfg"]
    assert world.xd_source == configs.base["demo"]["xd_source"]
    assert world.opts == configs.base["demo"]["opts"]
    assert world.output_root == configs.base["demo"]["output"]["root"]
    assert world.note == ("source dataset demo_shapes instead of imagenet, demo CLIP, "
                          "config SkipTuning/demo: fp32, 10 epochs")


def test_note_follows_the_run_overrides(no_data):
    assert resolve(configs, "coop", "dtd", user_opts=["OPTIM.MAX_EPOCH", "1"]).note.endswith("fp32, 1 epoch")
    assert resolve(configs, "skip_tuning", "dtd", user_opts=["TRAINER.PREC", "amp"]).note.endswith(": amp, 10 epochs")
    # CoOp/demo also sets ZSCLIP.PREC fp32: with two precisions in the config the note names none
    assert resolve(configs, "coop", "dtd", user_opts=["TRAINER.COOP.PREC", "amp"]).note.endswith(": 10 epochs")
    # zero-shot: evaluation only, so no epoch count
    assert resolve(configs, "zsclip", "dtd").note.endswith("config CoOp/demo: fp32")


def test_a_configured_data_root_is_not_the_demo_world(tmp_path, no_data):
    module = module_of(sweep_base(tmp_path, data_root="/data/x"),
                       {"coop": {"train": {"trainer": "CoOp", "cfg": "vit_b16_ep100"}}})
    world = resolve(module, "coop", "caltech101")
    assert (world.demo, world.root, world.dataset, world.cfg, world.note) == (False, "/data/x", "caltech101",
                                                                              "vit_b16_ep100", "")


def test_shell_assignments_round_trip_through_bash(no_data):
    world = resolve(configs, "coop_xd", "it's", "")  # a quote in a value must survive
    world.opts = ["A", "two words"]
    script = shell_assignments(world) + '\nprintf "%s|" "$WORLD_DATASET" "${WORLD_OPTS[@]}" "$WORLD_NOTE"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == f"demo_symbols|A|two words|{world.note}|"


def test_unknown_task_is_a_usage_error(no_data, capsys):
    assert main(["coop_typo", "--dataset", "dtd"]) == 2
    assert "error: Unknown task 'coop_typo'" in capsys.readouterr().err


def test_command_line_takes_overrides_after_double_dash(no_data):
    out = subprocess.run([sys.executable, "-m", "runner.script_settings", "coop", "--dataset", "dtd", "--",
                          "OPTIM.MAX_EPOCH", "3"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert "WORLD_DATASET=demo_shapes\n" in out and "fp32, 3 epochs" in out
