"""The shipped demo CLIP: format, `demo` name, input size from the checkpoint, and that it learned.

Accuracy tests run train.py end to end on the demo data: zero-shot CLIP must reach 3x chance on
DemoShapes, and a short 16-shot CoOp run on the base classes must beat zero-shot on them.
"""
from __future__ import annotations

import os

import pytest
import torch
import yaml

import clip
from demo import DEMO_CLIP_PATH
from tests.conftest import config_path, run_train
from tests.tolerances import transformer_atol

DEMO_CKPT = DEMO_CLIP_PATH


def test_checkpoint_is_small_and_in_openai_format():
    assert os.path.getsize(DEMO_CKPT) <= 10 * 2**20
    state = torch.load(DEMO_CKPT, map_location="cpu", weights_only=True)
    assert state["token_embedding.weight"].shape == (49408, 64)
    assert state["positional_embedding"].shape[0] == 77
    assert {"visual.conv1.weight", "visual.proj", "text_projection", "logit_scale", "ln_final.weight"} <= set(state)
    model, preprocess = clip.load("demo")
    assert model.visual.input_resolution == 32 and model.context_length == 77 and model.vocab_size == 49408
    # The real tokenizer's ids reach the model: the same words give the same features, other words others.
    with torch.no_grad():
        feats = model.encode_text(clip.tokenize(["a photo of a red circle.", "a photo of a red circle.", "a photo of a blue star."]))
    # Rows of one batch may be summed in other orders (kernel tiles): equal up to the fp32 bound.
    text = model.transformer
    atol = transformer_atol(feats.abs().max(), text.width, model.context_length, text.layers)
    assert (feats[0] - feats[1]).abs().max() <= atol and (feats[0] - feats[2]).abs().max() > 10 * atol


def test_missing_demo_checkpoint_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(clip.loading.LOCAL_MODELS, "demo", str(tmp_path / "gone.pt"))
    with pytest.raises(RuntimeError, match="demo.pretrain_clip"):
        clip.load_state_dict("demo")


def test_preprocessing_comes_from_the_backbone_unless_the_config_sets_it():
    import train

    # No trainer config: the engine defaults (224 px, ImageNet's mean/std, bilinear) give way to the
    # demo CLIP's own preprocessing, without a warning.
    resolved = train.resolve_cfg(train.build_parser().parse_args(
        ["--trainer", "ZeroshotCLIP", "--eval-only", "MODEL.BACKBONE.NAME", "demo"]))
    cfg = resolved.cfg
    assert tuple(cfg.INPUT.SIZE) == (32, 32) and cfg.INPUT.INTERPOLATION == "bicubic"
    assert tuple(cfg.INPUT.PIXEL_MEAN) == clip.OPENAI_DATASET_MEAN and not resolved.warnings
    assert list(cfg.INPUT.TRANSFORMS) == ["normalize"]  # the mean and std act through it
    resolved = train.resolve_cfg(train.build_parser().parse_args(
        ["--trainer", "ZeroshotCLIP", "--eval-only", "--backbone", "demo", "--transforms", "random_flip"]))
    assert list(resolved.cfg.INPUT.TRANSFORMS) == ["random_flip"]
    assert any("has no 'normalize'" in w for w in resolved.warnings)
    # A config written for ViT-B/16 sets 224 px: the model fixes the size, a warning names both.
    resolved = train.resolve_cfg(train.build_parser().parse_args(
        ["--trainer", "ZeroshotCLIP", "--eval-only", "--config-file", config_path("trainers", "CoOp", "vit_b16.yaml"),
         "MODEL.BACKBONE.NAME", "demo", "INPUT.PIXEL_MEAN", "[0.5, 0.5, 0.5]"]))
    assert tuple(resolved.cfg.INPUT.SIZE) == (32, 32)
    assert any("INPUT.SIZE (224, 224)" in w and "(32, 32)" in w for w in resolved.warnings)
    # A mean set on purpose is kept, with a warning naming both values.
    assert list(resolved.cfg.INPUT.PIXEL_MEAN) == [0.5, 0.5, 0.5]
    assert any("INPUT.PIXEL_MEAN [0.5, 0.5, 0.5]" in w and "0.48145466" in w for w in resolved.warnings)


