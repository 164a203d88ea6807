"""DePT: Decoupled Prompt Tuning (Zhang et al., "DePT: Decoupled Prompt Tuning", CVPR 2024), one plug-in
over any host method built on the method base (the original keeps four near-copies, `elp_*.py`).

The host's image-text-matching head (ITM, its scaled cosine logits) is kept as it is. DePT adds a
Channel Adjusted Transfer (CAT) head on the host's features: a channel-wise affine transform per
modality (`film_lp_img`, `film_lp_text`: a ⊙ x + b, a = 1, b = 0 at start, fp32, cast to the input's
dtype) and ONE linear classifier over the base classes (`linear_probe_proj`, in CLIP's dtype) fed the
batch's transformed image features and the transformed text features of each sample's class:

    L = (1 - λ) · CE(z_ITM, y) + λ · CE(W [g_t(t_y); g_v(v)] + b, [y; y]) + host regularisers,

λ = TRAINER.LINEAR_PROBE.WEIGHT. At test time in "base mode" the raw logits are mixed,
(1 - λ) · z_ITM + λ · z_CAT (the original's code; its paper writes the mix over probabilities), or the
CAT logits alone with TEST_TIME_FUSION False; otherwise only the host's ITM head is used and no
classifier exists. Base mode, as the original decides it: DATASET.SUBSAMPLE_CLASSES 'base', or 'all'
on a dataset whose name contains 'ImageNet' (ours: TRAINER.DEPT.BASE_MODE 'always' for few-shot runs).
The head trains at OPTIM.LR x OPTIM.LR_EXP (the original's staged LR: `staged_param_groups` with
NEW_LAYERS ['linear_probe', 'film']), the host's learnable modules at LR x BASE_LR_MULT.

The host is a registered trainer chosen by TRAINER.DEPT.HOST (`--trainer DePT`); the original's names
are aliases with their host fixed: ExtrasLinearProbe{CoOp,CoCoOp,KgCoOp,MaPLe}. The run's trainer
is the host's trainer class with `DePT` mixed in front of it (see `DePT.__new__`), so the host builds
its model and DePT wraps it through `features` / `logits` / `loss`.

Checkpoints: one folder named as the original's (`PromptLearner/`, `MultiModalPromptLearner/` for
MaPLe) whose keys are the original's (`prompt_learner.ctx`, `film_lp_img.scale`,
`linear_probe_proj.weight`, ...). The original saves its whole CustomCLIP (the frozen CLIP too, ~0.5 GB);
ours saves the learnable modules and the host's buffers only, and loads the original's files by
skipping their frozen-CLIP entries. On new classes the classifier does not exist and is skipped.
"""
from __future__ import annotations

import copy
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import TRAINER_REGISTRY
from engine.config import CfgNode as CN
from engine.config import get_cfg_default
from engine.errors import ConfigValueError, UserError
from trainers.base import ClipMethod, Features, Loss, MethodModel, StepOutput, staged_param_groups
from trainers.common import TextActivation

logger = logging.getLogger(__name__)

HEAD_TYPES = ("linear", "similarity")
BASE_MODES = ("auto", "always")
NAMES_TO_UPDATE = ("prompt_learner", "linear_probe", "film")
# Entries of the original's checkpoint (its whole CustomCLIP) that are frozen CLIP weights or unused
# host parts (KgCoOp's `meta_net`, `adapter`): ours rebuilds them from the backbone, so loading skips them.
ORIGINAL_FROZEN_KEYS = ("image_encoder.*", "text_encoder.*", "logit_scale", "meta_net.*", "adapter.*")
# Cross-dataset targets with a subset of ImageNet's classes: the 1000-way classifier is sliced on load.
SUBSET_TARGETS = ("ImageNetA", "ImageNetR")
CLASSIFIER_KEYS = ("linear_probe_proj.weight", "linear_probe_proj.bias")


