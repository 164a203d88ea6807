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
import os
import re
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from engine import TRAINER_REGISTRY, TrainerX
from engine.checkpoint import load_pretrained_weights
from engine.config import CfgNode as CN
from engine.evaluation import compute_accuracy
from engine.optim import build_lr_scheduler, build_optimizer
from engine.errors import ConfigValueError
from trainers.common import (
    autocast_context,
    check_precision,
    clean_classname,
    cosine_logits,
    load_clip_to_cpu,
    make_grad_scaler,
    template_for,
)

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
    if "PREC" not in cfg.TRAINER:
        cfg.TRAINER.PREC = "fp16"  # fp16 (pure fp16 SGD, as the original), fp32, amp
    if "NEW_LR" not in cfg.OPTIM:
        cfg.OPTIM.NEW_LR = 0.0003  # LR of the OPTIM.NEW_LAYERS group with STAGED_LR (original default)
    if "FINETUNE" not in cfg.TRAINER:
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


class FinetuneModel(nn.Module):
    """CLIP plus the class prompts; `learnable_params` is what is registered, optimised and saved."""

    def __init__(self, clip_model: nn.Module, classnames: list[str], template: str,
                 learnable_text: bool = True, learnable_image: bool = True) -> None:
        super().__init__()
        if not (learnable_text or learnable_image):
            raise ConfigValueError(
                "TRAINER.FINETUNE.LEARNABLE_TEXT and LEARNABLE_IMAGE are both False: nothing to fine-tune. "
                "Set at least one to True (or use ZeroshotCLIP)."
            )
        self.clip_model = clip_model
        prompts = [template.format(clean_classname(c)) for c in classnames]
        logger.info("Prompts: %s%s", prompts[:5], " ..." if len(prompts) > 5 else "")
        self.register_buffer("tokenized_texts", clip.tokenize(prompts), persistent=False)
        self.learnable_text = learnable_text
        self.learnable_params = nn.ModuleDict()
        if learnable_text:
            self.learnable_params["text_encoder"] = TextEncoder(clip_model)
        if learnable_image:
            self.learnable_params["image_encoder"] = clip_model.visual
        self.fixed_text_features = None
        if not learnable_text:  # a frozen text tower is run once
            with torch.no_grad():
                self.fixed_text_features = clip_model.encode_text(self.tokenized_texts)

    @property
    def dtype(self) -> torch.dtype:
        return self.clip_model.dtype

    def text_features(self) -> torch.Tensor:
        if self.fixed_text_features is not None:
            return self.fixed_text_features.to(self.tokenized_texts.device)
        return self.clip_model.encode_text(self.tokenized_texts)

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over all classes; `text_features` may be passed in to reuse them across batches."""
        image_features = self.clip_model.encode_image(images)
        if text_features is None:
            text_features = self.text_features()
        return cosine_logits(image_features, text_features, self.clip_model.logit_scale)


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


def set_trainable(model: FinetuneModel, unfrozen_tags: set[str], start_layer: int) -> None:
    """Only `learnable_params` trains, minus the stem (except `unfrozen_tags`) and blocks < start_layer."""
    clip_model = model.clip_model
    clip_model.requires_grad_(False)
    model.learnable_params.requires_grad_(True)
    for tag, part in frozen_stem(clip_model).items():
        if tag not in unfrozen_tags:
            part.requires_grad_(False)
    for tower in (clip_model.transformer, clip_model.visual.transformer):
        for block in tower.resblocks[:start_layer]:
            block.requires_grad_(False)
    clip_model.logit_scale.requires_grad_(False)


def staged_param_groups(learnable: nn.Module, optim_cfg) -> list[dict]:
    """The original's staged LR: trainable params whose name contains a NEW_LAYERS entry get NEW_LR.

    An empty OPTIM.NEW_LAYERS means the original's ['image_encoder'] (text at LR, image at NEW_LR).
    Without STAGED_LR all trainable params form one group at OPTIM.LR.
    """
    named = [(n, p) for n, p in learnable.named_parameters() if p.requires_grad]
    if not optim_cfg.STAGED_LR:
        return [{"params": [p for _, p in named]}]
    new_layers = optim_cfg.NEW_LAYERS or ("image_encoder",)
    new_layers = [new_layers] if isinstance(new_layers, str) else list(new_layers)
    base = [p for n, p in named if not any(layer in n for layer in new_layers)]
    new = [p for n, p in named if any(layer in n for layer in new_layers)]
    if not new:
        logger.warning("OPTIM.STAGED_LR is on but no trainable parameter matches OPTIM.NEW_LAYERS=%s: one LR", new_layers)
        return [{"params": base}]
    logger.info("Staged LR: %d tensors at LR %g, %d tensors (%s) at NEW_LR %g",
                len(base), optim_cfg.LR, len(new), "/".join(new_layers), optim_cfg.NEW_LR)
    groups = [{"params": new, "lr": optim_cfg.NEW_LR}]
    if base:
        groups.insert(0, {"params": base, "lr": optim_cfg.LR})
    return groups


@TRAINER_REGISTRY.register()
class FinetuneCLIP(TrainerX):
    """Full fine-tuning of CLIP (both encoders) with per-dataset prompts."""

    @staticmethod
    def extend_cfg(cfg) -> None:
        add_ft_cfg(cfg)

    @classmethod
    def check_cfg(cls, cfg) -> None:
        check_precision(cfg.TRAINER.PREC, "TRAINER.PREC")
        tags = [t for t in cfg.TRAINER.FINETUNE.LEARNABLE_PREFIX_MODULES.split("+") if t]
        unknown = [t for t in tags if t not in PREFIX_TAGS]
        if unknown:
            raise ConfigValueError(
                f"TRAINER.FINETUNE.LEARNABLE_PREFIX_MODULES has unknown tags {unknown}; "
                f"use '+'-joined tags from {PREFIX_TAGS} (e.g. 'ln+ipe') or ''."
            )

    # ------------------------------------------------------------------ model
    def build_custom_model(self, clip_model: nn.Module, classnames: list[str], template: str) -> FinetuneModel:
        ft = self.cfg.TRAINER.FINETUNE
        return FinetuneModel(clip_model, classnames, template, ft.LEARNABLE_TEXT, ft.LEARNABLE_IMAGE)

    def configure_trainable(self) -> None:
        ft = self.cfg.TRAINER.FINETUNE
        set_trainable(self.model, set(ft.LEARNABLE_PREFIX_MODULES.split("+")) - {""}, ft.START_LAYER)

    def build_model(self) -> None:
        cfg = self.cfg
        prec = cfg.TRAINER.PREC
        if prec == "fp16" and self.device.type != "cuda":
            logger.warning("TRAINER.PREC fp16 (pure fp16 SGD) is meant for CUDA and is slow on CPU; "
                           "use TRAINER.PREC fp32 or amp on CPU.")
        logger.info("Loading CLIP (backbone: %s)", cfg.MODEL.BACKBONE.NAME)
        clip_model = load_clip_to_cpu(cfg)
        if prec in ("fp32", "amp"):
            clip_model.float()
        template = ft_template_for(cfg.DATASET.NAME)
        self.model = self.build_custom_model(clip_model, self.dm.dataset.classnames, template)
        self.configure_trainable()
        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(self.model.learnable_params, cfg.MODEL.INIT_WEIGHTS)
        self.model.to(self.device)
        trainable = sorted(n for n, p in self.model.learnable_params.named_parameters() if p.requires_grad)
        logger.info("Parameters to be updated (%d tensors): %s ...", len(trainable), trainable[:4])
        # STAGED_LR is handled here by parameter name (the original's rule), not by the engine's child split.
        optim_cfg = cfg.OPTIM.clone()
        optim_cfg.defrost()
        optim_cfg.STAGED_LR = False
        self.optim = build_optimizer(None, optim_cfg, param_groups=staged_param_groups(self.model.learnable_params, cfg.OPTIM))
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("learnable_params", self.model.learnable_params, self.optim, self.sched)
        self.scaler = make_grad_scaler(prec, self.device)
        self._eval_text_features = None

    # ------------------------------------------------------------------ training
    def backward_and_update(self, loss: torch.Tensor) -> None:
        if self.scaler is None:
            self.model_backward_and_update(loss)
            return
        self.model_zero_grad()
        self.detect_anomaly(loss)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optim)
        self.scaler.update()

    def forward_backward(self, batch) -> dict:
        image, label = self.parse_batch_train(batch)
        with autocast_context(self.cfg.TRAINER.PREC, self.device):
            output = self.model(image.to(self.model.dtype))
            loss = F.cross_entropy(output, label)
        self.backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

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

    # ------------------------------------------------------------------ evaluation
    def test(self, split: str | None = None) -> float:
        # The text tower is the same for every test batch: encode all class prompts once per test.
        self._eval_text_features = None
        try:
            return super().test(split)
        finally:
            self._eval_text_features = None

    @torch.no_grad()
    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.cfg.TRAINER.PREC, self.device):
            if self._eval_text_features is None:
                self._eval_text_features = self.model.text_features()
            return self.model(image.to(self.model.dtype), self._eval_text_features).float()

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        """Without --load-epoch and without model-best, load the last epoch saved (as the original does)."""
        if directory and epoch is None:
            folder = os.path.join(directory, "learnable_params")
            if not os.path.exists(os.path.join(folder, "model-best.pth.tar")) and os.path.isdir(folder):
                epochs = [int(m.group(1)) for f in os.listdir(folder) if (m := re.fullmatch(r"model\.pth\.tar-(\d+)", f))]
                if epochs:
                    epoch = max(epochs)
                    logger.info("No model-best.pth.tar in %s: loading the last epoch, %d", folder, epoch)
        super().load_model(directory, epoch)
