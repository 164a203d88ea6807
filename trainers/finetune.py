"""FT-CLIP: full fine-tuning of both CLIP encoders, the baseline of Skip Tuning (Wu et al., CVPR 2025).

Each class gets one prompt from a per-dataset template (`FT_TEMPLATES`, not CoOp's). Images and all
class prompts go through the two encoders; the loss is cross-entropy on CLIP's scaled cosine logits.
Both encoders train except the stems (token/positional/class embeddings, `conv1`, `ln_pre`) and blocks
below `TRAINER.FINETUNE.START_LAYER`; `logit_scale` never trains.

Checkpoints keep the original's layout: `<output>/learnable_params/model.pth.tar-<E>` holding both
encoder wrappers under `text_encoder.*` / `image_encoder.*` (frozen parts included), so checkpoints
saved by the original code load here and the other way round.
"""
from __future__ import annotations

import logging
import time

import torch
import torch.nn as nn

import clip
from clip.model import shared_prefix_length
from engine import TRAINER_REGISTRY
from engine.config import CfgNode as CN
from engine.errors import ConfigValueError
from trainers.base import ClipMethod, MethodModel, staged_param_groups
from trainers.common import DEFAULT_TEXT_CHUNK_MB, TextActivation, encode_token_ids, template_for, text_activation
from trainers.prompts import clean_classname

logger = logging.getLogger(__name__)

# The original FT-CLIP / Skip Tuning templates (hand-picked per dataset; not CoOp's).
FT_TEMPLATES = {
    "ImageNet": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetSketch": "a sketch of a {}.",
    "ImageNetA": "a bad photo of a {}.",
    "ImageNetR": "a rendition of a {}.",
    "Caltech101": "itap of a {}.",
    "DescribableTextures": "itap of a {}.",
    "EuroSAT": "a centered satellite photo of {}.",
    "FGVCAircraft": "a bright photo of a {}, a type of aircraft.",
    "Food101": "a photo of the nice {}.",
    "OxfordFlowers": "a close-up photo of a {}.",
    "OxfordPets": "a bad photo of a {}, a type of pet.",
    "SUN397": "a photo of a {}.",
    "StanfordCars": "a photo of the {}, a type of car.",
    "UCF101": "a photo of a {}, a type of sport.",
}

# TRAINER.FINETUNE.LEARNABLE_PREFIX_MODULES tags of the always-frozen stem modules.
PREFIX_TAGS = ("te", "tpe", "ce", "conv", "ln", "ipe")


def ft_template_for(dataset_name: str) -> str:
    """FT-CLIP's template; datasets the original does not cover fall back to the zero-shot table."""
    if dataset_name in FT_TEMPLATES:
        return FT_TEMPLATES[dataset_name]
    template = template_for(dataset_name)
    logger.info("No FT-CLIP template for %s: using the zero-shot template %r", dataset_name, template)
    return template


def add_ft_cfg(cfg) -> None:
    """Keys shared by FinetuneCLIP and SkipTuning (the original's `extend_cfg`)."""
    cfg.TRAINER.PREC = "fp16"  # fp16 (pure fp16 SGD, as the original), fp32, amp
    cfg.OPTIM.NEW_LR = 0.0003  # LR of the OPTIM.NEW_LAYERS group with STAGED_LR (original default)
    cfg.OPTIM.NEW_LAYERS = ("image_encoder",)  # with STAGED_LR: the image encoder at NEW_LR
    cfg.OPTIM.BASE_LR_MULT = 1.0  # the rest at LR (the original's optimiser ignores this key)
    cfg.TRAINER.FINETUNE = CN()
    cfg.TRAINER.FINETUNE.LEARNABLE_TEXT = True
    cfg.TRAINER.FINETUNE.LEARNABLE_IMAGE = True
    cfg.TRAINER.FINETUNE.LEARNABLE_PREFIX_MODULES = ""  # '+'-joined PREFIX_TAGS to unfreeze
    cfg.TRAINER.FINETUNE.START_LAYER = 0  # blocks below it stay frozen


