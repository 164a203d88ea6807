"""File names of a run's output folder (Dassl's layout), in one place for the engine, the
trainers and the sweep runner. Pure Python: the runner reads them without importing torch.

    <output>/<model name>/model.pth.tar-<E>    after E finished epochs
    <output>/<model name>/model-best.pth.tar   best_val mode
    <output>/<model name>/checkpoint           text: the newest file's name
    <output>/resume.pth.tar                    the rolling resume point (while training)
    <output>/preflight.json                    the first training steps measured (engine/preflight.py)
"""
from __future__ import annotations

import os

__all__ = ["CHECKPOINT_PREFIX", "BEST_CHECKPOINT_NAME", "POINTER_NAME", "RESUME_POINT_NAME",
           "PREFLIGHT_NAME", "checkpoint_name", "parse_checkpoint_epoch"]

CHECKPOINT_PREFIX = "model.pth.tar-"
BEST_CHECKPOINT_NAME = "model-best.pth.tar"
POINTER_NAME = "checkpoint"
RESUME_POINT_NAME = "resume.pth.tar"
PREFLIGHT_NAME = "preflight.json"


def checkpoint_name(epoch: int) -> str:
    """Dassl's file name of the checkpoint after `epoch` finished epochs: ``model.pth.tar-<epoch>``."""
    return f"{CHECKPOINT_PREFIX}{int(epoch)}"


def parse_checkpoint_epoch(fname: str) -> int | None:
    """The epoch in a ``model.pth.tar-<epoch>`` file name; None for any other name."""
    base = os.path.basename(fname)
    if base.startswith(CHECKPOINT_PREFIX) and base[len(CHECKPOINT_PREFIX):].isdigit():
        return int(base[len(CHECKPOINT_PREFIX):])
    return None
