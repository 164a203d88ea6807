"""Fixtures shared across the suite: a tiny random-weight CLIP in OpenAI's format, a tiny
Caltech101-format dataset, a helper that runs `train.py` in-process, the isolation of global state
between tests, and temporary dataset registrations."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

# Two cores: keep torch from oversubscribing them (OMP_NUM_THREADS, when set, decides instead).
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(min(2, os.cpu_count() or 1))

# What every test starts from and is returned to (pytest's own log handlers come and go per phase).
_BASELINE_HANDLERS = list(logging.getLogger().handlers)
_BASELINE_LEVEL = logging.getLogger().level
_BASELINE_THREADS = torch.get_num_threads()
_BASELINE_DTYPE = torch.get_default_dtype()
_BASELINE_CWD = os.getcwd()


@pytest.fixture(autouse=True)
def _isolated_global_state():
    """Each test starts from the same seeds and leaves the process as the suite started it.

    In-process `train.py` runs install root-logger handlers and level (setup_logger) and reseed the
    global generators; without this, a test's logs, random draws or thread count would depend on
    which tests ran before it. Module- and session-scoped fixtures run before this fixture, so their
    handlers are removed after the first test that uses them, not kept for the next module.
    """
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler not in _BASELINE_HANDLERS and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(_BASELINE_LEVEL)
    torch.set_num_threads(_BASELINE_THREADS)
    torch.set_default_dtype(_BASELINE_DTYPE)
    os.chdir(_BASELINE_CWD)


@pytest.fixture
def temp_dataset():
    """Register throw-away dataset classes (``temp_dataset(cls)``) for one test, then remove them."""
    from engine.data import DATASET_REGISTRY

    registered = []

    def register(cls):
        DATASET_REGISTRY.register(cls)
        registered.append(cls.__name__)
        return cls

    yield register
    for name in registered:
        DATASET_REGISTRY._obj_map.pop(name)


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
