"""Fixtures shared across the suite: a tiny random-weight CLIP in OpenAI's format, a tiny
Caltech101-format dataset, and a helper that runs `train.py` in-process."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

# Two cores: keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory) -> Path:
    """A random ViT CLIP (32 px, width 64, 2 layers) saved as an OpenAI-style state dict."""
    from tests.factories.clip_checkpoint import write_random_clip

    return write_random_clip(tmp_path_factory.mktemp("clip") / "tiny_vit.pt", "vit")


@pytest.fixture
def caltech_root(tmp_path) -> Path:
    """A 6-class Caltech101 tree in CoOp's layout, with its split file."""
    from tests.factories.datasets import make_caltech101_tree

    return make_caltech101_tree(tmp_path / "data")


def config_path(*parts: str) -> str:
    return str(REPO_ROOT.joinpath("configs", *parts))


def run_train(argv: list[str]):
    """Run train.py's main() in-process with the given command-line arguments."""
    import train

    return train.main(train.build_parser().parse_args(argv))
