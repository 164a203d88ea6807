"""The preprocessing config that travels with a CLIP, in timm's pretrained_cfg keys."""
from __future__ import annotations

import os
from dataclasses import asdict

import pytest
import torch

import clip
from tests.clip.test_geometry import TABLE, _geometry
from tests.factories.clip_checkpoint import meta_state_dict, write_random_clip

KEYS = {"input_size", "mean", "std", "interpolation", "crop_pct"}


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """An empty cache and an unreachable mirror: any download attempt would fail or leave a file."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("CLIP_CACHE_DIR", str(cache))
    monkeypatch.setenv("CLIP_DOWNLOAD_BASE_URL", "http://127.0.0.1:9/unreachable")
    return cache


def test_every_released_model_has_a_resolution():
    assert list(clip.MODEL_RESOLUTIONS) == clip.available_models()


@pytest.mark.parametrize("name", list(TABLE))
def test_released_name_gives_its_resolution_without_download(name, no_network):
    cfg = clip.preprocess_cfg(name)
    resolution = TABLE[name][2]  # the spec's geometry table, written independently of clip/
    assert set(cfg) == KEYS
    assert cfg["input_size"] == (3, resolution, resolution)
    assert cfg["mean"] == clip.OPENAI_DATASET_MEAN and cfg["std"] == clip.OPENAI_DATASET_STD
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 1.0
    assert os.listdir(no_network) == []
    # The full-size model (built on the meta device: no memory) says the same.
    kind, geometry = _geometry(TABLE[name])
    with torch.device("meta"):
        model = clip.CLIP(**asdict(clip.infer_config(meta_state_dict(kind, **geometry))))
    assert model.preprocess_cfg == cfg


@pytest.mark.parametrize("kind, resolution", [("vit", 48), ("rn", 96)])
def test_file_gives_the_resolution_of_its_weights(tmp_path, kind, resolution, no_network):
    path = str(write_random_clip(tmp_path / f"{kind}.pt", kind, image_resolution=resolution, seed=9))
    cfg = clip.preprocess_cfg(path)
    assert cfg["input_size"] == (3, resolution, resolution)
    model, preprocess = clip.load(path)
    assert model.preprocess_cfg == cfg
    # OpenAI's transform for the model produces exactly the configured input size.
    from PIL import Image

    image = Image.fromarray((torch.rand(70, 50, 3) * 255).byte().numpy())
    assert tuple(preprocess(image).shape) == cfg["input_size"]


def test_registered_local_model_name(tmp_path, monkeypatch):
    path = write_random_clip(tmp_path / "mine.pt", "vit", image_resolution=40, vision_patch_size=8, seed=10)
    monkeypatch.setattr(clip.loading, "LOCAL_MODELS", {})
    monkeypatch.setattr(clip.loading, "_LOCAL_MODEL_HINTS", {})
    clip.register_local_model("mine", str(path))
    assert clip.preprocess_cfg("mine")["input_size"] == (3, 40, 40)


def test_each_call_returns_a_fresh_dict():
    cfg = clip.preprocess_cfg("ViT-B/16")
    cfg["input_size"] = (3, 1, 1)
    assert clip.preprocess_cfg("ViT-B/16")["input_size"] == (3, 224, 224)
