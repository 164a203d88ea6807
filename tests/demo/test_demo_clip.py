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
from trainers.common import load_clip_to_cpu, resolve_input_size

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


def _cfg(**pairs):
    from engine.config import get_cfg_default

    cfg = get_cfg_default()
    for key, value in pairs.items():
        node = cfg
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def test_input_size_comes_from_the_checkpoint_unless_set():
    cfg = _cfg(MODEL__BACKBONE__NAME="demo")
    resolve_input_size(cfg)
    assert tuple(cfg.INPUT.SIZE) == (32, 32)
    load_clip_to_cpu(cfg)  # consistent now
    # An explicit other size is kept, and loading names the mismatch.
    cfg = _cfg(MODEL__BACKBONE__NAME="demo", INPUT__SIZE=(64, 64))
    resolve_input_size(cfg)
    assert tuple(cfg.INPUT.SIZE) == (64, 64)
    with pytest.raises(ValueError, match=r"INPUT.SIZE \(32, 32\)"):
        load_clip_to_cpu(cfg)
    # Other backbones are never touched (and never loaded here).
    cfg = _cfg(MODEL__BACKBONE__NAME="ViT-B/16")
    resolve_input_size(cfg)
    assert tuple(cfg.INPUT.SIZE) == (224, 224)


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
