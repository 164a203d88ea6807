"""benchmarks.dyt_cost on a tiny ViT: the forced activation rate, the FLOPs of skipping and the JSON
record. Timings are not targets here."""
from __future__ import annotations

import json

import pytest

from benchmarks import dyt_cost

TINY = ["--arch", "vit_tiny_patch16_224", "--image-size", "32", "--batch", "2", "--eval-batch", "8",
        "--steps", "1", "--rate", "0.5"]


def test_tiny_run_forces_the_rate_and_skipping_saves_flops(tmp_path, capsys):
    path = tmp_path / "cost.json"
    assert dyt_cost.main([*TINY, "--json", str(path)]) == 0
    record = json.loads(path.read_text())
    # 8 images x 4 patch tokens per layer: the calibrated bias keeps 16 of 32; one token may flip at the
    # boundary because the gathered MLP of the skipping path can round differently from the masked one.
    assert record["activation_rate"] == pytest.approx(0.5, abs=1 / 32 + 1e-9)
    # Skipping about half the MLPs (2/3 of a block's linear FLOPs) outweighs the dispatchers and adapters.
    assert record["dyt_gflops_per_image"] < 0.85 * record["vit_gflops_per_image"]
    assert record["flops_ratio"] == pytest.approx(record["vit_gflops_per_image"] / record["dyt_gflops_per_image"])
    # Full fine-tuning trains every parameter; DyT its adapters, dispatchers and head only.
    assert record["dyt_trainable_params"] < record["full_ft_trainable_params"] / 20
    assert record["full_ft_step_s"] > 0 and record["dyt_images_per_s"] > 0
    assert record["one_pass_step_speedup"] == pytest.approx(record["full_ft_step_s"] / record["dyt_one_pass_step_s"])
    assert record["fulltune_step_speedup"] == pytest.approx(record["fulltune_step_s"] / record["dyt_step_s"])
    assert "| inference GFLOPs per image; baseline: the plain ViT |" in capsys.readouterr().out


def test_rate_outside_zero_one_is_a_usage_error():
    with pytest.raises(dyt_cost.ConfigValueError, match="--rate"):
        dyt_cost.main([*TINY[:-2], "--rate", "1.5"])
