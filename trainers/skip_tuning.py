"""Skip Tuning (Wu et al., "Skip Tuning: Pre-trained Vision-Language Models are Effective and
Efficient Adapters Themselves", CVPR 2025): FT-CLIP made cheap by skipping work, as the released code does.

* LSkip: the stems and the first ω = TRAINER.SKIP.START_LAYER blocks of *both* encoders are frozen.
  Once per epoch (fresh training augmentation each time) they run without gradients over the whole
  training split and the hidden states entering block ω are cached; each step trains blocks ω.. and
  the heads on a batch of cached states.
* CSkip: each step sends only a subset of class prompts through the trainable text blocks: the top-k
  classes by similarity of the batch's current image features to frozen zero-shot prototypes (ground
  truth forced to the top), plus lower ranks kept by an exponential keep-mask drawn once per run.
* Batches are single-class when DATASET.NUM_SHOTS >= 4; MAX_EPOCH is divided by 4 for
  ImageNet/SUN397/Food101. At test time the full model runs on all classes.

Deviations (all documented in the README section): a batch whose distinct labels outnumber the
always-kept classes gets its missing ground-truth classes added (the original silently relabels them
0); the keep-mask is drawn from the CPU generator before training starts (the original draws it from
the CUDA generator inside a model summary); MAX_EPOCH < 4 on the reduced datasets gives 1 epoch, not 0.
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections import defaultdict
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip.model import shared_prefix_length
from engine import TRAINER_REGISTRY
from engine.config import CfgNode as CN
from engine.data import build_data_loader, build_transform
from engine.errors import ConfigValueError
from trainers.base import Loss, MethodModel, StepOutput
from trainers.common import (DEFAULT_TEXT_CHUNK_MB, TextActivation, cosine_logits, features_from_hidden_in_chunks,
                             text_activation, text_hidden_states)
from trainers.finetune import FinetuneCLIP, FinetuneModel, ft_template_for

logger = logging.getLogger(__name__)

REDUCED_EPOCH_DATASETS = ("ImageNet", "SUN397", "Food101")


def reduced_max_epoch(dataset_name: str, max_epoch: int) -> int:
    """The original quarters MAX_EPOCH on ImageNet/SUN397/Food101 (never below 1 here)."""
    if dataset_name in REDUCED_EPOCH_DATASETS:
        return max(1, int(max_epoch / 4))
    return max_epoch


# ---------------------------------------------------------------------------- CSkip
def num_top_classes(num_classes: int, top_ratio: float, max_top: int) -> int:
    """k, the number of always-kept classes: a fraction (<= 1) or a count (> 1), capped by max_top."""
    k = math.ceil(top_ratio * num_classes) if top_ratio <= 1.0 else math.ceil(min(top_ratio, num_classes))
    return min(k, max_top)


def draw_keep_mask(num_classes: int, num_top: int, lam: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool mask over similarity *ranks*: the first `num_top` always kept, the rest with a falling probability.

    The probability of rank num_top + i is exp_pdf(x_i; scale=lam) min-max normalised to [0, 1] over
    x = linspace(0, 5, C - num_top): 1 for the first skipped rank, 0 for the last. With a single
    remaining rank the normalisation is 0/0 in the original, so that rank is never kept.
    """
    if lam <= 0:
        raise ConfigValueError(f"TRAINER.SKIP.LAMBDA must be > 0, got {lam}.")
    rest = num_classes - num_top
    if rest > 1:
        x = torch.linspace(0.0, 5.0, rest, dtype=torch.float64)
        pdf = torch.exp(-x / lam) / lam
        probs = (pdf - pdf.min()) / (pdf.max() - pdf.min())
    else:
        probs = torch.zeros(max(rest, 0), dtype=torch.float64)
    keep_prob = torch.cat([torch.ones(num_top, dtype=torch.float64), probs])
    return torch.rand(num_classes, generator=generator, dtype=torch.float64) < keep_prob


