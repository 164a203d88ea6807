"""Sweep-file loading: deep merge, validation errors, demo mode, --configs, GPU ids."""
from __future__ import annotations

import pytest

import parallel_runner
from runner.config import ConfigError, check_gpu_ids, deep_merge, load_sweep_module
from tests.runner.conftest import build, sweep_base, write_sweep


def test_deep_merge_merges_dicts_and_replaces_lists():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    out = deep_merge(base, {"a": {"y": [9]}, "c": 3})
    assert out == {"a": {"x": 1, "y": [9]}, "b": 2, "c": 3}
    assert base["a"]["y"] == [1, 2]  # the input is not modified


def test_shipped_configs_build_every_task():
    module = load_sweep_module()
    tasks = build(module.base, {n: getattr(module, n) for n in
                                ["skip_tuning", "skip_tuning_xd", "skip_tuning_all", "skip_tuning_layer",
                                 "skip_tuning_top", "skip_tuning_lambda", "ft_clip", "ft_clip_xd", "coop", "zsclip",
                                 "cocoop", "cocoop_xd", "cocoop_all"]})
    assert {t.name for t in tasks} >= {"skip_tuning", "zsclip"}
    assert module.pipeline[0]["tasks"] == ["skip_tuning", "skip_tuning_xd", "skip_tuning_all"]


def test_unknown_key_names_it_and_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train\.sedes'.*train\.seeds"):
        build(sweep_base(tmp_path), {"t": {"train": {"trainer": "CoOp", "cfg": "vit_b16", "sedes": [1]}}})


def test_password_in_sweep_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="RUNNER_MAIL_PASSWORD"):
        build(sweep_base(tmp_path), {"t": {"train": {"trainer": "CoOp", "cfg": "vit_b16"}, "mail": {"password": "x"}}})


def test_unknown_task_lists_the_defined_ones(tmp_path):
    tasks = {"coop_b": {"train": {"trainer": "CoOp", "cfg": "vit_b16"}}}
    with pytest.raises(ConfigError, match=r"Unknown task 'coop_a'.*\['coop_b'\]"):
        build(sweep_base(tmp_path), tasks, only=["coop_a"])


def test_missing_trainer_config_is_an_error_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="vit_b16_nope.yaml"):
        build(sweep_base(tmp_path), {"t": {"train": {"trainer": "CoOp", "cfg": "vit_b16_nope"}}})


def test_nonexistent_gpu_id_is_a_clear_error(tmp_path):
    tasks = build(sweep_base(tmp_path), {"t": {"train": {"trainer": "CoOp", "cfg": "vit_b16"}}},
                  pipeline=[dict(gpu_ids=[0, 3], tasks=["t"])])
    with pytest.raises(ConfigError, match=r"GPU id\(s\) \[3\].*2 CUDA device"):
        check_gpu_ids(tasks, device_count=2)
    assert check_gpu_ids(tasks, device_count=4) is True
    assert check_gpu_ids(tasks, device_count=0) is False  # no CUDA: CPU slots


def test_cli_rejects_bad_gpu_before_starting(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    sweep = write_sweep(tmp_path / "sweep.py", sweep_base(tmp_path),
                        {"t": {"train": {"trainer": "CoOp", "cfg": "vit_b16"}}}, [dict(gpu_ids=[1], tasks=["t"])])
    assert parallel_runner.main(["--configs", str(sweep)]) == 2
    assert "GPU id(s) [1]" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_demo_mode_without_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("DATA", raising=False)
    (task,) = build(sweep_base(tmp_path, data_root=None), {"t": {"train": {"trainer": "CoOp", "cfg": "vit_b16"},
                                                                 "demo": {"cfg": "CoOp/demo", "trainer_opts": ["A", "1"]}}})
    assert task.demo
    assert task.cfg["data"]["datasets_base_to_new"] == ["demo_shapes", "demo_symbols"]
    assert task.train["cfg"] == "CoOp/demo"
    assert task.train["opts"][-4:] == ["DATALOADER.NUM_WORKERS", "0", "A", "1"]
    assert task.cfg["output"]["root"] == "outputs/demo"
    monkeypatch.setenv("DATA", "/somewhere")
    (task,) = build(sweep_base(tmp_path, data_root=None), {"t": {"train": {"trainer": "CoOp", "cfg": "vit_b16"}}})
    assert not task.demo and task.cfg["data"]["datasets_base_to_new"][0] == "imagenet"


def test_configs_flag_uses_another_file(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "mine.py", sweep_base(tmp_path), {"mine": {"train": {"trainer": "CoOp", "cfg": "vit_b16_ep50", "seeds": [7]}}})
    assert parallel_runner.main(["--configs", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# task mine (mode b2n): 22 jobs" in out and "--seed 7" in out and "vit_b16_ep50.yaml" in out
