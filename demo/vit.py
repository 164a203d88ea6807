"""The demo CLIP's image tower as a timm Vision Transformer (for DyT and other timm-ViT methods).

``import demo`` registers the timm architecture ``vit_demo_clip_patch8_32`` with the weights tag
``demo`` (its preprocessing: 32 px, CLIP's mean and std, bicubic). No weights file of its own:
``MODEL.BACKBONE.NAME demo`` names the demo CLIP file, and timm's checkpoint filter converts an
OpenAI-format CLIP's ``visual.*`` tensors to this model at load time (the text tower is skipped,
CLIP's projection becomes a head that is dropped when the classes differ).
"""
from __future__ import annotations

from functools import partial

from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import LayerNorm
from timm.models import VisionTransformer, build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import checkpoint_filter_fn

__all__ = ["DEMO_VIT_NAME"]

DEMO_VIT_NAME = "vit_demo_clip_patch8_32.demo"

# timm's register_model reads the module's `default_cfgs`: the preprocessing travels with the tag.
default_cfgs = generate_default_cfgs({
    DEMO_VIT_NAME: dict(input_size=(3, 32, 32), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                        interpolation="bicubic", crop_pct=1.0, num_classes=0),
})


@register_model
def vit_demo_clip_patch8_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The demo CLIP's image tower (demo/pretrain_clip.py): 32 px, patch 8, width 128, 3 blocks,
    2 heads, QuickGELU, a LayerNorm before the blocks (CLIP's ln_pre), no patch-embedding bias."""
    args = dict(img_size=32, patch_size=8, embed_dim=128, depth=3, num_heads=2, pre_norm=True,
                norm_layer=partial(LayerNorm, eps=1e-5), act_layer="quick_gelu")
    return build_model_with_cfg(VisionTransformer, "vit_demo_clip_patch8_32", pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn, **dict(args, **kwargs))