@torch.no_grad()
def select_classes(
    image_features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, keep_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected class ids in ascending order, labels remapped to positions in it).

    Classes are ranked by their highest cosine similarity to any image of the batch, with each
    image's ground truth forced to the top; `keep_mask` then picks ranks. Ground-truth classes that
    the mask would drop (only possible when a batch has more distinct labels than always-kept ranks)
    are added back.
    """
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    similarity = image_features.float() @ prototypes.float().t()  # (B, C)
    similarity[torch.arange(len(labels), device=labels.device), labels] = 1e4
    order = similarity.max(dim=0).values.argsort(descending=True)
    selected = order[keep_mask.to(order.device)]
    selected = torch.unique(torch.cat([selected, labels]))  # sorted ascending; GT always present
    position = torch.full((prototypes.shape[0],), -1, dtype=torch.long, device=labels.device)
    position[selected] = torch.arange(len(selected), device=labels.device)
    return selected, position[labels]


# ---------------------------------------------------------------------------- batch plan
def plan_batches(labels: Sequence[int], batch_size: int, single_class: bool, rng: random.Random | None = None) -> list[list[int]]:
    """Index batches over the cache for one epoch (the original's FeatureLoader).

    single_class: repeatedly pick a remaining class uniformly, draw `batch_size` of its remaining
    samples without replacement, retire it when fewer than `batch_size` remain. Otherwise draw
    random batches from the whole pool until fewer than `batch_size` remain. Leftovers are dropped.
    """
    rng = rng or random  # the global `random` stream, seeded by set_random_seed
    labels = [int(x) for x in labels]
    batches: list[list[int]] = []
    if single_class:
        pool: dict[int, list[int]] = defaultdict(list)
        for idx, label in enumerate(labels):
            pool[label].append(idx)
        small = sorted(c for c, idxs in pool.items() if len(idxs) < batch_size)
        if small:
            logger.warning("Classes %s have fewer than %d training samples and are never trained on", small, batch_size)
        pool = {c: idxs for c, idxs in pool.items() if len(idxs) >= batch_size}
        while pool:
            label = rng.choice(list(pool.keys()))
            chosen = rng.sample(pool[label], batch_size)
            batches.append(chosen)
            pool[label] = [i for i in pool[label] if i not in chosen]
            if len(pool[label]) < batch_size:
                del pool[label]
    else:
        remaining = list(range(len(labels)))
        while len(remaining) >= batch_size:
            chosen = rng.sample(remaining, batch_size)
            batches.append(chosen)
            remaining = [i for i in remaining if i not in chosen]
    if not batches:
        raise ConfigValueError(
            f"No training batch of size {batch_size} can be formed from {len(labels)} samples"
            + (" (single-class batches: every class has fewer samples)" if single_class else "")
            + ". Lower DATALOADER.TRAIN_X.BATCH_SIZE or use more shots."
        )
    return batches


# ---------------------------------------------------------------------------- model
class SkipModel(FinetuneModel):
    """FT-CLIP's model plus the cached-state forward used in training (LSkip + CSkip)."""

    trains_on_image_prefix = True

    def __init__(self, clip_model: nn.Module, classnames: list[str], template: str, skip_cfg,
                 text_chunk_mb: float = DEFAULT_TEXT_CHUNK_MB) -> None:
        # The stems and blocks [0:ω] of both towers are always frozen, whatever TRAINER.FINETUNE says.
        super().__init__(clip_model, classnames, template, learnable_text=True, learnable_image=True,
                         start_layer=skip_cfg.START_LAYER, text_chunk_mb=text_chunk_mb)
        self.drop_ratio = skip_cfg.DROP_RATIO
        self.lam = skip_cfg.LAMBDA
        self.num_classes = len(classnames)
        self.num_top = num_top_classes(self.num_classes, skip_cfg.TOP_RATIO, skip_cfg.MAX_TOP)
        self.skip_classes = not (skip_cfg.TOP_RATIO == 1.0 or self.num_top == self.num_classes)
        self.keep_mask: torch.Tensor | None = None  # drawn once per run, see draw_keep_mask
        self.text_hidden: torch.Tensor | None = None  # (C, L, W) text states entering block ω
        self.text_eot: torch.Tensor | None = None
        self.text_prefix = 0  # leading tokens every prompt shares, computed once per step
        self.class_prototypes: torch.Tensor | None = None  # (C, D) normalised zero-shot text features

    def prepare_training(self) -> None:
        self.cache_text()
        self.ensure_keep_mask()

    def ensure_keep_mask(self) -> None:
        """Draw CSkip's keep-mask over similarity ranks, once per run."""
        if self.skip_classes and self.keep_mask is None:
            self.keep_mask = draw_keep_mask(self.num_classes, self.num_top, self.lam)
            logger.info("CSkip: %d of %d classes per step (%d always kept)",
                        int(self.keep_mask.sum()), self.num_classes, self.num_top)

    @torch.no_grad()
    def cache_text(self) -> None:
        """Text states entering block ω for all classes; the prototypes from the first call (never refreshed)."""
        hidden, eot = text_hidden_states(self.clip_model, self.tokenized_texts, end=self.start_layer)
        self.text_hidden, self.text_eot = hidden, eot
        self.text_prefix = shared_prefix_length(self.tokenized_texts)
        if self.class_prototypes is None:
            features = features_from_hidden_in_chunks(self.clip_model, hidden, eot, self.start_layer,
                                                      self.text_chunk_mb)
            self.class_prototypes = features / features.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """Image states entering block ω ([B, 1 + G², W]): the frozen stem and blocks [0:ω]."""
        visual = self.clip_model.visual
        return visual.run_blocks(visual.embed(images.to(self.dtype)), end=self.start_layer)

    def drop_tokens(self, hidden: torch.Tensor, drop_ratio: float) -> torch.Tensor:
        """Drop a random fraction in [0, drop_ratio] of the token positions (the RNGs advance even at 0)."""
        ratio = random.uniform(0.0, drop_ratio)
        length = hidden.shape[1]
        dropped = torch.randperm(length)[: math.ceil(length * ratio)]
        if len(dropped) == 0:
            return hidden
        keep = torch.ones(length, dtype=torch.bool)
        keep[dropped] = False
        return hidden[:, keep.to(hidden.device)]

    @property
    def rows_only(self) -> bool:
        """The last trainable block computes the pooled rows only (class token, EOT) and the prompts'
        shared leading tokens are computed once: equal to float rounding, so in fp32 (and amp) only;
        pure fp16 keeps the original's arithmetic, as the text context is kept uncut there (see
        `CLIP.encode_text_embeddings`)."""
        return self.dtype == torch.float32

    def image_features_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Image features from the states entering block ω (see `rows_only`)."""
        visual = self.clip_model.visual
        if self.rows_only:
            return visual.features_from_hidden(hidden, start=self.start_layer)
        return visual.head(visual.run_blocks(hidden, start=self.start_layer))

    def forward_cached(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits over the selected classes, labels remapped into them, selected class ids)."""
        if self.text_hidden is None:
            raise RuntimeError("SkipModel.forward_cached() needs the text cache: call cache_text() first.")
        hidden = self.drop_tokens(hidden.to(self.dtype), self.drop_ratio)
        image_features = self.image_features_from_hidden(hidden)
        if self.skip_classes:
            self.ensure_keep_mask()
            selected, labels = select_classes(image_features.detach(), self.class_prototypes, labels, self.keep_mask)
        else:
            selected = torch.arange(self.num_classes, device=labels.device)
        text_features = features_from_hidden_in_chunks(self.clip_model, self.text_hidden[selected],
                                                       self.text_eot[selected], self.start_layer, self.text_chunk_mb,
                                                       eot_rows_only=self.rows_only,
                                                       shared_prefix=self.text_prefix if self.rows_only else 0)
        return cosine_logits(image_features, text_features, self.clip_model.logit_scale), labels, selected

    def text_activation(self, batch_size: int) -> TextActivation | None:
        """Text blocks ω.. on the step's classes (at most the kept ranks plus the batch's labels)."""
        prompts = self.num_classes
        if self.skip_classes and self.keep_mask is not None:
            prompts = min(self.num_classes, int(self.keep_mask.sum()) + batch_size)
        eot = self.tokenized_texts.argmax(dim=-1)
        return text_activation(self.clip_model, eot, prompts=prompts,
                               blocks=self.clip_model.transformer.layers - self.start_layer)

    def training_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """A step on cached states entering block ω (not on images), over the CSkip class subset."""
        logits, targets, selected = self.forward_cached(inputs, labels)
        return StepOutput(Loss(F.cross_entropy(logits, targets)), logits, targets, {"classes": float(len(selected))})


class PlannedBatches(Sequence):
    """One epoch's batches of cached states, cut from the cache on demand by the batch plan."""

    def __init__(self, states: torch.Tensor, labels: torch.Tensor, plan: list[list[int]]) -> None:
        self.states, self.labels, self.plan = states, labels, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict:
        idx = self.plan[i]
        return {"img": self.states[idx], "label": self.labels[idx]}


@TRAINER_REGISTRY.register()
class SkipTuning(FinetuneCLIP):
    """FT-CLIP with LSkip (cached frozen prefix) and CSkip (per-step class subset)."""

    recipe = "SkipTuning/vit_b16_bs4"

    def __init__(self, cfg) -> None:
        self.cache_time_s = 0.0  # all cache extraction, the first included
        self.first_cache_time_s: float | None = None
        super().__init__(cfg)

    @classmethod
    def adjust_cfg(cls, cfg) -> None:
        reduced = reduced_max_epoch(cfg.DATASET.NAME, cfg.OPTIM.MAX_EPOCH)
        if reduced != cfg.OPTIM.MAX_EPOCH:
            logger.info("%s: OPTIM.MAX_EPOCH %d -> %d (Skip Tuning's epoch reduction)", cfg.DATASET.NAME,
                        cfg.OPTIM.MAX_EPOCH, reduced)
            cfg.OPTIM.MAX_EPOCH = reduced

    @staticmethod
    def extend_cfg(cfg) -> None:
        FinetuneCLIP.extend_cfg(cfg)
        cfg.TRAINER.SKIP = CN()
        cfg.TRAINER.SKIP.START_LAYER = 6  # ω: blocks [0:ω] of both encoders are frozen and cached
        cfg.TRAINER.SKIP.TOP_RATIO = 0.5  # always-kept classes: a fraction (<= 1) or a count (> 1)
        cfg.TRAINER.SKIP.MAX_TOP = 50  # cap on the always-kept classes
        cfg.TRAINER.SKIP.LAMBDA = 0.3  # scale of the exponential keep profile over lower ranks (> 0)
        cfg.TRAINER.SKIP.DROP_RATIO = 0.0  # max fraction of cached token positions dropped per step
        cfg.TRAINER.SKIP.QUICK_BATCH_SIZE = 128  # batch size of the cache extraction

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        skip = cfg.TRAINER.SKIP
        if skip.LAMBDA <= 0:
            raise ConfigValueError(f"TRAINER.SKIP.LAMBDA must be > 0, got {skip.LAMBDA}.")
        if skip.TOP_RATIO <= 0 or skip.MAX_TOP < 1:
            raise ConfigValueError(f"TRAINER.SKIP.TOP_RATIO must be > 0 and MAX_TOP >= 1, got {skip.TOP_RATIO} and {skip.MAX_TOP}.")
        if not 0.0 <= skip.DROP_RATIO < 1.0:
            raise ConfigValueError(f"TRAINER.SKIP.DROP_RATIO must be in [0, 1), got {skip.DROP_RATIO}.")

    def build_method(self, clip_model: nn.Module, classnames: list[str]) -> MethodModel:
        layers = min(clip_model.transformer.layers, clip_model.visual.transformer.layers)
        start = self.cfg.TRAINER.SKIP.START_LAYER
        if not 0 <= start <= layers:
            raise ConfigValueError(f"TRAINER.SKIP.START_LAYER={start} is outside 0..{layers} (the encoders' block count).")
        return SkipModel(clip_model, classnames, ft_template_for(self.cfg.DATASET.NAME), self.cfg.TRAINER.SKIP,
                         self.text_chunk_mb(self.cfg))

    # ------------------------------------------------------------------ caches
    @torch.no_grad()
    def extract_image_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        """States entering block ω of every training image, one fresh training augmentation each (on CPU)."""
        cfg = self.cfg
        loader = build_data_loader(
            cfg, sampler_type="SequentialSampler", data_source=self.dm.dataset.train_x,
            batch_size=cfg.TRAINER.SKIP.QUICK_BATCH_SIZE, tfm=build_transform(cfg, is_train=True), is_train=False,
        )
        self.model.eval()
        states, labels = [], []
        for batch in loader:
            with self.autocast():
                hidden = self.model.image_prefix(batch["img"].to(self.device))
            states.append(hidden.to(self.model.dtype).cpu())
            labels.append(batch["label"].cpu())
        return torch.cat(states), torch.cat(labels)

    def build_caches(self) -> None:
        """Text cache, image cache and this epoch's batch plan; the time goes to `cache_time_s`."""
        t0 = time.time()
        with self.autocast():
            self.model.prepare_training()
        self.image_cache, self.cache_labels = self.extract_image_cache()
        single_class = self.cfg.DATASET.NUM_SHOTS >= 4
        self.batch_plan = plan_batches(self.cache_labels.tolist(), self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE, single_class)
        elapsed = time.time() - t0
        self.cache_time_s += elapsed
        logger.info("Cached %d image states %s (%.2f s, %d batches of %s)", len(self.cache_labels),
                    tuple(self.image_cache.shape[1:]), elapsed, len(self.batch_plan),
                    "one class" if single_class else "random classes")

    def before_train(self) -> None:
        self.model.ensure_keep_mask()  # before a resume restores the RNG, so a resumed run gets the same mask
        super().before_train()
        t0 = time.time()
        self.build_caches()
        self.first_cache_time_s = time.time() - t0
        # As the original: the first extraction is not part of the training time; re-caching is.
        self.time_start = time.time()

    def before_epoch(self) -> None:
        if self.epoch != self.start_epoch:
            self.build_caches()  # fresh augmentation every epoch, as the original
        super().before_epoch()

    def epoch_batches(self) -> PlannedBatches:
        return PlannedBatches(self.image_cache, self.cache_labels, self.batch_plan)

    def extra_results(self) -> dict:
        """Skip Tuning's cost, measured like the original: train_time_s excludes the first cache only."""
        first = self.first_cache_time_s
        return {
            "train_time_kind": "after_first_cache_incl_recaching",
            "first_cache_time_s": round(first, 3) if first is not None else None,
            "cache_time_s": round(self.cache_time_s, 3),
            "train_time_incl_first_cache_s": (
                round(self.train_time_s + first, 3) if self.train_time_s is not None and first is not None else None
            ),
            "classes_per_step": int(self.model.keep_mask.sum()) if self.model.keep_mask is not None else self.model.num_classes,
            "skip_start_layer": self.model.start_layer,
        }
