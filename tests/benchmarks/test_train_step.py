"""benchmarks.train_step on a tiny geometry: the JSON contract and numbers that must hold whatever the
machine (positive, consistent across trainers). Timings are not targets here."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from benchmarks import train_step
from engine.errors import ConfigValueError
from tests.conftest import REPO_ROOT

REQUIRED = ("trainer", "median_step_s", "peak_memory_mb", "trainable_params", "flops_per_step",
            "batch", "classes", "image_size", "steps", "device")
TINY = ["--geometry", "tiny", "--image-size", "32", "--classes", "8", "--batch", "2", "--steps", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = {}
    for name in train_step.trainer_names():
        path = tmp_path_factory.mktemp("bench") / f"{name}.json"
        train_step.main(["--trainer", name, "--json", str(path), *TINY])
        out[name] = json.loads(path.read_text())
    return out


def test_every_registered_trainer_is_measured(records):
    """... or cannot run in this checkout (DePT's alias of an absent host), or runs exactly what a measured
    name runs (`same_run_as`)."""
    from engine import TRAINER_REGISTRY

    for name in TRAINER_REGISTRY.registered_names():
        cls = TRAINER_REGISTRY.get(name)
        reason = getattr(cls, "unavailable_reason", lambda: None)()
        same_as = getattr(cls, "same_run_as", None)
        assert (name in records) == (reason is None and same_as is None), name
        assert same_as is None or same_as in records, name


def test_json_contract(records):
    for name, record in records.items():
        assert isinstance(record, dict) and record["trainer"] == name
        assert all(key in record for key in REQUIRED), [k for k in REQUIRED if k not in record]
        assert (record["batch"], record["classes"], record["image_size"], record["steps"]) == (2, 8, 32, 1)
        assert record["device"] == "cpu" and record["geometry"] == "tiny" and record["precision"] == "fp32"
        assert record["median_step_s"] > 0 and record["median_eval_s"] > 0
        assert record["peak_memory_mb"] > 0 and record["peak_memory_kind"].startswith("cpu_peak_rss")
        assert record["flops_per_step"] > 0 and record["eval_flops_per_batch"] > 0
        assert 0 <= record["trainable_params"] <= record["total_params"]


def test_numbers_are_consistent_across_trainers(records):
    zs, coop, ft, skip = (records[n] for n in ("ZeroshotCLIP", "CoOp", "FinetuneCLIP", "SkipTuning"))
    assert zs["trainable_params"] == 0 and zs["step_kind"] == "eval_batch"
    assert zs["flops_per_step"] == zs["eval_flops_per_batch"]
    assert coop["trainable_params"] == 16 * 64  # 16 context vectors of the tiny text width
    # Same CLIP everywhere; a method adds only trainable parameters (a prompt learner's context vectors).
    # FT trains everything but the stem, Skip Tuning only the upper half + heads.
    clip_params = zs["total_params"]
    assert ft["total_params"] == skip["total_params"] == clip_params
    for record in (r for n, r in records.items() if train_step.backbone_kind(n) == "clip"):
        assert clip_params <= record["total_params"] <= clip_params + record["trainable_params"], record["trainer"]
    assert skip["trainable_params"] < ft["trainable_params"] < ft["total_params"]
    # A training step (forward + backward) costs more than the forward of an eval batch.
    assert ft["flops_per_step"] > ft["eval_flops_per_batch"]
    # Skip Tuning's step skips the frozen half of both towers and most classes.
    assert skip["flops_per_step"] < ft["flops_per_step"]
    assert skip["cache_flops_per_batch"] > 0 and skip["median_step_incl_cache_s"] > skip["median_step_s"]
    assert 1 <= skip["classes_per_step"] <= 8
    # Every trainer runs its own recipe: Skip Tuning's ω = 6 of the 12 blocks (the tiny geometry has ViT-B/16's depth).
    assert skip["trainer_cfg"]["SKIP"]["START_LAYER"] == 6 and coop["trainer_cfg"]["COOP"]["N_CTX"] == 16
    # DyT on a random ViT-Tiny: adapters (bottleneck 16), dispatchers and the 8-way head train; its
    # step runs two passes (dynamic + complete model), so it costs more than the eval forward.
    dyt = records["DyT"]
    per_block = (2 * 192 * 16 + 16 + 192) + (192 + 1)
    assert dyt["trainable_params"] == 12 * per_block + 192 * 8 + 8
    assert dyt["flops_per_step"] > 2 * dyt["eval_flops_per_batch"]


def test_table_and_bad_arguments(records, capsys):
    table = train_step.format_table(list(records.values()))
    assert table.splitlines()[0].startswith("trainer") and len(table.splitlines()) == 2 + len(records)
    with pytest.raises(ConfigValueError, match="'NoSuchTrainer'"):
        train_step.main(["--trainer", "NoSuchTrainer", *TINY])


@pytest.mark.parametrize("argv, message", [
    (["--trainer", "CoOP"], r"--trainer 'CoOP'.*Did you mean: CoOp"),
    (["--trainer", "CoOp", "--steps", "0"], r"--steps must be >= 1"),
])
def test_command_line_mistakes_end_in_one_message(argv, message):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_step", *TINY, *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1 and re.search(message, proc.stderr)