class FiLM(nn.Module):
    """The channel-wise transform (cwT) a ⊙ x + b; parameters fp32, cast to the input's dtype."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale.type(x.dtype) * x + self.bias.type(x.dtype)


@dataclass(frozen=True)
class DePTSettings:
    """What the plug-in reads from the config (TRAINER.LINEAR_PROBE.*, TRAINER.FILM.*, base mode)."""

    weight: float  # λ, train and test
    head_type: str  # 'linear' (published) or 'similarity' (a second cosine head)
    test_time_fusion: bool
    film: bool
    base_mode: bool

    @classmethod
    def from_cfg(cls, cfg) -> "DePTSettings":
        lp = cfg.TRAINER.LINEAR_PROBE
        return cls(float(lp.WEIGHT), lp.TYPE, bool(lp.TEST_TIME_FUSION), bool(cfg.TRAINER.FILM.LINEAR_PROBE),
                   is_base_mode(cfg))


def is_base_mode(cfg) -> bool:
    """The original's rule: the base classes of a base-to-new run, or all classes of an ImageNet-family
    dataset (cross-dataset source and its ImageNet targets); TRAINER.DEPT.BASE_MODE 'always' (ours) forces it."""
    subsample = cfg.DATASET.SUBSAMPLE_CLASSES
    return (cfg.TRAINER.DEPT.BASE_MODE == "always" or subsample == "base"
            or (subsample == "all" and "ImageNet" in cfg.DATASET.NAME))


class _CheckpointLayout(nn.Module):
    """The learnable part of the original's CustomCLIP, under its child names (its state-dict keys)."""

    def __init__(self, children: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, module in children.items():
            self.add_module(name, module)


class DePTModel(MethodModel):
    """A host method model plus DePT's CAT head (see the module docstring)."""

    def __init__(self, host: MethodModel, num_classes: int, settings: DePTSettings, checkpoint_name: str) -> None:
        super().__init__(host.clip_model)
        self.host = host
        self.settings = settings
        self.text_depends_on_image = host.text_depends_on_image
        self.trains_on_image_prefix = host.trains_on_image_prefix
        self.autocast_at_test = host.autocast_at_test
        self.frozen_image_features = host.frozen_image_features  # the head reads the host's image features
        dim = host.clip_model.text_projection.shape[1]
        self.film_lp_img = FiLM(dim) if settings.film else nn.Identity()
        self.film_lp_text = FiLM(dim) if settings.film else nn.Identity()
        # Built after the host (its own random draws come first, as in the original); only in base mode.
        if settings.base_mode and settings.head_type == "linear":
            self.linear_probe_proj: nn.Module = nn.Linear(dim, num_classes).to(host.dtype)
        else:
            self.linear_probe_proj = nn.Identity()
        head = {"film_lp_img": self.film_lp_img, "film_lp_text": self.film_lp_text,
                "linear_probe_proj": self.linear_probe_proj}
        # A plain dict, so the layout is not a second parent of these modules in this model's tree.
        self._saved = {checkpoint_name: _CheckpointLayout({**host.learnable_modules(), **head})}

    # ------------------------------------------------------------------ what is learned
    def learnable_modules(self) -> dict[str, nn.Module]:
        return dict(self._saved)

    def set_trainable(self) -> None:
        self.requires_grad_(False)
        self.host.set_trainable()
        for module in (self.film_lp_img, self.film_lp_text, self.linear_probe_proj):
            module.requires_grad_(True)

    def param_groups(self, optim_cfg: Any) -> list[dict]:
        return staged_param_groups(list(self.named_trainable_parameters()), optim_cfg,
                                   new_lr=optim_cfg.LR * optim_cfg.LR_EXP)

    def checkpoint_skip_patterns(self) -> tuple[str, ...]:
        host = tuple(f"{name}.{pattern}" for name in self.host.learnable_modules()
                     for pattern in self.host.checkpoint_skip_patterns())
        no_classifier = ("linear_probe_proj.*",) if isinstance(self.linear_probe_proj, nn.Identity) else ()
        return (*host, *ORIGINAL_FROZEN_KEYS, *no_classifier)

    # ------------------------------------------------------------------ the host's computation
    def encode_frozen_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.host.encode_frozen_images(images)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.host.encode_images(images)

    def encode_texts(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.host.encode_texts(image_features)

    def features(self, images: torch.Tensor, text: torch.Tensor | None = None) -> Features:
        return self.host.features(images, text)

    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        return self.host.image_prefix(images)

    def prepare_training(self) -> None:
        self.host.prepare_training()

    def text_activation(self, batch_size: int) -> TextActivation | None:
        return self.host.text_activation(batch_size)

    # ------------------------------------------------------------------ DePT
    def cat_logits(self, features: Features) -> torch.Tensor:
        """The CAT head's test logits [B, C] (raw: not normalised, not temperature-scaled for 'linear')."""
        image = self.film_lp_img(features.image)
        if self.settings.head_type == "similarity":
            return self.host.logits(Features(image, self.film_lp_text(features.text)))
        return self.linear_probe_proj(image)

    def fuse(self, itm: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        weight = self.settings.weight
        return (1 - weight) * itm + weight * cat

    def logits(self, features: Features) -> torch.Tensor:
        itm = self.host.logits(features)
        if not self.settings.base_mode:
            return itm
        cat = self.cat_logits(features)
        return self.fuse(itm, cat) if self.settings.test_time_fusion else cat

    def cat_training_logits(self, features: Features, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: the class text feature of each sample and the image features through one classifier,
        [2B, C] with labels [y; y] (a 'similarity' head scores the images only)."""
        image = self.film_lp_img(features.image)
        text = self.film_lp_text(features.text)
        if self.settings.head_type == "similarity":
            return self.host.logits(Features(image, text)), labels
        # [C, D] shared by the batch, or [B, C, D] per image (CoCoOp): sample i's row of its own class.
        rows = text[labels] if text.dim() == 2 else text[torch.arange(len(labels), device=labels.device), labels]
        return self.linear_probe_proj(torch.cat([rows, image])), torch.cat([labels, labels])

    def training_step(self, inputs: Any, labels: torch.Tensor) -> StepOutput:
        if not self.settings.base_mode:
            raise ConfigValueError(
                "DePT trains its classifier on base classes only (the original asserts it): set "
                "DATASET.SUBSAMPLE_CLASSES base, train on an ImageNet dataset with 'all', or set "
                "TRAINER.DEPT.BASE_MODE always (e.g. few-shot on all classes)."
            )
        features = self.features(inputs)
        itm = self.host.logits(features)
        host = self.host.loss(features, itm, labels)
        cat, cat_labels = self.cat_training_logits(features, labels)
        weight = self.settings.weight
        ce = (1 - weight) * host.ce + weight * F.cross_entropy(cat, cat_labels)
        image_cat = cat if self.settings.head_type == "similarity" else cat[len(labels):]
        return StepOutput(Loss(ce, dict(host.regularisers)), self.fuse(itm, image_cat).detach(), labels)


# ---------------------------------------------------------------------------------------- the trainer
def _original_keys(cfg, host: str, checkpoint_name: str) -> None:
    """The DePT repository's `train.py: extend_cfg` (one set for every host), plus TRAINER.DEPT (ours)."""
    cfg.OPTIM.LR_EXP = 6.5  # the head's LR = LR x LR_EXP
    cfg.OPTIM.STAGED_LR = True
    cfg.OPTIM.NEW_LAYERS = list(NAMES_TO_UPDATE[1:])
    cfg.OPTIM.LR = 0.0035
    cfg.OPTIM.BASE_LR_MULT = 1.0
    cfg.OPTIM.MAX_EPOCH = 10
    cfg.TRAIN.CHECKPOINT_FREQ = -1  # the last epoch only
    cfg.TRAINER.NAMES_TO_UPDATE = list(NAMES_TO_UPDATE)
    cfg.TRAINER.LINEAR_PROBE = CN()
    cfg.TRAINER.LINEAR_PROBE.TYPE = "linear"  # or 'similarity'
    cfg.TRAINER.LINEAR_PROBE.WEIGHT = 0.7  # λ
    cfg.TRAINER.LINEAR_PROBE.TEST_TIME_FUSION = True  # False: the CAT head alone in base mode
    cfg.TRAINER.FILM = CN()
    cfg.TRAINER.FILM.LINEAR_PROBE = True  # False: no channel-wise transforms
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16
    cfg.TRAINER.COOP.CSC = False
    cfg.TRAINER.COOP.CTX_INIT = ""
    cfg.TRAINER.COOP.PREC = "fp16"
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"
    cfg.TRAINER.COOP.ALPHA = 1.0  # KgCoOp's, unused
    cfg.TRAINER.COOP.W = 2.0  # KgCoOp's knowledge-guidance weight
    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = 4
    cfg.TRAINER.COCOOP.CTX_INIT = "a photo of a"
    cfg.TRAINER.COCOOP.PREC = "fp16"
    cfg.TRAINER.MAPLE = CN()
    cfg.TRAINER.MAPLE.N_CTX = 2
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"
    cfg.TRAINER.MAPLE.PREC = "fp16"
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9
    cfg.TRAINER.DEPT = CN()
    cfg.TRAINER.DEPT.HOST = host  # the registered trainer DePT is applied to
    cfg.TRAINER.DEPT.CHECKPOINT_NAME = checkpoint_name  # the original's checkpoint folder
    cfg.TRAINER.DEPT.BASE_MODE = "auto"  # 'auto': the original's rule; 'always': the CAT head on any classes


def _add_missing(dst: CN, src: CN) -> None:
    for key, value in src.items():
        if key not in dst:
            dst[key] = copy.deepcopy(value)
        elif isinstance(value, CN) and isinstance(dst[key], CN):
            _add_missing(dst[key], value)


@functools.lru_cache(maxsize=8)
def _host_keys(hosts: tuple[type, ...]) -> CN:
    """Every key the given hosts add to the defaults (the first host to add a key sets its default)."""
    union = get_cfg_default()
    for host in hosts:
        scratch = get_cfg_default()
        host.extend_cfg(scratch)
        _add_missing(union, scratch)
    return union


def _possible_hosts() -> tuple[type, ...]:
    return tuple(cls for cls in (TRAINER_REGISTRY.get(n) for n in TRAINER_REGISTRY.registered_names())
                 if isinstance(cls, type) and issubclass(cls, ClipMethod) and not issubclass(cls, DePT)
                 and cls.has_training and hasattr(cls, "extend_cfg"))


@functools.lru_cache(maxsize=None)
def _with_host(trainer: type, host: type) -> type:
    """The run's trainer class: DePT (or an alias) in front of the host's trainer class."""
    return type(f"{trainer.__name__}[{host.__name__}]", (trainer, host),
                {"precision_key": host.precision_key, "__module__": __name__})


@TRAINER_REGISTRY.register()
class DePT(ClipMethod):
    """DePT over the host named by TRAINER.DEPT.HOST (default CoOp)."""

    default_host = "CoOp"
    checkpoint_name = "PromptLearner"
    precision_key = "TRAINER.COOP.PREC"  # the default host's; the run uses its host's (see `precision`)
    recipe = "ExtrasLinearProbeCoOp/vit_b16_ep10_bs4_lr35"
    # With its default host, `DePT` runs exactly what this alias runs (the contract tests check it once).
    same_run_as = "ExtrasLinearProbeCoOp"
    # benchmarks/train_step.py trains on all classes of a synthetic dataset: the head must exist there.
    benchmark_opts = ("TRAINER.DEPT.BASE_MODE", "always")

    def __new__(cls, cfg, *args: Any, **kwargs: Any) -> "DePT":
        host = cls.host_class(cfg)
        return super().__new__(cls if issubclass(cls, host) else _with_host(cls, host))

    # ------------------------------------------------------------------ config
    @classmethod
    def extend_cfg(cls, cfg) -> None:
        """The original's keys and defaults, then the keys of every registered host it does not set (the
        host is chosen by config, so its keys must exist before the config files are read)."""
        _original_keys(cfg, cls.default_host, cls.checkpoint_name)
        _add_missing(cfg, _host_keys(_possible_hosts()))

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this trainer cannot run in this checkout (its default host is not registered), else None."""
        if cls.default_host in TRAINER_REGISTRY:
            return None
        return (f"{cls.__name__} applies DePT to the trainer {cls.default_host}, which is not registered in this "
                f"checkout: it runs once trainers/ registers a trainer named {cls.default_host}.")

    @classmethod
    def host_class(cls, cfg) -> type:
        """The host's trainer class, resolved through the registry when the run starts."""
        name = cfg.TRAINER.DEPT.HOST
        if name not in TRAINER_REGISTRY:
            reason = cls.unavailable_reason() if name == cls.default_host else None
            raise UserError(reason or (
                f"TRAINER.DEPT.HOST is '{name}', which is not a registered trainer; DePT needs a host method "
                f"such as {', '.join(h.__name__ for h in _possible_hosts())}."))
        host = TRAINER_REGISTRY.get(name)
        if issubclass(host, DePT) or not issubclass(host, ClipMethod) or not host.has_training:
            raise ConfigValueError(
                f"TRAINER.DEPT.HOST '{name}' is not a trainable method on the method base (trainers/base.py); "
                f"choose one of {', '.join(h.__name__ for h in _possible_hosts())}.")
        return host

    @classmethod
    def precision(cls, cfg) -> str:
        return cls.host_class(cfg).precision(cfg)

    @classmethod
    def check_cfg(cls, cfg) -> None:
        host = cls.host_class(cfg)
        host.check_cfg(cfg)
        alias_of = cls.default_host if cls.__name__.startswith("ExtrasLinearProbe") else None
        if alias_of and cfg.TRAINER.DEPT.HOST != alias_of:
            raise ConfigValueError(
                f"{cls.__name__} is DePT over {alias_of}, but TRAINER.DEPT.HOST is '{cfg.TRAINER.DEPT.HOST}'. "
                "Use --trainer DePT to choose another host.")
        lp = cfg.TRAINER.LINEAR_PROBE
        if lp.TYPE not in HEAD_TYPES:
            raise ConfigValueError(f"TRAINER.LINEAR_PROBE.TYPE must be one of {HEAD_TYPES}, got '{lp.TYPE}'")
        if not 0.0 <= float(lp.WEIGHT) <= 1.0:
            raise ConfigValueError(f"TRAINER.LINEAR_PROBE.WEIGHT (λ) must be in [0, 1], got {lp.WEIGHT}")
        if cfg.TRAINER.DEPT.BASE_MODE not in BASE_MODES:
            raise ConfigValueError(
                f"TRAINER.DEPT.BASE_MODE must be one of {BASE_MODES}, got '{cfg.TRAINER.DEPT.BASE_MODE}'")
        if sorted(cfg.TRAINER.NAMES_TO_UPDATE) != sorted(NAMES_TO_UPDATE):
            raise ConfigValueError(
                f"TRAINER.NAMES_TO_UPDATE is {list(cfg.TRAINER.NAMES_TO_UPDATE)}; here the host's learnable "
                f"modules and DePT's head are trained, which is the original's default {list(NAMES_TO_UPDATE)}. "
                "Remove the override.")

    @classmethod
    def adjust_cfg(cls, cfg) -> None:
        cls.host_class(cfg).adjust_cfg(cfg)

    @classmethod
    def backbone_preprocess(cls, cfg):
        return cls.host_class(cfg).backbone_preprocess(cfg)

    # ------------------------------------------------------------------ checkpoints
    def _load_state_dict_checked(self, name: str, state_dict, fpath: str) -> None:
        if self.cfg.DATASET.NAME in SUBSET_TARGETS and CLASSIFIER_KEYS[0] in state_dict:
            state_dict = self._classifier_for_target(dict(state_dict))
        super()._load_state_dict_checked(name, state_dict, fpath)

    def _classifier_for_target(self, state: dict) -> dict:
        """The original's slicing for ImageNet-A/-R: keep the rows of the classes (classnames.txt order)
        whose wnid folder exists in the target's image folder."""
        from datasets.imagenet import read_classnames

        dataset = self.dm.dataset
        wnids = list(read_classnames(os.path.join(dataset.dataset_dir, "classnames.txt")))
        if state[CLASSIFIER_KEYS[0]].shape[0] != len(wnids):
            return state  # not a classifier over classnames.txt: the shape check reports it
        folders = set(os.listdir(dataset.image_dir))
        keep = torch.tensor([wnid in folders for wnid in wnids])
        logger.info("Classifier sliced to the %d classes of %s (of %d)", int(keep.sum()), self.cfg.DATASET.NAME,
                    len(wnids))
        return {**state, **{key: state[key][keep] for key in CLASSIFIER_KEYS}}

    # ------------------------------------------------------------------ model
    def build_method(self, clip_model: nn.Module, classnames: list[str]) -> MethodModel:
        host = super().build_method(clip_model, classnames)  # the host trainer's model (next in the MRO)
        settings = DePTSettings.from_cfg(self.cfg)
        logger.info("DePT over %s: %s", self.cfg.TRAINER.DEPT.HOST,
                    f"CAT head on {len(classnames)} classes, λ = {settings.weight}" if settings.base_mode
                    else "new classes: the host's ITM head only")
        return DePTModel(host, len(classnames), settings, self.cfg.TRAINER.DEPT.CHECKPOINT_NAME)


# The original's trainer names, each with its host, precision key, main config and checkpoint folder.
@dataclass(frozen=True)
class Alias:
    name: str
    host: str
    precision_key: str
    recipe: str
    checkpoint_name: str = "PromptLearner"


ALIASES = (
    Alias("ExtrasLinearProbeCoOp", "CoOp", "TRAINER.COOP.PREC", "ExtrasLinearProbeCoOp/vit_b16_ep10_bs4_lr35"),
    Alias("ExtrasLinearProbeCoCoOp", "CoCoOp", "TRAINER.COCOOP.PREC",
          "ExtrasLinearProbeCoCoOp/vit_b16_c4_ep10_batch1_ctxv1"),
    Alias("ExtrasLinearProbeKgCoOp", "KgCoOp", "TRAINER.COOP.PREC",
          "ExtrasLinearProbeKgCoOp/vit_b16_ep10_ctxv1_bs4_lr35"),
    Alias("ExtrasLinearProbeMaPLe", "MaPLe", "TRAINER.MAPLE.PREC", "ExtrasLinearProbeMaPLe/vit_b16_c2_ep10_batch4_2ctx",
          "MultiModalPromptLearner"),
)

for _alias in ALIASES:
    TRAINER_REGISTRY.register(type(_alias.name, (DePT,), {
        "__doc__": f"The original's name for DePT over {_alias.host}.", "__module__": __name__,
        "default_host": _alias.host, "precision_key": _alias.precision_key, "recipe": _alias.recipe,
        "checkpoint_name": _alias.checkpoint_name, "same_run_as": None,
    }))
