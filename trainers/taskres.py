"""TaskRes: Task Residual Tuning (Yu et al., "Task Residual for Tuning Vision-Language Models", CVPR 2023).

Both CLIP encoders stay frozen. A fixed base classifier T [C, D] holds, per class, the raw (not
normalised) CLIP text features of hand-written prompts, averaged over templates (ImageNet: 7 + 1
templates; every other dataset: its one template; class names verbatim, underscores included). The
only trained tensor is a zero-initialised residual x of T's shape:

    W = T + alpha * x,   logits = exp(logit_scale) * norm(f) @ norm(W).T,   alpha = RESIDUAL_SCALE,

normalised after the sum, so T's norm sets x's effective step size. TaskRes* (the enhanced base)
computes T with CLIP's text projection replaced by a tuned one loaded from a file
(`--enhanced-base PATH`). Checkpoints hold `base_text_features` (T) and `text_feature_residuals` (x)
under `prompt_learner/`, as the original's: evaluation uses the stored T, and a 1000-class ImageNet
checkpoint evaluated on a 200-class subset (ImageNet-A/R) keeps the rows of those classes.

As the original, PREC fp16 computes T with CLIP's fp16 weights and then runs everything else in fp32
(the image encoder included); amp trains under autocast and evaluates without it.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Mapping

import torch
import torch.nn as nn

from engine import TRAINER_REGISTRY
from engine.checkpoint import load_checkpoint
from engine.config import CfgNode as CN
from engine.errors import ConfigValueError, MissingFileError
from engine.trainer import CheckpointMismatchError
from trainers.base import ClipMethod, MethodModel, PromptLearnerModel
from trainers.common import IMAGENET_TEMPLATES_SELECT, mean_text_features, template_for

logger = logging.getLogger(__name__)

# Where the original's enhanced bases are published (its README; RN50, per dataset and shot count).
ENHANCED_BASE_URL = "https://drive.google.com/drive/folders/1_ehtvBRWbbcYZRTAcvtCyUTD_tL4GUiV"
ENHANCED_BASE_LAYOUT = "strong_base/<DatasetName>/rn50_<K>shots/model.pth.tar"


def taskres_templates(dataset_name: str) -> list[str]:
    """ImageNet: the 7 selected templates plus its own; any other dataset: its own template only."""
    own = template_for(dataset_name)
    return [*IMAGENET_TEMPLATES_SELECT, own] if dataset_name == "ImageNet" else [own]


def enhanced_base_path(value: str, dataset_name: str, num_shots: int) -> str:
    """TRAINER.TaskRes.ENHANCED_BASE with `{dataset}` / `{shots}` filled in (one sweep over datasets
    and shot counts can name every file, e.g. strong_base/{dataset}/rn50_{shots}shots/model.pth.tar)."""
    return value.format(dataset=dataset_name, shots=num_shots)


def require_enhanced_base(path: str) -> None:
    """A missing enhanced-base file is a user error that says where the original's files are."""
    if not os.path.isfile(path):
        raise MissingFileError(
            f"Enhanced base not found: {path} (--enhanced-base / TRAINER.TaskRes.ENHANCED_BASE). The original's "
            f"files (RN50 only, one per dataset and shot count, laid out as {ENHANCED_BASE_LAYOUT}) are published "
            f"at {ENHANCED_BASE_URL}; download them and pass the file's path, or pass '--enhanced-base none' for "
            "the regular base."
        )


def load_text_projection(path: str, clip_model: nn.Module, backbone: str) -> torch.Tensor:
    """The enhanced base's text projection [width, D]: the transposed Linear weight [D, width] stored
    under state_dict.weight of `path`."""
    require_enhanced_base(path)
    weight = load_checkpoint(path).get("state_dict", {}).get("weight")
    expected = tuple(clip_model.text_projection.shape[::-1])
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != expected:
        found = tuple(weight.shape) if isinstance(weight, torch.Tensor) else "no state_dict.weight"
        raise ConfigValueError(
            f"Enhanced base {path}: expected a text-projection weight state_dict.weight of shape {expected} "
            f"(embedding x text width of CLIP '{backbone}'), found {found}. The original's files are for RN50; "
            "use the file made for this backbone."
        )
    return weight.t()


@contextlib.contextmanager
def swapped_text_projection(clip_model: nn.Module, projection: torch.Tensor) -> Iterator[None]:
    """CLIP's text projection replaced by `projection` (cast to its dtype) inside the block."""
    saved = clip_model.text_projection.detach().clone()
    with torch.no_grad():
        clip_model.text_projection.copy_(projection)
    try:
        yield
    finally:
        with torch.no_grad():
            clip_model.text_projection.copy_(saved)


