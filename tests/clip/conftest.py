"""Fixtures for the CLIP package tests: tiny random OpenAI-format state dicts and models."""
from __future__ import annotations

import pytest
import torch

import clip
from tests.factories.clip_checkpoint import random_openai_state_dict


@pytest.fixture(scope="session")
def vit_state_dict():
    return random_openai_state_dict("vit", seed=1)


@pytest.fixture(scope="session")
def rn_state_dict():
    return random_openai_state_dict("rn", seed=2)


@pytest.fixture(scope="session")
def vit_model(vit_state_dict) -> clip.CLIP:
    """fp32 tiny ViT CLIP (shared: tests must not modify it)."""
    return clip.build_model(vit_state_dict).float()


@pytest.fixture(scope="session")
def rn_model(rn_state_dict) -> clip.CLIP:
    return clip.build_model(rn_state_dict).float()


def images_for(model: clip.CLIP, n: int = 3, seed: int = 0) -> torch.Tensor:
    res = model.visual.input_resolution
    return torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(seed))


TEXTS = ["a photo of a dog.", "a photo of a cat, a type of pet.", "x", "2000 AM General Hummer SUV"]
