"""Zero-shot CLIP (Radford et al., 2021) as the CoOp family evaluates it.

`ZeroshotCLIP` uses one hand-written template per dataset; `ZeroshotCLIP2` averages the normalised
features of seven generic templates (plus the dataset's own template, except on ImageNet).
Nothing is trained or registered: run with `--eval-only` and no `--model-dir`.
"""
from __future__ import annotations

import logging

import torch
from engine.config import CfgNode as CN

from engine import TRAINER_REGISTRY, TrainerX
from engine.errors import ConfigValueError
from trainers.common import (
    IMAGENET_TEMPLATES_SELECT,
    check_precision,
    cosine_logits,
    load_clip_to_cpu,
    template_for,
    text_features_for_templates,
)

logger = logging.getLogger(__name__)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    has_training = False  # train.py refuses a run without --eval-only before building anything

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

    @classmethod
    def check_cfg(cls, cfg) -> None:
        check_precision(cfg.TRAINER.ZSCLIP.PREC, "TRAINER.ZSCLIP.PREC")

    def build_model(self) -> None:
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        logger.info("Loading CLIP (backbone: %s)", cfg.MODEL.BACKBONE.NAME)
        clip_model = load_clip_to_cpu(cfg)
        if cfg.TRAINER.ZSCLIP.PREC != "fp16":
            clip_model.float()
        clip_model.to(self.device)
        for p in clip_model.parameters():
            p.requires_grad_(False)
        templates = self.templates()
        logger.info("Prompt templates: %s", templates)
        self.text_features = text_features_for_templates(clip_model, classnames, templates, self.device)
        self.clip_model = clip_model
        self.model = clip_model

    @torch.no_grad()
    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        image_features = self.clip_model.encode_image(image.type(self.clip_model.dtype))
        return cosine_logits(image_features, self.text_features, self.clip_model.logit_scale, text_normalized=True)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Prompt ensembling over IMAGENET_TEMPLATES_SELECT."""

    @staticmethod
    def extend_cfg(cfg) -> None:
        pass  # shares TRAINER.ZSCLIP with ZeroshotCLIP

    def templates(self) -> list[str]:
        templates = list(IMAGENET_TEMPLATES_SELECT)
        if self.cfg.DATASET.NAME != "ImageNet":
            templates.append(template_for(self.cfg.DATASET.NAME))
        return templates
