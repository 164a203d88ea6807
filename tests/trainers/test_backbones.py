"""timm ViT backbones from local weight files (trainers/backbones.py)."""
from __future__ import annotations

import pathlib

import pytest
import timm
import torch
from timm.data import resolve_data_config

import clip
from engine.errors import ConfigValueError, MissingFileError, UserError
from tests.factories.timm_vit import write_jax_npz
from trainers.backbones import BackboneWeightsError, build_timm_vit, timm_preprocess_cfg

NAME = "vit_tiny_patch16_224"  # 5.7 M parameters: small enough for CPU tests, a real timm ViT
HEADS = 3


def _original(num_classes: int = 0, name: str = NAME) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes).eval()
    with torch.no_grad():  # timm zero-inits biases and sets LayerNorms to 1: make every tensor matter
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def original():
    return _original()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def _save(model, path: pathlib.Path, fmt: str) -> pathlib.Path:
    state = model.state_dict()
    if fmt == "pth":
        torch.save(state, path)
    elif fmt == "training_checkpoint":  # as timm's train.py saves under DDP (no args entry here)
        torch.save({"epoch": 3, "arch": NAME, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "npz":
        write_jax_npz(state, HEADS, path)
    return path


def _forward(model, images):
    with torch.no_grad():
        return model(images)


@pytest.mark.parametrize("fmt, suffix", [("pth", ".pth"), ("training_checkpoint", ".pth.tar"),
                                         ("safetensors", ".safetensors"), ("npz", ".npz")])
def test_weights_round_trip_exactly(tmp_path, original, images, fmt, suffix):
    path = _save(original, tmp_path / f"weights{suffix}", fmt)
    torch.manual_seed(123)  # the model is first built with other random weights
    model = build_timm_vit(NAME, str(path))
    assert not model.training
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    features = _forward(model, images)
    assert features.shape == (2, original.num_features)
    assert torch.equal(features, _forward(original, images))


def test_head_is_loaded_when_it_fits_and_dropped_when_not(tmp_path, images):
    classifier = _original(num_classes=10)
    path = _save(classifier, tmp_path / "cls.pth", "pth")
    logits = _forward(build_timm_vit(NAME, str(path), num_classes=10), images)
    assert torch.equal(logits, _forward(classifier, images))
    # num_classes=0: the file's head is dropped, the features are the classifier's pre-logits.
    with torch.no_grad():
        expected = classifier.forward_head(classifier.forward_features(images), pre_logits=True)
    assert torch.equal(_forward(build_timm_vit(NAME, str(path)), images), expected)
    # Another number of classes: a fresh head on the loaded trunk.
    model = build_timm_vit(NAME, str(path), num_classes=5)
    assert model.head.out_features == 5
    assert torch.equal(model.blocks[0].attn.qkv.weight, classifier.blocks[0].attn.qkv.weight)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere" / "vit.pth"
    with pytest.raises(MissingFileError, match=f"backbone weights file not found: {path}.*{NAME}"):
        build_timm_vit(NAME, str(path))


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = _save(_original(name="vit_small_patch16_224"), tmp_path / "small.pth", "pth")
    with pytest.raises(BackboneWeightsError, match=f"{path} do not fit timm model '{NAME}'.*of another shape"):
        build_timm_vit(NAME, str(path))
    npz = _save(_original(name="vit_small_patch16_224"), tmp_path / "small.npz", "npz")
    with pytest.raises(BackboneWeightsError, match=f"{npz} do not fit"):
        build_timm_vit(NAME, str(npz))


def test_missing_and_extra_tensors_are_named(tmp_path, original):
    state = dict(original.state_dict())
    del state["blocks.11.norm2.bias"]
    state["adapter.weight"] = torch.zeros(2)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(BackboneWeightsError, match=r"1 missing \(e.g. blocks.11.norm2.bias\); 1 unexpected \(e.g. adapter.weight\)"):
        build_timm_vit(NAME, str(path))
    # An npz with a 13th block: timm's npz reader alone would load the first 12 and ignore it.
    extra = {f"blocks.12.{k.split('.', 2)[2]}": v for k, v in original.state_dict().items() if k.startswith("blocks.0.")}
    npz = write_jax_npz({**original.state_dict(), **extra}, HEADS, tmp_path / "deeper.npz")
    with pytest.raises(BackboneWeightsError, match="13 transformer blocks vs 12"):
        build_timm_vit(NAME, str(npz))


def test_unreadable_and_unsafe_files_are_refused(tmp_path, original):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match=f"could not read backbone weights {garbage}"):
        build_timm_vit(NAME, str(garbage))
    unsafe = tmp_path / "unsafe.pth"  # a pickled object weights_only=True does not allow
    torch.save({"state_dict": original.state_dict(), "root": pathlib.PurePosixPath("/data")}, unsafe)
    with pytest.raises(BackboneWeightsError, match="weights_only"):
        build_timm_vit(NAME, str(unsafe))
    not_tensors = tmp_path / "list.pth"
    torch.save({"a": [1, 2]}, not_tensors)
    with pytest.raises(BackboneWeightsError, match="no state dict of tensors"):
        build_timm_vit(NAME, str(not_tensors))


def test_names_that_mislead_are_refused(tmp_path, original):
    path = _save(original, tmp_path / "w.pth", "pth")
    # The old in21k name silently means the AugReg weights in timm >= 0.9 (shared/specs/dyt.md §1).
    with pytest.raises(ConfigValueError, match=r"deprecated.*augreg_in21k.*vit_base_patch16_224\.orig_in21k"):
        build_timm_vit("vit_base_patch16_224_in21k", str(path))
    with pytest.raises(ConfigValueError, match="deprecated"):
        timm_preprocess_cfg("vit_base_patch16_224_in21k")
    with pytest.raises(ConfigValueError, match=r"unknown timm model 'vit_tiny_patch16_22'\. Did you mean"):
        build_timm_vit("vit_tiny_patch16_22", str(path))
    with pytest.raises(ConfigValueError, match=r"Invalid pretrained tag.*orig_in21k"):
        timm_preprocess_cfg("vit_base_patch16_224.orig_in22k")
    with pytest.raises(ConfigValueError, match="not a Vision Transformer"):
        build_timm_vit("resnet18", str(path))
    assert issubclass(BackboneWeightsError, UserError)


@pytest.mark.parametrize("name", ["vit_base_patch16_224.orig_in21k", "vit_tiny_patch16_384.augreg_in21k_ft_in1k",
                                  "vit_tiny_patch16_224"])
def test_preprocess_cfg_is_timms_for_those_weights(name, monkeypatch):
    with torch.device("meta"):  # timm's own resolution from a built model, at no memory cost
        expected = resolve_data_config({}, model=timm.create_model(name, pretrained=False))
    monkeypatch.setattr(timm, "create_model", None)  # the config needs no model
    cfg = timm_preprocess_cfg(name)
    assert set(cfg) == set(clip.preprocess_cfg("ViT-B/16"))  # one vocabulary for every backbone
    assert cfg == {k: expected[k] for k in cfg}
