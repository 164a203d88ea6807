"""Architecture inference from state-dict shapes, for every released geometry (spec §2.5 table)."""
from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

import clip
from tests.factories.clip_checkpoint import meta_state_dict, openai_state_dict_shapes

# name: (kind, D, R, vision layers, W_v, P, W_t, text heads, text layers, vision heads)
TABLE = {
    "RN50": ("rn", 1024, 224, (3, 4, 6, 3), 64, None, 512, 8, 12, 32),
    "RN101": ("rn", 512, 224, (3, 4, 23, 3), 64, None, 512, 8, 12, 32),
    "RN50x4": ("rn", 640, 288, (4, 6, 10, 6), 80, None, 640, 10, 12, 40),
    "RN50x16": ("rn", 768, 384, (6, 8, 18, 8), 96, None, 768, 12, 12, 48),
    "RN50x64": ("rn", 1024, 448, (3, 15, 36, 10), 128, None, 1024, 16, 12, 64),
    "ViT-B/32": ("vit", 512, 224, 12, 768, 32, 512, 8, 12, 12),
    "ViT-B/16": ("vit", 512, 224, 12, 768, 16, 512, 8, 12, 12),
    "ViT-L/14": ("vit", 768, 224, 24, 1024, 14, 768, 12, 12, 16),
    "ViT-L/14@336px": ("vit", 768, 336, 24, 1024, 14, 768, 12, 12, 16),
}


def _geometry(row):
    kind, d, r, layers, wv, p, wt, _, tl, _ = row
    geometry = dict(image_resolution=r, vision_width=wv, vision_layers=layers, embed_dim=d, text_width=wt, text_layers=tl)
    if p is not None:
        geometry["vision_patch_size"] = p
    return kind, geometry


def test_table_covers_every_available_model():
    assert list(TABLE) == clip.available_models()


@pytest.mark.parametrize("name", list(TABLE))
def test_infer_config_for_released_geometry(name):
    row = TABLE[name]
    kind, geometry = _geometry(row)
    _, d, r, layers, wv, p, wt, th, tl, vh = row
    config = clip.infer_config(meta_state_dict(kind, **geometry))
    assert config.embed_dim == d
    assert config.image_resolution == r
    assert config.vision_layers == layers
    assert config.vision_width == wv
    assert config.vision_patch_size == p
    assert config.transformer_width == wt
    assert config.transformer_heads == th
    assert config.transformer_layers == tl
    assert config.vision_heads == vh
    assert config.context_length == 77 and config.vocab_size == 49408


@pytest.mark.parametrize("name", list(TABLE))
def test_model_has_openai_keys_and_shapes(name):
    # Build the full-size model on the meta device (no memory) and compare its state dict
    # with the independently written OpenAI layout.
    kind, geometry = _geometry(TABLE[name])
    expected = openai_state_dict_shapes(kind, **geometry)
    with torch.device("meta"):
        model = clip.CLIP(**asdict(clip.infer_config(meta_state_dict(kind, **geometry))))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == dict(expected)
    assert model.visual.input_resolution == TABLE[name][2]
    if kind == "vit":
        assert len(model.visual.transformer.resblocks) == TABLE[name][3]
        assert model.visual.transformer.resblocks[0].attn.heads == TABLE[name][9]
    else:
        assert model.visual.attnpool.num_heads == TABLE[name][9]
    assert model.transformer.resblocks[0].attn.heads == TABLE[name][7]


def test_resnet_requires_square_attnpool_grid():
    sd = meta_state_dict("rn")
    sd["visual.attnpool.positional_embedding"] = torch.empty(6, 512, device="meta")
    with pytest.raises(ValueError, match="square grid"):
        clip.infer_config(sd)


def test_missing_key_is_named():
    sd = meta_state_dict("vit")
    del sd["ln_final.weight"]
    with pytest.raises(KeyError, match="ln_final.weight"):
        clip.infer_config(sd)
