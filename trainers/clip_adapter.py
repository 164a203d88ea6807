"""CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", IJCV 2023).

Both CLIP encoders stay frozen. A bottleneck MLP A (C -> C/4 -> C, no biases, ReLU after both
layers, PyTorch's default init) acts on CLIP's projected image feature f, blended with it:

    f' = ratio * A(f) + (1 - ratio) * f,   logits = exp(logit_scale) * norm(f') @ norm(t).T,

with t the class text features of the dataset's one hand-written template (class names with '_'
as spaces). C is the model's embedding width (the released file hard-codes RN50's 1024). The
released file has no config keys (ratio 0.2 and reduction 4 are literals) and runs CoOp's configs;
the keys below are ours with those values. Checkpoints hold `fc.0.weight`, `fc.2.weight` under
`clip_adapter/`, as the original's. The text features are computed once (the original recomputes
them in every forward pass, with the same result: the text tower is frozen).
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from engine import TRAINER_REGISTRY
from engine.config import CfgNode as CN
from engine.errors import ConfigValueError
from trainers.base import ClipMethod, Features, MethodModel
from trainers.common import mean_text_features, template_for

logger = logging.getLogger(__name__)


class Adapter(nn.Module):
    """Linear(C, C/r) -> ReLU -> Linear(C/r, C) -> ReLU, without biases (keys fc.0.weight, fc.2.weight)."""

    def __init__(self, width: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(width, width // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(width // reduction, width, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ClipAdapterModel(MethodModel):
    """Frozen CLIP + the adapter on the image features; fixed class text features."""

    frozen_image_features = True  # the adapter reads the frozen tower's features

    def __init__(self, clip_model: nn.Module, adapter: Adapter, text_features: torch.Tensor, ratio: float) -> None:
        super().__init__(clip_model)
        self.adapter = adapter
        self.ratio = ratio
        # Rebuilt for the run's classes, never saved (the original recomputes them every forward pass).
        self.register_buffer("text_features", text_features, persistent=False)

    def learnable_modules(self) -> dict[str, nn.Module]:
        return {"clip_adapter": self.adapter}

    def checkpoint_skip_patterns(self) -> tuple[str, ...]:
        return ("token_prefix", "token_suffix")  # CoOp leftovers the original deletes on load

    def encode_texts(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_features

    def adapt(self, image_features: torch.Tensor) -> torch.Tensor:
        """ratio * A(f) + (1 - ratio) * f, in fp32 whatever the backbone's precision."""
        f = image_features.float()
        return self.ratio * self.adapter(f) + (1 - self.ratio) * f

    def features(self, images: torch.Tensor, text: torch.Tensor | None = None) -> Features:
        image = self.adapt(self.encode_images(images))
        return Features(image, self.encode_texts() if text is None else text)


@TRAINER_REGISTRY.register()
class CLIP_Adapter(ClipMethod):
    precision_key = "TRAINER.CLIP_ADAPTER.PREC"
    recipe = "CoOp/vit_b16_ep100"  # the released file ships no config; the conformance run used this one

    @staticmethod
    def extend_cfg(cfg) -> None:
        cfg.TRAINER.CLIP_ADAPTER = CN()
        cfg.TRAINER.CLIP_ADAPTER.RATIO = 0.2  # weight of the adapter's output in the blend (a literal in the original)
        cfg.TRAINER.CLIP_ADAPTER.REDUCTION = 4  # bottleneck width = embedding width / REDUCTION
        cfg.TRAINER.CLIP_ADAPTER.PREC = "fp32"  # the original always runs CLIP in fp32; fp16 / amp also work

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        opts = cfg.TRAINER.CLIP_ADAPTER
        if not 0.0 <= float(opts.RATIO) <= 1.0:
            raise ConfigValueError(
                f"TRAINER.CLIP_ADAPTER.RATIO must be in [0, 1] (0.2 in the original), got {opts.RATIO}."
            )
        if not isinstance(opts.REDUCTION, int) or opts.REDUCTION < 1:
            raise ConfigValueError(
                "TRAINER.CLIP_ADAPTER.REDUCTION must be a positive integer (4 in the original), "
                f"got {opts.REDUCTION!r}."
            )

    def build_method(self, clip_model: nn.Module, classnames: list[str]) -> MethodModel:
        opts = self.cfg.TRAINER.CLIP_ADAPTER
        width = clip_model.visual.output_dim
        if width // opts.REDUCTION < 1:
            raise ConfigValueError(
                f"TRAINER.CLIP_ADAPTER.REDUCTION {opts.REDUCTION} leaves no hidden unit for embedding width {width}."
            )
        template = template_for(self.cfg.DATASET.NAME)
        logger.info('Prompt template: "%s"; adapter %d -> %d -> %d, ratio %s', template, width,
                    width // opts.REDUCTION, width, opts.RATIO)
        clip_model.to(self.device)  # the frozen text tower runs once here, on the run's device
        text = mean_text_features(clip_model, classnames, [template], self.device,
                                  budget_mb=self.text_chunk_mb(self.cfg))
        return ClipAdapterModel(clip_model, Adapter(width, opts.REDUCTION), text.float(), float(opts.RATIO))
