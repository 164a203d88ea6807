"""Reading checkpoints in every supported format, building and loading models."""
from __future__ import annotations

import argparse
import logging

import open_clip
import pytest
import torch
from PIL import Image

import clip
import clip.loading
from tests.clip.conftest import TEXTS, images_for
from tests.factories.clip_checkpoint import random_openai_state_dict, write_random_clip
from tests.tolerances import FP32_UNIT_ROUNDOFF


def _features(model, images):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(clip.tokenize(TEXTS))


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_all_formats_give_identical_features(tmp_path, kind):
    reference = random_openai_state_dict(kind, seed=3)
    paths = {fmt: write_random_clip(tmp_path / f"{fmt}.pt", kind, fmt=fmt, seed=3) for fmt in ("state_dict", "jit", "open_clip")}
    # A checkpoint written from open_clip's own model object (its real key set, DDP-style prefix).
    oc_model = open_clip.model.build_model_from_openai_state_dict(dict(reference), cast_dtype=None)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in oc_model.state_dict().items()}}, tmp_path / "oc.pt")
    paths["open_clip_model"] = tmp_path / "oc.pt"

    expected_keys = set(reference) - {"input_resolution", "context_length", "vocab_size"}
    features = {}
    for fmt, path in paths.items():
        state = clip.load_state_dict(str(path))
        assert set(state) == expected_keys, fmt
        for key in expected_keys:
            assert torch.equal(state[key].float(), reference[key].float()), (fmt, key)
        model = clip.build_model(state).float()
        features[fmt] = _features(model, images_for(model))
    first = features["state_dict"]
    for fmt, (img, txt) in features.items():
        assert torch.equal(img, first[0]) and torch.equal(txt, first[1]), fmt


def test_load_returns_eval_fp32_model_and_preprocess(tiny_vit_file):
    model, preprocess = clip.load(str(tiny_vit_file), device="cpu")
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.dtype == torch.float32
    image = Image.fromarray((torch.rand(40, 60, 3) * 255).byte().numpy())
    x = preprocess(image)
    assert x.shape == (3, 32, 32)
    # Normalisation with OpenAI's constants: undoing it lands in [0, 1].
    mean = torch.tensor(clip.OPENAI_DATASET_MEAN)[:, None, None]
    std = torch.tensor(clip.OPENAI_DATASET_STD)[:, None, None]
    raw = x * std + mean
    # Normalising and undoing it round 5 times (/255, -mean, /std, *std, +mean), each <= u relative to
    # values of at most 1 + mean (the std divides out again).
    slack = 5 * FP32_UNIT_ROUNDOFF * (1 + float(mean.max()))
    assert raw.min() >= -slack and raw.max() <= 1 + slack
    gray = Image.fromarray((torch.rand(32, 32) * 255).byte().numpy(), mode="L")
    assert preprocess(gray).shape == (3, 32, 32)  # converted to RGB


def test_load_jit_flag_warns_and_still_loads(tiny_vit_file):
    with pytest.warns(UserWarning, match="jit=True"):
        model, _ = clip.load(str(tiny_vit_file), jit=True)
    assert isinstance(model, clip.CLIP)


def test_unknown_name_lists_available_models():
    with pytest.raises(RuntimeError, match="Available models") as info:
        clip.load_state_dict("ViT-X/99")
    assert "ViT-B/16" in str(info.value)


def test_non_clip_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(RuntimeError, match="not an OpenAI-format CLIP state dict"):
        clip.load_state_dict(str(path))
    bad = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], bad)
    with pytest.raises(RuntimeError, match="expected a state dict"):
        clip.load_state_dict(str(bad))


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(RuntimeError, match="weights_only=True"):
        clip.load_state_dict(str(path))