class TaskResLearner(nn.Module):
    """The fixed base T (buffer) and the learned residual x (zeros), combined as T + alpha * x."""

    def __init__(self, base_text_features: torch.Tensor, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.register_buffer("base_text_features", base_text_features)
        self.text_feature_residuals = nn.Parameter(torch.zeros_like(base_text_features))

    def forward(self) -> torch.Tensor:
        return self.base_text_features + self.alpha * self.text_feature_residuals


class TaskResModel(PromptLearnerModel):
    """Frozen CLIP + the task residual; the class text features are T + alpha * x (normalised in `logits`)."""

    autocast_at_test = False  # the original evaluates amp runs without autocast
    frozen_image_features = True  # only the class-side residual trains

    def encode_texts(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.prompt_learner()


@TRAINER_REGISTRY.register()
class TaskRes(ClipMethod):
    precision_key = "TRAINER.TaskRes.PREC"
    recipe = "TaskRes/adam_lr2e-4_B256_ep200_ViT16"

    @staticmethod
    def extend_cfg(cfg) -> None:
        cfg.TRAINER.TaskRes = CN()
        cfg.TRAINER.TaskRes.N_CTX = 16  # unused, as in the original
        cfg.TRAINER.TaskRes.CSC = False  # unused, as in the original
        cfg.TRAINER.TaskRes.CTX_INIT = ""  # unused, as in the original
        cfg.TRAINER.TaskRes.PREC = "fp16"  # fp16 (base in fp16, the rest fp32), fp32, amp
        cfg.TRAINER.TaskRes.CLASS_TOKEN_POSITION = "end"  # unused, as in the original
        cfg.TRAINER.TaskRes.RESIDUAL_SCALE = 1.0  # alpha; the original's scripts: 0.5 (Flowers 1.0)
        cfg.TRAINER.TaskRes.ENHANCED_BASE = "none"  # --enhanced-base: 'none' or the file of a tuned text projection

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        value = cfg.TRAINER.TaskRes.ENHANCED_BASE
        if not isinstance(value, str) or not value:
            raise ConfigValueError(
                f"TRAINER.TaskRes.ENHANCED_BASE (--enhanced-base) must be 'none' or a file path, got {value!r}."
            )
        try:
            path = enhanced_base_path(value, cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigValueError(
                f"--enhanced-base {value}: only {{dataset}} and {{shots}} may appear in braces ({e})."
            ) from None
        if value != "none":
            require_enhanced_base(path)  # before any data or weights are loaded (and in train.py --check)

    def build_method(self, clip_model: nn.Module, classnames: list[str]) -> MethodModel:
        opts = self.cfg.TRAINER.TaskRes
        templates = taskres_templates(self.cfg.DATASET.NAME)
        logger.info("Base classifier from %d template(s): %s", len(templates), templates)
        clip_model.to(self.device)  # the frozen text tower runs once here, on the run's device
        projection = contextlib.nullcontext()
        if opts.ENHANCED_BASE != "none":
            path = enhanced_base_path(opts.ENHANCED_BASE, self.cfg.DATASET.NAME, self.cfg.DATASET.NUM_SHOTS)
            logger.info("Enhanced base: text projection from %s", path)
            weights = load_text_projection(path, clip_model, self.cfg.MODEL.BACKBONE.NAME)
            projection = swapped_text_projection(clip_model, weights.to(self.device))
        with projection:
            base = mean_text_features(clip_model, classnames, templates, self.device, clean_names=False,
                                      budget_mb=self.text_chunk_mb(self.cfg))
        # The original casts the whole model to fp32 after computing the base (fp16: only the base was fp16).
        clip_model.float()
        logger.info("Residual scale (alpha): %s", opts.RESIDUAL_SCALE)
        return TaskResModel(clip_model, TaskResLearner(base.float(), opts.RESIDUAL_SCALE))

    # ------------------------------------------------------------------ checkpoints
    def _load_state_dict_checked(self, name: str, state_dict: Mapping[str, torch.Tensor], fpath: str) -> None:
        super()._load_state_dict_checked(name, self._rows_of_current_classes(state_dict, fpath), fpath)

    def _rows_of_current_classes(self, state_dict: Mapping[str, torch.Tensor], fpath: str) -> dict:
        """A checkpoint of a superset of the classes (ImageNet -> ImageNet-A/R) keeps the rows of the
        current classes, found by name in the dataset's classnames.txt (first match, as the original)."""
        state = dict(state_dict)
        saved = state.get("base_text_features")
        n_classes = len(self.dm.dataset.classnames)
        if saved is None or saved.shape[0] == n_classes:
            return state
        source = source_classnames(getattr(self.dm.dataset, "dataset_dir", ""), saved.shape[0])
        missing = [c for c in self.dm.dataset.classnames if c not in source] if source is not None else []
        if source is None or missing:
            raise CheckpointMismatchError(
                f"Checkpoint {fpath} holds a classifier for {saved.shape[0]} classes; {self.cfg.DATASET.NAME} has "
                f"{n_classes}. TaskRes's base and residual are per class: evaluate it on the classes it was trained "
                "on, or on a subset whose dataset folder has the full list in classnames.txt (ImageNet-A/R)."
                + (f" Classes not in that list: {missing[:5]}." if source is not None else "")
            )
        rows = torch.tensor([source.index(c) for c in self.dm.dataset.classnames])
        logger.info("Checkpoint of %d classes: keeping the rows of the %d classes of %s",
                    saved.shape[0], n_classes, self.cfg.DATASET.NAME)
        for key in ("base_text_features", "text_feature_residuals"):
            if key in state:
                state[key] = state[key][rows]
        return state


def source_classnames(dataset_dir: str, n_rows: int) -> list[str] | None:
    """Class names of `dataset_dir/classnames.txt` ('<wnid> <name>' lines) if it lists `n_rows` classes."""
    path = os.path.join(dataset_dir, "classnames.txt") if dataset_dir else ""
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        names = [line.strip().split(" ", 1)[1] for line in f if " " in line.strip()]
    return names if len(names) == n_rows else None
