"""Zero-shot CLIP (Radford et al., 2021) as the CoOp family evaluates it.

`ZeroshotCLIP` uses one hand-written template per dataset; `ZeroshotCLIP2` averages the normalised
features of seven generic templates (plus the dataset's own template, except on ImageNet).
Nothing is trained or registered: run with `--eval-only` and no `--model-dir`.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from engine import TRAINER_REGISTRY
from engine.config import CfgNode as CN
from engine.errors import ConfigValueError
from trainers.base import ClipMethod, Features, MethodModel
from trainers.common import IMAGENET_TEMPLATES_SELECT, cosine_logits, template_for, text_features_for_templates

logger = logging.getLogger(__name__)


class ZeroshotModel(MethodModel):
    """CLIP with fixed class text features (normalised once, as the original)."""

    frozen_image_features = True

    def __init__(self, clip_model: nn.Module, text_features: torch.Tensor) -> None:
        super().__init__(clip_model)
        self.register_buffer("text_features", text_features, persistent=False)

    def encode_texts(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_features

    def logits(self, features: Features) -> torch.Tensor:
        # The features are normalised already; not normalising again keeps fp16 results bit-identical.
        return cosine_logits(features.image, features.text, self.clip_model.logit_scale, text_normalized=True)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(ClipMethod):
    has_training = False  # train.py refuses a run without --eval-only before building anything
    precision_key = "TRAINER.ZSCLIP.PREC"
    recipe = "CoOp/vit_b16"

    @staticmethod
    def extend_cfg(cfg) -> None:
        cfg.TRAINER.ZSCLIP = CN()
        # Not a key of the original, which always runs CLIP's mixed fp16 weights; fp32 is the
        # practical choice on CPU. The default keeps the original's arithmetic.
        cfg.TRAINER.ZSCLIP.PREC = "fp16"

    def templates(self) -> list[str]:
        return [template_for(self.cfg.DATASET.NAME)]

    def train(self) -> None:
        raise ConfigValueError(f"{type(self).__name__} has nothing to train: run it with --eval-only.")

    def build_method(self, clip_model: nn.Module, classnames: list[str]) -> MethodModel:
        templates = self.templates()
        logger.info("Prompt templates: %s", templates)
        clip_model.to(self.device)
        text_features = text_features_for_templates(clip_model, classnames, templates, self.device,
                                                    self.text_chunk_mb(self.cfg))
        return ZeroshotModel(clip_model, text_features)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Prompt ensembling over IMAGENET_TEMPLATES_SELECT."""

    @staticmethod
    def extend_cfg(cfg) -> None:
        ZeroshotCLIP.extend_cfg(cfg)  # the same TRAINER.ZSCLIP keys

    def templates(self) -> list[str]:
        templates = list(IMAGENET_TEMPLATES_SELECT)
        if self.cfg.DATASET.NAME != "ImageNet":
            templates.append(template_for(self.cfg.DATASET.NAME))
        return templates