class TextEncoder(nn.Module):
    """CLIP's text tower under the original's key names; shares CLIP's modules (no copy)."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.transformer = clip_model.transformer
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection


class FinetuneModel(MethodModel):
    """CLIP plus the class prompts; `learnable_params` is what is registered, optimised and saved."""

    def __init__(self, clip_model: nn.Module, classnames: list[str], template: str,
                 learnable_text: bool = True, learnable_image: bool = True,
                 unfrozen_stem: frozenset[str] = frozenset(), start_layer: int = 0,
                 text_chunk_mb: float = DEFAULT_TEXT_CHUNK_MB) -> None:
        super().__init__(clip_model)
        self.text_chunk_mb = text_chunk_mb
        if not (learnable_text or learnable_image):
            raise ConfigValueError(
                "TRAINER.FINETUNE.LEARNABLE_TEXT and LEARNABLE_IMAGE are both False: nothing to fine-tune. "
                "Set at least one to True (or use ZeroshotCLIP)."
            )
        prompts = [template.format(clean_classname(c)) for c in classnames]
        logger.info("Prompts: %s%s", prompts[:5], " ..." if len(prompts) > 5 else "")
        self.register_buffer("tokenized_texts", clip.tokenize(prompts), persistent=False)
        self.learnable_params = nn.ModuleDict()
        if learnable_text:
            self.learnable_params["text_encoder"] = TextEncoder(clip_model)
        if learnable_image:
            self.learnable_params["image_encoder"] = clip_model.visual
        self.unfrozen_stem = unfrozen_stem
        self.start_layer = start_layer
        self.fixed_text_features = None
        if not learnable_text:  # a frozen text tower is run once
            with torch.no_grad():
                self.fixed_text_features = encode_token_ids(clip_model, self.tokenized_texts, text_chunk_mb)

    def learnable_modules(self) -> dict[str, nn.Module]:
        return {"learnable_params": self.learnable_params}

    def set_trainable(self) -> None:
        """Both towers train, except the stem (but `unfrozen_stem` tags), blocks below
        `start_layer` and `logit_scale`."""
        super().set_trainable()
        for tag, part in frozen_stem(self.clip_model).items():
            if tag not in self.unfrozen_stem:
                part.requires_grad_(False)
        for tower in (self.clip_model.transformer, self.clip_model.visual.transformer):
            for block in tower.resblocks[: self.start_layer]:
                block.requires_grad_(False)
        self.clip_model.logit_scale.requires_grad_(False)

    def param_groups(self, optim_cfg) -> list[dict]:
        # The original's staged LR: the image encoder (OPTIM.NEW_LAYERS) at OPTIM.NEW_LR.
        return staged_param_groups(list(self.named_trainable_parameters()), optim_cfg, new_lr=optim_cfg.NEW_LR)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip_model.encode_image(images.to(self.dtype))

    def encode_texts(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        if self.fixed_text_features is not None:
            return self.fixed_text_features.to(self.tokenized_texts.device)
        return encode_token_ids(self.clip_model, self.tokenized_texts, self.text_chunk_mb)

    def text_activation(self, batch_size: int) -> TextActivation | None:
        if self.fixed_text_features is not None:
            return None
        return text_activation(self.clip_model, self.tokenized_texts.argmax(dim=-1),
                               shared_prefix=shared_prefix_length(self.tokenized_texts))


def frozen_stem(clip_model: nn.Module) -> dict[str, nn.Module | nn.Parameter]:
    """The stem modules FT-CLIP freezes unless unfrozen by tag (see PREFIX_TAGS)."""
    visual = clip_model.visual
    return {
        "te": clip_model.token_embedding,
        "tpe": clip_model.positional_embedding,
        "ce": visual.class_embedding,
        "conv": visual.conv1,
        "ln": visual.ln_pre,
        "ipe": visual.positional_embedding,
    }


@TRAINER_REGISTRY.register()
class FinetuneCLIP(ClipMethod):
    """Full fine-tuning of CLIP (both encoders) with per-dataset prompts."""

    precision_key = "TRAINER.PREC"
    recipe = "FinetuneCLIP/vit_b16_ep10_bs4"

    @staticmethod
    def extend_cfg(cfg) -> None:
        add_ft_cfg(cfg)

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        tags = [t for t in cfg.TRAINER.FINETUNE.LEARNABLE_PREFIX_MODULES.split("+") if t]
        unknown = [t for t in tags if t not in PREFIX_TAGS]
        if unknown:
            raise ConfigValueError(
                f"TRAINER.FINETUNE.LEARNABLE_PREFIX_MODULES has unknown tags {unknown}; "
                f"use '+'-joined tags from {PREFIX_TAGS} (e.g. 'ln+ipe') or ''."
            )

    def build_method(self, clip_model: nn.Module, classnames: list[str]) -> MethodModel:
        ft = self.cfg.TRAINER.FINETUNE
        return FinetuneModel(clip_model, classnames, ft_template_for(self.cfg.DATASET.NAME), ft.LEARNABLE_TEXT,
                             ft.LEARNABLE_IMAGE, frozenset(ft.LEARNABLE_PREFIX_MODULES.split("+")) - {""},
                             ft.START_LAYER, self.text_chunk_mb(self.cfg))

    def before_epoch(self) -> None:
        self.epoch_start_time = time.time()

    def after_epoch(self) -> None:
        # The original's cost lines (parsed by sweep runners).
        epoch_time = time.time() - self.epoch_start_time
        logger.info("Epoch time: %.2fs, Speed: %.2f batch/s", epoch_time, self.num_batches / max(epoch_time, 1e-9))
        if self.epoch + 1 == self.max_epoch:
            training_time = time.time() - self.time_start
            speed = self.num_batches * (self.max_epoch - self.start_epoch) / max(training_time, 1e-9)
            logger.info("Training time: %.2fs, Speed: %.2f batch/s", training_time, speed)
        super().after_epoch()
