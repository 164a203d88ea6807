"""Our Dassl-style engine: config, registries, data, trainer lifecycle, optimisation, evaluation.

Public names follow Dassl.pytorch so that trainers written for it port with few edits. They are
imported on first use, so that a light submodule (`engine.errors`, `engine.config`) does not pull
in torch, the data layer and the trainer stack.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "get_cfg_default": "engine.config",
    "TRAINER_REGISTRY": "engine.trainer",
    "TrainerBase": "engine.trainer",
    "SimpleTrainer": "engine.trainer",
    "TrainerX": "engine.trainer",
    "build_trainer": "engine.trainer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