def zeroshot_argv(root, out, dataset: str, *opts: str, config: str = "demo.yaml") -> list[str]:
    return [
        "--root", str(root), "--trainer", "ZeroshotCLIP", "--eval-only",
        "--dataset-config-file", config_path("datasets", f"{dataset}.yaml"),
        "--config-file", config_path("trainers", "CoOp", config),
        "--output-dir", str(out), *opts,
    ]


@pytest.mark.slow
def test_zero_shot_is_well_above_chance_with_a_standard_coop_config(demo_root, tmp_path):
    # vit_b16.yaml says INPUT.SIZE (224, 224): the demo CLIP's 32 px is taken from the checkpoint.
    record = run_train(zeroshot_argv(
        demo_root, tmp_path / "zs", "demo_shapes",
        "MODEL.BACKBONE.NAME", "demo", "TRAINER.ZSCLIP.PREC", "fp32", "DATALOADER.NUM_WORKERS", "0",
        config="vit_b16.yaml",
    ))
    assert record["num_classes"] == 48 and record["num_test"] == 960
    chance = 100.0 / 48
    assert record["accuracy"] >= 3 * chance, record["accuracy"]
    saved = yaml.safe_load((tmp_path / "zs" / "config.yaml").read_text())
    assert list(saved["INPUT"]["SIZE"]) == [32, 32]  # the config written with the run says what was used
    # No trainer config at all: the backbone's own preprocessing gives the same accuracy (before
    # backbones carried it, ImageNet's mean/std and bilinear resizing cost 18 points here).
    bare = run_train([
        "--root", str(demo_root), "--trainer", "ZeroshotCLIP", "--eval-only", "--output-dir", str(tmp_path / "bare"),
        "--dataset-config-file", config_path("datasets", "demo_shapes.yaml"),
        "MODEL.BACKBONE.NAME", "demo", "TRAINER.ZSCLIP.PREC", "fp32", "DATALOADER.NUM_WORKERS", "0",
    ])
    # Batch sizes differ (32 vs 100), which may flip a near-tie: allow one image of the 960.
    assert abs(bare["accuracy"] - record["accuracy"]) <= 100.0 / 960, (bare["accuracy"], record["accuracy"])


@pytest.mark.slow
def test_coop_16_shots_beats_zero_shot_on_base_classes(demo_root, tmp_path):
    base = ("DATASET.SUBSAMPLE_CLASSES", "base")
    zs = run_train(zeroshot_argv(demo_root, tmp_path / "zs", "demo_shapes", *base))
    coop = run_train([
        "--root", str(demo_root), "--seed", "1", "--trainer", "CoOp",
        "--dataset-config-file", config_path("datasets", "demo_shapes.yaml"),
        "--config-file", config_path("trainers", "CoOp", "demo.yaml"),
        "--output-dir", str(tmp_path / "coop"),
        "DATASET.NUM_SHOTS", "16", *base,
    ])
    assert zs["num_classes"] == coop["num_classes"] == 24
    # Measured: 62.1% zero-shot, 67.5% CoOp (480 test images); 3 points leave room for platform noise.
    assert coop["accuracy"] >= zs["accuracy"] + 3.0, (zs["accuracy"], coop["accuracy"])


def test_runs_without_root_use_the_default_demo_folder(tmp_path, monkeypatch):
    """No --root: the demo world is generated into $CLIP_ADAPT_DEMO_DATA on first use, and the
    predictions name images relative to that folder."""
    import numpy as np

    data = tmp_path / "demo_data"
    monkeypatch.setenv("CLIP_ADAPT_DEMO_DATA", str(data))
    out = tmp_path / "zs"
    record = run_train([
        "--trainer", "ZeroshotCLIP", "--eval-only",
        "--dataset-config-file", config_path("datasets", "demo_symbols.yaml"),
        "--config-file", config_path("trainers", "CoOp", "demo.yaml"),
        "--output-dir", str(out), "TEST.SAVE_PREDICTIONS", "True",
    ])
    assert record["num_classes"] == 32 and record["accuracy"] >= 3 * 100.0 / 32
    impaths = np.load(out / "predictions.npz")["impaths"]
    assert len(impaths) == record["num_test"]
    assert all(not p.startswith("/") and (data / p).is_file() for p in impaths)
