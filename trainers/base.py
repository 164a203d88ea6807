"""The method base: what every CLIP method shares, so that a method file holds only its own maths.

Two pieces:

* `MethodModel` — a CLIP method as a module. It declares what it learns (`learnable_modules`,
  saved under those names in Dassl's checkpoint layout) and exposes its computation in two steps,
  `features` (image features [B, D] and class text features [C, D] or, per image, [B, C, D]) and
  `logits`, plus `loss` (a classification term and named regularisers). A plug-in (DePT's extra
  head, a residual, a regulariser) wraps any host model through these without copying it.
* `ClipMethod` — the trainer. It loads CLIP in the run's precision (read from the original's key
  of each method, `precision_key`), freezes everything the model does not declare learnable,
  builds the optimiser and scheduler from the model's parameter groups (`OPTIM.STAGED_LR` has one
  meaning, see `staged_param_groups`), registers the learnable modules for checkpoints, and takes
  the optimisation step (fp16 / fp32 / amp, a GradScaler for fp16 autocast on CUDA, the NaN check).
  The engine runs the loop and steps the learning rate. Fast mode (TRAIN.FAST_MODE, opt-in) runs
  training steps and evaluation under autocast (bf16 on CPU, fp16 on CUDA) on fp32 weights.

Sketch of the methods to come: CoCoOp is a prompt learner whose `encode_texts` uses
`ClassPrompts.assemble_per_image` (`text_depends_on_image = True`); KgCoOp is CoOp plus a
regulariser in `loss`; MaPLe passes its deep prompts to both encoders in `encode_images` /
`encode_texts`; TaskRes adds a residual to fixed text features in `encode_texts`; DePT wraps any
host model, adds its head on `features(...).image`, mixes logits in `logits` and rescales
`Loss.ce` in `loss`, with its own parameter group.

A model whose image features come from the frozen, prompt-free image tower alone sets
`frozen_image_features = True`: then `ClipMethod` reads them from the feature cache
(`engine.feature_cache`, FEATURE_CACHE.*) at test time, and in training when the training transform
is deterministic (or FEATURE_CACHE.TRAIN_VIEWS asks for cached augmented views); they reach
`encode_images` as `CachedImageFeatures` instead of images.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from engine import TrainerX
from engine.backbone import Preprocess
from engine.checkpoint import load_pretrained_weights
from engine.errors import ConfigValueError
from engine.evaluation import compute_accuracy
from engine.feature_cache import CachedImageFeatures
from engine.optim import build_lr_scheduler, build_optimizer
from engine.preflight import MemoryShortfall
from trainers.common import (DEFAULT_TEXT_CHUNK_MB, PRECISIONS, TextActivation, autocast_context, autocast_enabled,
                             cosine_logits, encode_prompt_embeddings, load_clip, make_grad_scaler,
                             text_activation)
from trainers.feature_cache import FrozenFeatureCacheMixin

__all__ = ["ClipMethod", "Features", "Loss", "MethodModel", "PromptLearnerModel", "StepOutput", "staged_param_groups"]

logger = logging.getLogger(__name__)

TEXT_CHUNK_KEY = "TRAIN.TEXT_CHUNK_MB"


@dataclass
class Features:
    """A batch's image features [B, D] and the class text features: [C, D] shared by the batch or
    [B, C, D] per image. Unnormalised, as the encoders give them."""

    image: torch.Tensor
    text: torch.Tensor


@dataclass
class Loss:
    """A training loss: the classification term and the method's regularisers, by name."""

    ce: torch.Tensor
    regularisers: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def total(self) -> torch.Tensor:
        return self.ce + sum(self.regularisers.values()) if self.regularisers else self.ce


