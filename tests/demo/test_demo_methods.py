"""End to end on the demo world: the fine-tuning methods improve on zero-shot CLIP on the base
classes in a short CPU run (the demo CLIP has learned, so the comparison means something)."""
from __future__ import annotations

import pytest

from tests.conftest import config_path, run_train


def demo_argv(root, out, trainer: str, config: str, *opts: str, flags: tuple = ()) -> list[str]:
    return [
        "--root", str(root), "--seed", "1", "--trainer", trainer,
        "--dataset-config-file", config_path("datasets", "demo_shapes.yaml"),
        "--config-file", config_path("trainers", *config.split("/")),
        "--output-dir", str(out), *flags, "DATASET.SUBSAMPLE_CLASSES", "base", *opts,
    ]


@pytest.fixture(scope="module")
def zero_shot_base(demo_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("zs")
    return run_train(demo_argv(demo_root, out, "ZeroshotCLIP", "CoOp/demo.yaml", flags=("--eval-only",)))


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["SkipTuning", "FinetuneCLIP"])
def test_fine_tuning_beats_zero_shot_on_base_classes(trainer, demo_root, zero_shot_base, tmp_path):
    argv = demo_argv(demo_root, tmp_path, trainer, f"{trainer}/demo.yaml", "DATASET.NUM_SHOTS", "16")
    record = run_train(argv)
    assert record["num_classes"] == zero_shot_base["num_classes"] == 24
    # Measured (seed 1): zero-shot 62.1%, Skip Tuning 76.2%, FT-CLIP 77.3% on 480 base test images.
    assert record["accuracy"] >= zero_shot_base["accuracy"] + 8.0, (zero_shot_base["accuracy"], record["accuracy"])
    if trainer == "SkipTuning":
        # Cheaper than fine-tuning everything: only the blocks after START_LAYER and the heads train.
        assert record["trainable_params"] < record["total_params"]
        assert record["train_time_kind"]


@pytest.mark.slow
def test_cocoop_beats_zero_shot_on_base_classes(demo_root, zero_shot_base, tmp_path):
    argv = demo_argv(demo_root, tmp_path, "CoCoOp", "CoCoOp/demo.yaml", "DATASET.NUM_SHOTS", "16")
    record = run_train(argv)
    assert record["num_classes"] == zero_shot_base["num_classes"] == 24
    # Measured (seed 1): zero-shot 62.1%, CoCoOp 66.7% on 480 base test images (seed 2: 66.9%).
    assert record["accuracy"] >= zero_shot_base["accuracy"] + 3.0, (zero_shot_base["accuracy"], record["accuracy"])


def test_kgcoop_beats_zero_shot_on_base_classes(demo_root, zero_shot_base, tmp_path):
    # KgCoOp/demo.yaml: W 8.0 as the original's scripts; the term holds the prompts near zero-shot's.
    record = run_train(demo_argv(demo_root, tmp_path, "KgCoOp", "KgCoOp/demo.yaml", "DATASET.NUM_SHOTS", "16"))
    assert record["num_classes"] == zero_shot_base["num_classes"] == 24
    # Measured (seed 1): zero-shot 62.1%, KgCoOp 64.6% on 480 base test images (64.2-65.8% over LR
    # 0.02-0.2, 5-20 epochs, W 4-8); CoOp (W 0) reaches 67.1%. 1 point (5 images) leaves room for platform noise.
    assert record["accuracy"] >= zero_shot_base["accuracy"] + 1.0, (zero_shot_base["accuracy"], record["accuracy"])
