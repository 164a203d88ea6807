"""A frozen tower under autocast (fast mode) casts its fp32 matrix weights once, not at every use
(clip.model.autocast_weight): the same bits as autocast's own cast, kept until the weight changes."""
from __future__ import annotations

import pytest
import torch

import clip
import clip.model


def forward_both(model, images, tokens):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model.encode_image(images), model.encode_text(tokens)


@pytest.fixture
def frozen(vit_state_dict):
    return clip.build_model(vit_state_dict).float().requires_grad_(False).eval()


def test_cached_casts_give_autocasts_bits_and_follow_a_changed_weight(frozen, monkeypatch):
    images = torch.randn(2, 3, frozen.visual.input_resolution, frozen.visual.input_resolution)
    tokens = clip.tokenize(["a photo of a dog.", "a photo of a red-tailed hawk."])
    cached = [forward_both(frozen, images, tokens) for _ in range(2)]  # the second reuses the copies
    weight = frozen.visual.transformer.resblocks[0].mlp.c_fc.weight
    assert weight._autocast_copy[1].dtype == torch.bfloat16
    with monkeypatch.context() as patch:
        patch.setattr(clip.model, "autocast_weight", lambda w: w)  # autocast casts at every use
        reference = forward_both(frozen, images, tokens)
    for outputs in cached:
        for got, expected in zip(outputs, reference):
            assert torch.equal(got, expected)

    with torch.no_grad():  # a loaded checkpoint or an update changes the weight in place
        weight.mul_(1.5)
        frozen.transformer.resblocks[0].attn.in_proj_weight.mul_(1.5)
    changed = forward_both(frozen, images, tokens)
    with monkeypatch.context() as patch:
        patch.setattr(clip.model, "autocast_weight", lambda w: w)
        changed_reference = forward_both(frozen, images, tokens)
    for got, expected, before in zip(changed, changed_reference, reference):
        assert torch.equal(got, expected) and not torch.equal(got, before)


def test_trained_weights_and_fp32_runs_use_the_weight_itself(frozen):
    weight = frozen.visual.transformer.resblocks[0].mlp.c_fc.weight
    assert clip.model.autocast_weight(weight) is weight  # no autocast: fp32 arithmetic
    weight.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert clip.model.autocast_weight(weight) is weight  # autocast caches these itself, per step