def test_build_model_is_strict_and_leaves_input_untouched(vit_state_dict):
    state = dict(vit_state_dict)
    clip.build_model(state)
    assert "input_resolution" in state  # not mutated
    del state["ln_final.bias"]
    with pytest.raises(RuntimeError, match="ln_final.bias"):
        clip.build_model(state)
    state = dict(vit_state_dict, extra_param=torch.zeros(1))
    with pytest.raises(RuntimeError, match="extra_param"):
        clip.build_model(state)


def test_name_resolves_to_cached_file_without_network(tmp_path, monkeypatch):
    path = write_random_clip(tmp_path / "cache" / "ViT-B-32.pt", "vit", seed=5)
    sha = clip.loading.sha256_of(str(path))
    monkeypatch.setitem(clip.loading.MODEL_FILES, "ViT-B/32", ("ViT-B-32.pt", sha))
    monkeypatch.setenv("CLIP_DOWNLOAD_BASE_URL", "http://127.0.0.1:9/unreachable")  # would fail if used
    model, _ = clip.load("ViT-B/32", download_root=str(tmp_path / "cache"))
    reference = clip.build_model(random_openai_state_dict("vit", seed=5)).float()
    img = images_for(model)
    with torch.no_grad():
        assert torch.equal(model.encode_image(img), reference.encode_image(img))
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path / "cache"))
    assert clip.load_state_dict("ViT-B/32").keys() == reference.state_dict().keys()


def test_local_file_named_like_release_warns_on_digest_mismatch(tmp_path, caplog):
    path = write_random_clip(tmp_path / "RN50.pt", "rn")
    with caplog.at_level(logging.WARNING, logger="clip.loading"):
        clip.load_state_dict(str(path))
    assert "named like a released CLIP checkpoint" in caplog.text


@pytest.fixture(scope="module")
def tiny_vit_file(tmp_path_factory):
    return write_random_clip(tmp_path_factory.mktemp("ckpt") / "tiny.pt", "vit", seed=4)


@pytest.fixture
def local_models(monkeypatch):
    """An empty local-model table for one test (registrations do not leak into others)."""
    monkeypatch.setattr(clip.loading, "LOCAL_MODELS", {})
    monkeypatch.setattr(clip.loading, "_LOCAL_MODEL_HINTS", {})
    return clip.loading.LOCAL_MODELS


def test_registered_name_loads_its_file(tmp_path, local_models):
    path = write_random_clip(tmp_path / "weights" / "mine.pt", "vit", seed=11)
    with pytest.raises(clip.CheckpointError, match="'mine' not found"):
        clip.check_model_name("mine")
    clip.register_local_model("mine", str(path))
    clip.register_local_model("mine", str(path))  # again, same file: fine
    clip.check_model_name("mine")
    assert clip.resolve_checkpoint("mine") == str(path)
    state = clip.load_state_dict("mine")
    reference = random_openai_state_dict("vit", seed=11)
    assert all(torch.equal(state[k], reference[k]) for k in state)
    with pytest.raises(clip.CheckpointError, match=r"\['mine'\]"):  # listed among the known names
        clip.check_model_name("mien")


def test_register_refuses_released_names_and_a_second_file(tmp_path, local_models):
    with pytest.raises(ValueError, match="released CLIP"):
        clip.register_local_model("ViT-B/16", str(tmp_path / "x.pt"))
    clip.register_local_model("mine", str(tmp_path / "a.pt"))
    with pytest.raises(ValueError, match="already registered"):
        clip.register_local_model("mine", str(tmp_path / "b.pt"))
    assert local_models == {"mine": str(tmp_path / "a.pt")}


def test_missing_registered_file_names_the_file_and_the_hint(tmp_path, local_models):
    clip.register_local_model("gone", str(tmp_path / "gone.pt"), missing_hint="Re-create it with `make gone`.")
    for check in (clip.check_model_name, clip.load_state_dict):
        with pytest.raises(clip.CheckpointError, match=r"gone\.pt, which is missing\. Re-create it with `make gone`"):
            check("gone")