@dataclass
class StepOutput:
    """One training step's loss, the logits and the labels they are scored against."""

    loss: Loss
    logits: torch.Tensor
    labels: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class MethodModel(nn.Module):
    """A CLIP method: the CLIP model plus what the method learns (see the module docstring)."""

    # True when the class text features depend on the image (CoCoOp): then they cannot be
    # computed once per evaluation.
    text_depends_on_image = False
    # True when training steps take `image_prefix(images)` (computed without gradients by a frozen
    # part of the model, so it can be cached) instead of the images themselves.
    trains_on_image_prefix = False
    # Whether test-time inference runs under autocast with PREC amp (the originals differ).
    autocast_at_test = True
    # True when the image features are `encode_frozen_images(images)` of a tower that nothing trains
    # or prompts: then they may come from the feature cache. Leave False for a trained image tower
    # (FT-CLIP, Skip Tuning) or vision prompts (MaPLe, PromptSRC).
    frozen_image_features = False
    # The activation budget (MB) of one text-tower call (TRAIN.TEXT_CHUNK_MB): class prompts beyond it go
    # in chunks (`trainers.common.chunked_text_forward`). Set by `ClipMethod.build_model`.
    text_chunk_mb: float = DEFAULT_TEXT_CHUNK_MB

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.clip_model = clip_model

    def set_text_chunk_mb(self, budget_mb: float) -> None:
        """The text budget of this model and of the models it wraps (DePT's host)."""
        for module in self.modules():
            if isinstance(module, MethodModel):
                module.text_chunk_mb = budget_mb

    def text_activation(self, batch_size: int) -> TextActivation | None:
        """The text tower's activations of a training step (rows x per-row estimate with gradients), for
        the preflight's advice on TRAIN.TEXT_CHUNK_MB; None when no text forward with gradients runs in
        a step (fixed class features)."""
        return None

    @property
    def dtype(self) -> torch.dtype:
        return self.clip_model.dtype

    # ------------------------------------------------------------------ what is learned
    def learnable_modules(self) -> dict[str, nn.Module]:
        """Checkpoint name -> module trained and saved (Dassl: one folder per name)."""
        return {}

    def set_trainable(self) -> None:
        """Freeze everything but the learnable modules (refine to freeze parts of them)."""
        self.requires_grad_(False)
        for module in self.learnable_modules().values():
            module.requires_grad_(True)

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Trainable parameters named ``<checkpoint name>.<name in the module>``, each once."""
        seen: set[int] = set()
        for prefix, module in self.learnable_modules().items():
            for name, param in module.named_parameters():
                if param.requires_grad and id(param) not in seen:
                    seen.add(id(param))
                    yield f"{prefix}.{name}", param

    def param_groups(self, optim_cfg: Any) -> list[dict]:
        """The optimiser's parameter groups (default: `staged_param_groups` at the engine's LRs)."""
        return staged_param_groups(list(self.named_trainable_parameters()), optim_cfg, new_lr=optim_cfg.LR)

    def checkpoint_skip_patterns(self) -> tuple[str, ...]:
        """fnmatch patterns of checkpoint keys not loaded: buffers rebuilt for the current classes,
        or modules that do not apply to them (DePT's base-class head on new classes)."""
        return ()

    # ------------------------------------------------------------------ maths
    def encode_frozen_images(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen image tower's features: what the feature cache stores."""
        return self.clip_model.encode_image(images.type(self.dtype))

    def encode_images(self, images: torch.Tensor | CachedImageFeatures) -> torch.Tensor:
        if isinstance(images, CachedImageFeatures):
            return images.features
        return self.encode_frozen_images(images)

    def encode_texts(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Class text features [C, D] (or [B, C, D] when `text_depends_on_image`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode_texts()")

    def encode_prompts(self, prompts: torch.Tensor, eot_indices: torch.Tensor,
                       layer_prompts: dict[int, torch.Tensor] | None = None, shared_prefix: int = 0) -> torch.Tensor:
        """Text features [N, D] of prompt embeddings [N, L, W] (deep `layer_prompts` shared by all rows;
        `shared_prefix` leading tokens the same tensors in every row), in chunks within `text_chunk_mb`
        (`trainers.common.encode_prompt_embeddings`)."""
        return encode_prompt_embeddings(self.clip_model, prompts, eot_indices, self.text_chunk_mb, layer_prompts,
                                        shared_prefix)

    def features(self, images: torch.Tensor, text: torch.Tensor | None = None) -> Features:
        """Image and class text features; `text` reuses features computed earlier (evaluation)."""
        image_features = self.encode_images(images)
        if text is None:
            text = self.encode_texts(image_features)
        return Features(image_features, text)

    def logits(self, features: Features) -> torch.Tensor:
        """CLIP's scaled cosine similarity, [B, C]."""
        return cosine_logits(features.image, features.text, self.clip_model.logit_scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(images))

    def loss(self, features: Features, logits: torch.Tensor, labels: torch.Tensor) -> Loss:
        return Loss(F.cross_entropy(logits, labels))

    @torch.no_grad()
    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """What a training step takes when `trains_on_image_prefix`; the images otherwise."""
        return images

    def prepare_training(self) -> None:
        """Work done before each epoch's steps (Skip Tuning: its text cache)."""

    def training_step(self, inputs: Any, labels: torch.Tensor) -> StepOutput:
        features = self.features(inputs)
        logits = self.logits(features)
        return StepOutput(self.loss(features, logits, labels), logits, labels)


class PromptLearnerModel(MethodModel):
    """Frozen CLIP + a prompt learner saved as ``prompt_learner/`` (CoOp's layout), whose class-name
    buffers are rebuilt for the current classes on load (base -> new, other datasets)."""

    def __init__(self, clip_model: nn.Module, prompt_learner: nn.Module) -> None:
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner

    def learnable_modules(self) -> dict[str, nn.Module]:
        return {"prompt_learner": self.prompt_learner}

    def checkpoint_skip_patterns(self) -> tuple[str, ...]:
        return ("token_prefix", "token_suffix")

    def text_activation(self, batch_size: int) -> TextActivation | None:
        eot = getattr(self.prompt_learner, "eot_indices", None)
        if eot is None:  # no prompts through the text tower (TaskRes's residual)
            return None
        per_step = batch_size if self.text_depends_on_image else 1  # CoCoOp: every image has its C prompts
        return text_activation(self.clip_model, eot, prompts=len(eot) * per_step, shared_prefix=self.text_shared_prefix())

    def text_shared_prefix(self) -> int:
        """Leading prompt tokens that are the same tensors in every class (computed once; see
        `ClassPrompts.shared_prefix_length`); 0 unless a method's prompts have them."""
        return 0


def staged_param_groups(named: list[tuple[str, nn.Parameter]], optim_cfg: Any, new_lr: float) -> list[dict]:
    """`OPTIM.STAGED_LR`'s one meaning: parameters whose name contains an `OPTIM.NEW_LAYERS` entry
    train at `new_lr` (the method's choice: Dassl's LR, FT-CLIP's NEW_LR, DePT's LR x LR_EXP), the
    others at LR x BASE_LR_MULT. Without STAGED_LR every parameter is in one group at OPTIM.LR."""
    if not optim_cfg.STAGED_LR:
        return [{"params": [p for _, p in named]}]
    new_layers = [optim_cfg.NEW_LAYERS] if isinstance(optim_cfg.NEW_LAYERS, str) else list(optim_cfg.NEW_LAYERS)
    is_new = [any(layer in name for layer in new_layers) for name, _ in named]
    base = [p for (_, p), new in zip(named, is_new) if not new]
    new = [p for (_, p), new in zip(named, is_new) if new]
    if not new:
        logger.warning("OPTIM.STAGED_LR is on but no trainable parameter matches OPTIM.NEW_LAYERS=%s: one LR",
                       new_layers)
        return [{"params": base}]
    base_lr = optim_cfg.LR * optim_cfg.BASE_LR_MULT
    logger.info("Staged LR: %d tensors at LR %g, %d tensors (%s) at %g",
                len(base), base_lr, len(new), "/".join(new_layers), new_lr)
    groups = [{"params": new, "lr": new_lr}]
    if base:
        groups.insert(0, {"params": base, "lr": base_lr})
    return groups


class ClipMethod(FrozenFeatureCacheMixin, TrainerX):
    """The trainer of every CLIP method: see the module docstring. A method sets `precision_key`
    and implements `build_method`; the rest is optional."""

    precision_key = "TRAINER.PREC"  # the original's name of the method's precision key
    recipe = ""  # the original's main config, under configs/trainers/ (the contract tests and benchmark use it)

    # ------------------------------------------------------------------ config
    @classmethod
    def precision(cls, cfg) -> str:
        node: Any = cfg
        for part in cls.precision_key.split("."):
            node = node[part]
        return node

    @staticmethod
    def fast_mode(cfg) -> bool:
        """TRAIN.FAST_MODE: autocast (bf16 on CPU, fp16 on CUDA) on fp32 weights; off means exact."""
        return bool(cfg.TRAIN.FAST_MODE)

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        prec = cls.precision(cfg)
        if prec not in PRECISIONS:
            raise ConfigValueError(f"{cls.precision_key} must be one of {PRECISIONS}, got '{prec}'")
        if cls.fast_mode(cfg) and prec == "fp16":
            raise ConfigValueError(
                f"TRAIN.FAST_MODE True needs fp32 weights (it autocasts them), but {cls.precision_key} is fp16 "
                f"(fp16 weights, as the original). Set {cls.precision_key} fp32, or TRAIN.FAST_MODE False.")
        cls.check_text_chunk_mb(TEXT_CHUNK_KEY, cfg.TRAIN.TEXT_CHUNK_MB)

    @classmethod
    def text_chunk_key(cls, cfg) -> str:
        """The config key holding the run's text activation budget (CoCoOp: its own key when set)."""
        return TEXT_CHUNK_KEY

    @classmethod
    def text_chunk_mb(cls, cfg) -> float:
        """The run's text activation budget in MB (see `MethodModel.text_chunk_mb`)."""
        node: Any = cfg
        for part in cls.text_chunk_key(cfg).split("."):
            node = node[part]
        return node

    @staticmethod
    def check_text_chunk_mb(key: str, value: Any) -> None:
        """A text budget must be a positive number of megabytes."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigValueError(
                f"{key} must be a positive number of megabytes (the text tower's activation budget per call), "
                f"got {value!r}. Set e.g. '{key} {int(DEFAULT_TEXT_CHUNK_MB)}'.")

    @classmethod
    def backbone_preprocess(cls, cfg) -> Preprocess:
        """The CLIP's own input size, mean, std and interpolation (read without building it)."""
        return Preprocess.from_pretrained_cfg(clip.preprocess_cfg(cfg.MODEL.BACKBONE.NAME))

    def anomaly_hint(self) -> str:
        hint = super().anomaly_hint()
        if self.precision(self.cfg) == "fp16":
            hint += f" The run used fp16: try {self.precision_key} fp32 or amp."
        return hint

    # ------------------------------------------------------------------ model
    def build_method(self, clip_model: nn.Module, classnames: list[str]) -> MethodModel:
        raise NotImplementedError(f"{type(self).__name__} must implement build_method()")

    def build_model(self) -> None:
        cfg = self.cfg
        prec = self.precision(cfg)
        if prec == "fp16" and self.device.type != "cuda" and self.has_training:
            logger.warning("%s fp16 (fp16 weights updated in place, as the original) is meant for CUDA and slow "
                           "on CPU; use %s fp32 or amp there.", self.precision_key, self.precision_key)
        logger.info("Loading CLIP (backbone: %s)", cfg.MODEL.BACKBONE.NAME)
        clip_model = load_clip(cfg, prec)
        self.model = self.build_method(clip_model, self.dm.dataset.classnames)
        self.model.set_text_chunk_mb(self.text_chunk_mb(cfg))
        self.model.set_trainable()
        modules = self.model.learnable_modules()
        if cfg.MODEL.INIT_WEIGHTS and modules:
            target = next(iter(modules.values())) if len(modules) == 1 else nn.ModuleDict(modules)
            load_pretrained_weights(target, cfg.MODEL.INIT_WEIGHTS)
        self.model.to(self.device)
        self.checkpoint_skip_patterns = self.model.checkpoint_skip_patterns()
        self.scaler = make_grad_scaler(prec, self.device, self.fast_mode(cfg))
        if not modules:
            return
        trainable = [name for name, _ in self.model.named_trainable_parameters()]
        logger.info("Parameters to be updated (%d tensors): %s%s", len(trainable), trainable[:4],
                    " ..." if len(trainable) > 4 else "")
        # STAGED_LR is resolved by the model's parameter groups, not by the engine's child split.
        optim_cfg = cfg.OPTIM.clone()
        optim_cfg.defrost()
        optim_cfg.STAGED_LR = False
        self.optim = build_optimizer(None, optim_cfg, param_groups=self.model.param_groups(cfg.OPTIM))
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM, iters_per_epoch=max(1, len(self.train_loader_x)))
        for i, (name, module) in enumerate(modules.items()):
            # One optimiser for all: its state is saved with the first module.
            self.register_model(name, module, self.optim if i == 0 else None, self.sched if i == 0 else None)

    def memory_advice(self, shortfall: MemoryShortfall) -> str | None:
        """A lower text budget (TRAIN.TEXT_CHUNK_MB, or the method's own key): the step's class prompts
        then go through the text tower in smaller chunks, each recomputed in the backward pass."""
        if not isinstance(self.model, MethodModel):  # DyT: a timm ViT, no text tower
            return None
        activation = self.model.text_activation(shortfall.batch_size)
        if activation is None:
            return None
        key, budget = self.text_chunk_key(self.cfg), self.text_chunk_mb(self.cfg)
        in_use = min(budget, activation.total_mb)
        # After an out-of-memory error the excess is unknown: half is a first try the next preflight checks.
        target = in_use / 2 if shortfall.excess_mb is None else in_use - shortfall.excess_mb
        if target < max(activation.per_prompt_mb, 1.0):
            return None  # even one prompt per chunk would not save enough (the key counts whole MB)
        return (f"Or set {key} {math.floor(target)} (now {budget}; the text tower's activations, "
                f"about {in_use:.0f} MB at this batch, then go in chunks within it, recomputed in the backward "
                "pass: the same results, more time).")

    # ------------------------------------------------------------------ training
    def autocast(self):
        return autocast_context(self.precision(self.cfg), self.device, self.fast_mode(self.cfg))

    def uses_autocast(self) -> bool:
        """Whether `autocast()` casts (PREC amp or fast mode) or is a no-op."""
        return autocast_enabled(self.precision(self.cfg), self.fast_mode(self.cfg))

    def evaluates_under_autocast(self) -> bool:
        """Evaluation under `autocast()`: where the original does under amp, and always in fast mode."""
        return self.model.autocast_at_test or self.fast_mode(self.cfg)

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def forward_backward(self, batch) -> dict:
        inputs, labels = self.parse_batch_train(batch)
        with self.autocast():
            out = self.model.training_step(inputs, labels)
            loss = out.loss.total
        self.optimization_step(loss)
        summary = {"loss": loss.item(), "acc": compute_accuracy(out.logits, out.labels)[0].item()}
        summary.update({name: value.item() for name, value in out.loss.regularisers.items()})
        summary.update(out.metrics)
        return summary

    def optimization_step(self, loss: torch.Tensor) -> None:
        """zero_grad, backward (scaled under fp16 autocast on CUDA), step; a NaN loss stops the run."""
        if self.scaler is None:
            self.model_backward_and_update(loss)
            return
        self.model_zero_grad()
        self.detect_anomaly(loss)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optim)
        self.scaler.update()

    def resume_state(self) -> dict:
        state = super().resume_state()
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_resume_state(self, state) -> None:
        super().load_resume_state(state)
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])

    def save_results(self, output_dir: str | None = None, extra: dict | None = None) -> dict:
        """results.json gains `fast_mode` (the config in the provenance card says it too)."""
        return super().save_results(output_dir, {"fast_mode": self.fast_mode(self.cfg), **(extra or {})})

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        """Within it, class text features that do not depend on the image are computed once, not
        once per batch: the model does not change during an evaluation."""
        self._test_text_cache: dict[str, torch.Tensor] | None = {}
        try:
            yield
        finally:
            self._test_text_cache = None

    def test(self, split: str | None = None) -> float:
        with self.evaluation():
            return super().test(split)

    @torch.no_grad()
    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        context = self.autocast() if self.evaluates_under_autocast() else contextlib.nullcontext()
        cache = getattr(self, "_test_text_cache", None)
        with context:
            features = self.model.features(images, text=cache.get("text") if cache is not None else None)
            if cache is not None and not self.model.text_depends_on_image:
                cache["text"] = features.text
            return self.model.logits(features).float()
