"""benchmarks.train_step on a tiny geometry: the JSON contract and numbers that must hold whatever the
machine (positive, consistent across trainers). Timings are not targets here."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from benchmarks import train_step
from engine.errors import ConfigValueError
from tests.conftest import REPO_ROOT

REQUIRED = ("trainer", "mode", "median_step_s", "peak_memory_mb", "trainable_params", "flops_per_step",
            "batch", "classes", "image_size", "steps", "device", "compute_dtype", "gflops_per_s", "gemm_fraction")
TINY = ["--geometry", "tiny", "--image-size", "32", "--classes", "8", "--batch", "2", "--steps", "1", "--device", "cpu",
        "--gemm-size", "128"]
# Fast mode is measured on two trainers only (the fixture above is the slowest of the suite): a CLIP
# prompt learner and DyT, whose autocast is its own.
FAST_TRAINERS = ("CoOp", "DyT")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = {}
    for name in train_step.trainer_names():
        path = tmp_path_factory.mktemp("bench") / f"{name}.json"
        train_step.main(["--trainer", name, "--json", str(path), *TINY])
        out[name] = json.loads(path.read_text())
    return out


@pytest.fixture(scope="module")
def fast_records(tmp_path_factory):
    out = {}
    for name in FAST_TRAINERS:
        path = tmp_path_factory.mktemp("bench") / f"{name}_fast.json"
        train_step.main(["--trainer", name, "--json", str(path), "--mode", "fast", *TINY])
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
        assert record["mode"] == "exact" and record["compute_dtype"] == "float32"
        # Achieved rate: the step's FLOPs over its median time, and its share of the fp32 GEMM's rate.
        assert record["gflops_per_s"] == record["flops_per_step"] / record["median_step_s"] / 1e9
        assert record["gemm_size"] == 128 and record["gemm_gflops_per_s"] > 0
        assert record["gemm_fraction"] == record["gflops_per_s"] / record["gemm_gflops_per_s"]


def test_fast_mode_records(records, fast_records):
    for name, fast in fast_records.items():
        exact = records[name]
        assert fast["mode"] == "fast" and fast["precision"] == "fp32"  # autocast on fp32 weights
        assert fast["compute_dtype"] == "bfloat16" and fast["trainer_cfg"] == exact["trainer_cfg"]
        assert fast["trainable_params"] == exact["trainable_params"]
        # The GEMM yardstick is measured in bf16 for a bf16 step, not the fp32 one.
        assert fast["gemm_fraction"] == fast["gflops_per_s"] / fast["gemm_gflops_per_s"]
    # Same maths in another precision: CoOp's step counts the same FLOPs (DyT's depend on the tokens its
    # gates keep, which rounding may change).
    assert fast_records["CoOp"]["flops_per_step"] == records["CoOp"]["flops_per_step"]


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


def test_planned_runs_cover_each_mode_and_class_count_with_its_precision():
    runs = train_step.planned_runs(["CoOp", "DyT"], "both", [10, 100], None, "cuda")
    assert [(r.trainer, r.mode, r.classes) for r in runs] == [
        (t, m, c) for t in ("CoOp", "DyT") for m in ("exact", "fast") for c in (10, 100)]
    # On CUDA exact mode keeps the originals' fp16 weights; fast mode autocasts fp32 ones.
    assert {r.mode: r.prec for r in runs} == {"exact": "fp16", "fast": "fp32"}
    assert {r.prec for r in train_step.planned_runs(["CoOp"], "both", [10], None, "cpu")} == {"fp32"}
    assert {r.prec for r in train_step.planned_runs(["CoOp"], "fast", [10], "amp", "cpu")} == {"amp"}
    with pytest.raises(ConfigValueError, match="--mode fast needs fp32 weights"):
        train_step.planned_runs(["CoOp"], "fast", [10], "fp16", "cuda")


def test_several_runs_are_measured_apart_and_the_gemm_once_per_dtype(monkeypatch):
    def fake_measure(run, args):
        dtype = "bfloat16" if run.mode == "fast" else "float32"
        return {"trainer": run.trainer, "mode": run.mode, "classes": run.classes, "compute_dtype": dtype,
                "median_step_s": 2.0, "flops_per_step": 8e9 * run.classes, "step_kind": "train_step",
                "peak_memory_mb": 1.0, "step_memory_mb": 1.0, "trainable_params": 1, "precision": run.prec}

    gemms = []

    def fake_gemm(device, dtype, size):
        gemms.append((dtype, size))
        return train_step.GemmRate(dtype, size, {"float32": 100.0, "bfloat16": 400.0}[dtype])

    monkeypatch.setattr(train_step, "measure_in_subprocess", fake_measure)
    monkeypatch.setattr(train_step, "measure_gemm", fake_gemm)
    records = train_step.main(["--trainer", "CoOp,FinetuneCLIP", "--mode", "both", "--classes", "10", "100",
                               "--device", "cpu", "--gemm-size", "64"])
    assert [(r["trainer"], r["mode"], r["classes"]) for r in records] == [
        (t, m, c) for t in ("CoOp", "FinetuneCLIP") for m in ("exact", "fast") for c in (10, 100)]
    assert sorted(gemms) == [("bfloat16", 64), ("float32", 64)]
    at_100 = {r["mode"]: r for r in records if r["classes"] == 100 and r["trainer"] == "CoOp"}
    assert at_100["exact"]["gflops_per_s"] == 400.0 and at_100["exact"]["gemm_fraction"] == 4.0
    assert at_100["fast"]["gemm_fraction"] == 1.0
    # Ratios in the table are against FinetuneCLIP of the same mode and class count.
    assert train_step.baseline(at_100["fast"], records) is records[-1]


@pytest.mark.parametrize("argv, message", [
    (["--trainer", "CoOP"], r"--trainer 'CoOP'.*Did you mean: CoOp"),
    (["--trainer", "CoOp", "--steps", "0"], r"--steps must be >= 1"),
])
def test_command_line_mistakes_end_in_one_message(argv, message):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_step", *TINY, *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1 and re.search(message, proc.stderr)


def test_the_text_budget_flag_sets_the_config_key(tmp_path):
    """--text-chunk-mb reaches TRAIN.TEXT_CHUNK_MB and the model's text budget; without it the config's default."""
    args = train_step.build_parser().parse_args(["--trainer", "CoOp", "--text-chunk-mb", "3", *TINY])
    default = train_step.build_parser().parse_args(["--trainer", "CoOp", *TINY])
    clip_path = str(tmp_path / "clip.pt")
    train_step.write_random_clip(clip_path, "tiny", 32)
    for parsed, budget in ((args, 3), (default, 8192)):
        run = train_step.run_args(parsed, train_step.planned_runs(["CoOp"], "exact", [8], None, "cpu")[0])
        trainer = train_step.build("CoOp", run, clip_path, str(tmp_path / f"out{budget}"))
        assert trainer.cfg.TRAIN.TEXT_CHUNK_MB == budget and trainer.model.text_chunk_mb == budget


def test_attention_flops_count_the_same_for_the_fused_cpu_kernel_and_the_plain_ops():
    import torch.nn.functional as F

    from clip.model import plain_attention

    n, heads, length, head_dim = 2, 3, 5, 8
    q, k, v = (torch.randn(n, heads, length, head_dim, requires_grad=True) for _ in range(3))
    mask = torch.full((length, length), float("-inf")).triu(1)
    fused = train_step._flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward())
    plain = train_step._flops(lambda: plain_attention(q, k, v, mask).sum().backward())
    # Forward: q k^T and p v, 2·N·H·L·L·d each; backward: two products per forward product.
    products = 2 * n * heads * length * length * head_dim
    assert fused == plain == 3 * 2 * products
