"""Our Dassl-style engine: config, registries, data, trainer lifecycle, optimisation, evaluation.

Public names follow Dassl.pytorch so that trainers written for it port with few edits.
"""
from engine.config import get_cfg_default
from engine.trainer import (
    TRAINER_REGISTRY,
    SimpleTrainer,
    TrainerBase,
    TrainerX,
    build_trainer,
)

__all__ = [
    "get_cfg_default",
    "TRAINER_REGISTRY",
    "TrainerBase",
    "SimpleTrainer",
    "TrainerX",
    "build_trainer",
]
