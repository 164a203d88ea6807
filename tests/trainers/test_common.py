"""Shared trainer pieces: loading CLIP for a config."""
from __future__ import annotations

import torch

from engine.config import get_cfg_default
from tests.factories.clip_checkpoint import random_openai_state_dict, write_random_clip
from trainers.common import load_clip


def test_load_clip_keeps_an_fp32_checkpoint_in_fp32(tmp_path):
    path = write_random_clip(tmp_path / "fp32.pt", "vit", dtype=torch.float32, seed=12)
    cfg = get_cfg_default()
    cfg.MODEL.BACKBONE.NAME = str(path)
    cfg.INPUT.SIZE = (32, 32)
    reference = random_openai_state_dict("vit", dtype=torch.float32, seed=12)
    exact = load_clip(cfg, "fp32").state_dict()
    mixed = load_clip(cfg, "fp16").state_dict()
    assert all(torch.equal(exact[k], reference[k]) for k in exact)
    assert mixed["visual.proj"].dtype == torch.float16  # fp16 is OpenAI's mixed precision
    assert not torch.equal(mixed["visual.proj"].float(), reference["visual.proj"])
