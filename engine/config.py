"""The config tree (Dassl's `_C` defaults) and strict merging with helpful errors.

The tree is a yacs `CfgNode`, so yacs' merge semantics hold: string values are passed through
`ast.literal_eval` (the YAML string ``1e-5`` becomes a float, ``(224, 224)`` a tuple), the merged
value must have the default's type (tuple<->list and None are the only conversions), and every
key must already exist. What we add: an unknown key raises `ConfigKeyError` (a KeyError) naming
the key, where it came from and the closest valid keys; a type mismatch names the key and source.

Trainers add their own keys (``extend_cfg``) before any file is merged, as in Dassl.
"""
from __future__ import annotations

import copy
import difflib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Collection, Sequence

import yaml
from yacs.config import CfgNode as _YacsCfgNode
from yacs.config import _check_and_coerce_cfg_value_type

from engine.errors import ConfigValueError, MissingFileError, UserError

__all__ = [
    "CfgNode",
    "CN",
    "ConfigKeyError",
    "ConfigTypeError",
    "get_cfg_default",
    "merge_from_file",
    "merge_from_list",
    "cfg_to_yaml",
    "MergeReport",
    "added_keys",
    "flatten_keys",
]

logger = logging.getLogger(__name__)


class ConfigKeyError(UserError, KeyError):
    """A key that does not exist in the config tree was merged."""


class ConfigTypeError(UserError, ValueError):
    """A merged value does not have the type of the key's default."""


class CfgNode(_YacsCfgNode):
    """yacs `CfgNode` whose `merge_from_file`/`merge_from_list` give the clear errors of this module."""

    def merge_from_file(self, cfg_filename: str) -> None:
        merge_from_file(self, cfg_filename)

    def merge_from_list(self, cfg_list: Sequence[Any]) -> None:
        merge_from_list(self, cfg_list)


CN = CfgNode


def _build_defaults() -> CfgNode:
    """Dassl's default tree (without the sub-nodes of its own DA/DG/SSL trainers) plus our keys."""
    _C = CN()
    _C.VERSION = 1
    _C.OUTPUT_DIR = "./output"
    _C.RESUME = ""  # a directory; empty means OUTPUT_DIR
    _C.SEED = -1  # negative means no seeding
    _C.USE_CUDA = True
    _C.VERBOSE = True

    _C.INPUT = CN()
    _C.INPUT.SIZE = (224, 224)
    _C.INPUT.INTERPOLATION = "bilinear"
    _C.INPUT.TRANSFORMS = ()
    _C.INPUT.NO_TRANSFORM = False
    _C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
    _C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
    _C.INPUT.CROP_PADDING = 4
    _C.INPUT.RRCROP_SCALE = (0.08, 1.0)
    _C.INPUT.CUTOUT_N = 1
    _C.INPUT.CUTOUT_LEN = 16
    _C.INPUT.GN_MEAN = 0.0
    _C.INPUT.GN_STD = 0.15
    _C.INPUT.RANDAUGMENT_N = 2
    _C.INPUT.RANDAUGMENT_M = 10
    _C.INPUT.COLORJITTER_B = 0.4
    _C.INPUT.COLORJITTER_C = 0.4
    _C.INPUT.COLORJITTER_S = 0.4
    _C.INPUT.COLORJITTER_H = 0.1
    _C.INPUT.RGS_P = 0.2
    _C.INPUT.GB_P = 0.5
    _C.INPUT.GB_K = 21

    _C.DATASET = CN()
    _C.DATASET.ROOT = ""
    _C.DATASET.NAME = ""
    _C.DATASET.SOURCE_DOMAINS = ()
    _C.DATASET.TARGET_DOMAINS = ()
    _C.DATASET.NUM_LABELED = -1
    _C.DATASET.NUM_SHOTS = -1
    _C.DATASET.VAL_PERCENT = 0.1
    _C.DATASET.STL10_FOLD = -1
    _C.DATASET.CIFAR_C_TYPE = ""
    _C.DATASET.CIFAR_C_LEVEL = 1
    _C.DATASET.ALL_AS_UNLABELED = False
    # Not in Dassl, but every CoOp dataset reads it (spec: recommended deviation).
    _C.DATASET.SUBSAMPLE_CLASSES = "all"
    # Ours: where few-shot split caches are written ("" = <dataset_dir>/split_fewshot).
    _C.DATASET.FEWSHOT_CACHE_DIR = ""
    # Ours: VTAB-1K split protocol, "train800val200" (train on 1000, test on test.txt) or
    # "train800" (hyper-parameter search: train on train800, val = test = val200).
    _C.DATASET.VTAB = CN()
    _C.DATASET.VTAB.PROTOCOL = "train800val200"
    # Ours: the generic `Custom` dataset (a user's image-folder tree or CSV), see DATASETS.md#your-own-data.
    _C.DATASET.CUSTOM = CN()
    _C.DATASET.CUSTOM.DIR = ""  # folder under DATASET.ROOT (or absolute) holding <class>/<image> folders
    _C.DATASET.CUSTOM.CSV = ""  # CSV file (path,label[,classname][,split]); relative to DATASET.ROOT
    _C.DATASET.CUSTOM.SPLIT_FILE = "split_custom.json"  # CoOp-format split, read or generated, in the dataset folder
    _C.DATASET.CUSTOM.P_TRAIN = 0.5  # generated split: train fraction per class
    _C.DATASET.CUSTOM.P_VAL = 0.2  # generated split: val fraction per class (the rest is test)

    _C.DATALOADER = CN()
    _C.DATALOADER.NUM_WORKERS = 4
    _C.DATALOADER.K_TRANSFORMS = 1
    _C.DATALOADER.RETURN_IMG0 = False
    _C.DATALOADER.TRAIN_X = CN()
    _C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
    _C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
    _C.DATALOADER.TRAIN_X.N_DOMAIN = 0
    _C.DATALOADER.TRAIN_X.N_INS = 16
    _C.DATALOADER.TRAIN_U = CN()
    _C.DATALOADER.TRAIN_U.SAME_AS_X = True
    _C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
    _C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
    _C.DATALOADER.TRAIN_U.N_DOMAIN = 0
    _C.DATALOADER.TRAIN_U.N_INS = 16
    _C.DATALOADER.TEST = CN()
    _C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
    _C.DATALOADER.TEST.BATCH_SIZE = 32

    _C.MODEL = CN()
    _C.MODEL.INIT_WEIGHTS = ""
    _C.MODEL.BACKBONE = CN()
    _C.MODEL.BACKBONE.NAME = ""  # the CLIP model name for CoOp-family trainers, e.g. "ViT-B/16"
    _C.MODEL.BACKBONE.PRETRAINED = True
    _C.MODEL.HEAD = CN()
    _C.MODEL.HEAD.NAME = ""
    _C.MODEL.HEAD.HIDDEN_LAYERS = ()
    _C.MODEL.HEAD.ACTIVATION = "relu"
    _C.MODEL.HEAD.BN = True
    _C.MODEL.HEAD.DROPOUT = 0.0

    _C.OPTIM = CN()
    _C.OPTIM.NAME = "adam"
    _C.OPTIM.LR = 0.0003
    _C.OPTIM.WEIGHT_DECAY = 5e-4
    _C.OPTIM.MOMENTUM = 0.9
    _C.OPTIM.SGD_DAMPNING = 0  # sic: the misspelling is the public key name
    _C.OPTIM.SGD_NESTEROV = False
    _C.OPTIM.RMSPROP_ALPHA = 0.99
    _C.OPTIM.ADAM_BETA1 = 0.9
    _C.OPTIM.ADAM_BETA2 = 0.999
    _C.OPTIM.STAGED_LR = False
    _C.OPTIM.NEW_LAYERS = ()
    _C.OPTIM.BASE_LR_MULT = 0.1
    _C.OPTIM.LR_SCHEDULER = "single_step"
    _C.OPTIM.STEPSIZE = (-1,)  # -1 or 0: MAX_EPOCH (single_step)
    _C.OPTIM.GAMMA = 0.1
    _C.OPTIM.MAX_EPOCH = 10
    _C.OPTIM.WARMUP_EPOCH = -1  # > 0 turns warm-up on
    _C.OPTIM.WARMUP_TYPE = "linear"  # or "constant"
    _C.OPTIM.WARMUP_CONS_LR = 1e-5
    _C.OPTIM.WARMUP_MIN_LR = 1e-5
    _C.OPTIM.WARMUP_RECOUNT = True
    # Not Dassl's: "epoch" steps the schedule after each epoch (Dassl); "iteration" after every
    # batch, with MAX_EPOCH, STEPSIZE and WARMUP_EPOCH counted in iterations (DyT's recipe).
    _C.OPTIM.LR_STEP_UNIT = "epoch"
    # Not Dassl's: apply the update during backward, bucket by bucket, and free those gradients at
    # once (engine.optim.UpdateInBackward; exact). "auto": when the trained parameters' gradients
    # take at least 64 MB (a trained tower), where holding them all costs memory; "always"; "never".
    _C.OPTIM.UPDATE_IN_BACKWARD = "auto"

    _C.TRAIN = CN()
    _C.TRAIN.CHECKPOINT_FREQ = 0  # <= 0: save only the last epoch
    _C.TRAIN.PRINT_FREQ = 10  # in batches
    # Not Dassl's: the memory (MB) the run may use; the preflight stops a run whose first steps peak
    # above it. 0: what the device offers (free GPU memory, or the CPU's MemAvailable).
    _C.TRAIN.MEMORY_LIMIT_MB = 0
    _C.TRAIN.COUNT_ITER = "train_x"
    # Ours: opt-in fast mode (README "Fast mode"). Training steps and evaluation run under autocast,
    # bf16 on CPU and fp16 on CUDA (with a GradScaler), the weights kept in fp32. Not exact: logits
    # differ from the original's by bf16/fp16 rounding. Needs the method's precision key fp32 or amp.
    _C.TRAIN.FAST_MODE = False
    # Ours, CLIP methods: the activation memory (MB) one text-tower call may use. A step's class prompts
    # beyond it go through the tower in chunks, each recomputed in the backward pass (activation
    # checkpointing): exact, less memory, one more text forward per chunk. README "Text chunks".
    _C.TRAIN.TEXT_CHUNK_MB = 8192

    _C.TEST = CN()
    _C.TEST.EVALUATOR = "Classification"
    _C.TEST.PER_CLASS_RESULT = False
    _C.TEST.COMPUTE_CMAT = False
    _C.TEST.NO_TEST = False
    _C.TEST.SPLIT = "test"
    _C.TEST.FINAL_MODEL = "last_step"  # or "best_val"
    # Ours: also write predictions.npz (logits, labels, image paths) after the final test.
    _C.TEST.SAVE_PREDICTIONS = False

    # Ours: the cache of frozen image features (README "Frozen-feature cache"). Used only by methods
    # whose image encoder is frozen and prompt-free (MethodModel.frozen_image_features).
    _C.FEATURE_CACHE = CN()
    _C.FEATURE_CACHE.ENABLED = True  # test-time features (and training ones under a deterministic transform)
    _C.FEATURE_CACHE.DIR = ""  # "": $CLIP_FEATURE_CACHE_DIR, else ~/.cache/clip_features (shared by runs/seeds)
    # K > 0: train on K cached augmented views per image (one drawn per step) instead of a fresh
    # augmentation each step. Off by default: it changes the training distribution.
    _C.FEATURE_CACHE.TRAIN_VIEWS = 0

    _C.TRAINER = CN()
    _C.TRAINER.NAME = ""
    return _C


_DEFAULTS = _build_defaults()


def get_cfg_default() -> CfgNode:
    """A fresh, mutable copy of the default config tree."""
    return _DEFAULTS.clone()


def flatten_keys(cfg: _YacsCfgNode, prefix: str = "") -> list[str]:
    """Every dotted leaf key of `cfg` (nodes themselves are included as well)."""
    keys: list[str] = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, _YacsCfgNode):
            keys.extend(flatten_keys(v, full + "."))
    return keys


def _suggest(full_key: str, valid: Sequence[str]) -> list[str]:
    """Closest valid dotted keys; falls back to comparing the last component only."""
    # An ancestor node of the key ("OPTIM" for "OPTIM.LRR") is never a useful suggestion.
    valid = [k for k in valid if not full_key.startswith(k + ".")]
    matches = difflib.get_close_matches(full_key, valid, n=3, cutoff=0.6)
    if not matches:
        leaf = full_key.rsplit(".", 1)[-1].upper()
        by_leaf: dict[str, list[str]] = {}
        for k in valid:
            by_leaf.setdefault(k.rsplit(".", 1)[-1], []).append(k)
        for m in difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.75):
            matches.extend(by_leaf[m])
        matches = matches[:3]
    return matches


def _unknown_key_error(full_keys: Sequence[str], source: str, cfg: _YacsCfgNode) -> ConfigKeyError:
    valid = flatten_keys(cfg)
    lines = []
    for key in full_keys:
        sugg = _suggest(key, valid)
        hint = f" Did you mean: {', '.join(sugg)}?" if sugg else ""
        lines.append(f"Unknown config key '{key}' (from {source}).{hint}")
    lines.append(
        "Keys must exist in the defaults (engine/config.py) or be added by the trainer's extend_cfg "
        "before merging; check the spelling and that --trainer names the right trainer."
    )
    return ConfigKeyError("\n".join(lines))


def _find_unknown(new: dict, old: _YacsCfgNode, prefix: str = "") -> list[str]:
    unknown = []
    for k, v in new.items():
        full = f"{prefix}{k}"
        if k not in old:
            if not old.is_new_allowed():
                unknown.append(full)
        elif isinstance(v, dict) and isinstance(old[k], _YacsCfgNode):
            unknown.extend(_find_unknown(v, old[k], full + "."))
    return unknown


def _type_error(err: Exception, source: str) -> ConfigTypeError:
    return ConfigTypeError(
        f"{err} (from {source}). Write the value with the default's type "
        "(e.g. 1.0 instead of 1 for a float key, True/False for a bool)."
    )


def _coerce(value: Any, original: Any, full_key: str, source: str) -> Any:
    """yacs' value decoding (literal_eval of strings) and type check, with our error message."""
    if isinstance(value, dict):
        raise ConfigTypeError(
            f"Config key {full_key} (from {source}) is a value, not a group of keys; got a mapping {value!r}."
        )
    value = _YacsCfgNode._decode_cfg_value(copy.deepcopy(value))
    try:
        return _check_and_coerce_cfg_value_type(value, original, full_key.rsplit(".", 1)[-1], full_key)
    except ValueError as e:
        raise _type_error(e, source) from e


def _plan_merge(node: _YacsCfgNode, new: dict, prefix: str, source: str, plan: list) -> None:
    """Check `new` against `node` and append the (node, key, value) assignments to `plan`.

    Nodes are matched with isinstance, so trees mixing our `CfgNode` with yacs' own (a ported
    ``extend_cfg`` builds its nodes with ``yacs.config.CfgNode``) merge fine.
    """
    for k, v in new.items():
        full = f"{prefix}{k}"
        if k in node:
            old = node[k]
            if isinstance(old, _YacsCfgNode):
                if not isinstance(v, dict):
                    raise ConfigTypeError(
                        f"Config key {full} (from {source}) is a group of keys; got the value {v!r}."
                    )
                _plan_merge(old, v, full + ".", source, plan)
            else:
                plan.append((node, k, _coerce(v, old, full, source)))
        elif node.is_new_allowed():
            value = type(node)(copy.deepcopy(v)) if isinstance(v, dict) else _YacsCfgNode._decode_cfg_value(v)
            plan.append((node, k, value))
        else:  # callers report unknown keys before planning; keep yacs' error as a safety net
            raise _unknown_key_error([full], source, node)


def _apply(cfg: _YacsCfgNode, plan: list) -> None:
    if cfg.is_frozen():
        raise AttributeError("The config is frozen; call cfg.defrost() before merging into it.")
    for node, key, value in plan:
        node[key] = value


@dataclass
class MergeReport:
    """What a merge did: the dotted keys it set, and those it skipped because `ignored` named them."""

    set_keys: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _is_ignored(key: str, ignored: Collection[str]) -> bool:
    """`key` or one of its parent nodes is in `ignored`."""
    parts = key.split(".")
    return any(".".join(parts[: i + 1]) in ignored for i in range(len(parts)))


def _prune(tree: dict, ignored: Collection[str], prefix: str, report: MergeReport) -> dict:
    out = {}
    for k, v in tree.items():
        full = f"{prefix}{k}"
        if _is_ignored(full, ignored):
            report.ignored.append(full)
        elif isinstance(v, dict):
            out[k] = _prune(v, ignored, full + ".", report)
        else:
            out[k] = v
            report.set_keys.append(full)
    return out


def merge_from_file(cfg: _YacsCfgNode, path: str, ignored: Collection[str] = ()) -> MergeReport:
    """Merge the YAML file `path` into `cfg` with yacs semantics and clear errors.

    Nothing is merged unless every key exists and every value has the right type. Keys (or whole
    nodes) named in `ignored` are skipped and reported instead.
    """
    if not path or not os.path.isfile(path):
        raise MissingFileError(f"Config file not found: {path!r}. Check the --config-file / --dataset-config-file path.")
    with open(path, "r") as f:
        try:
            loaded = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigValueError(f"Config file {path} is not valid YAML: {e}") from e
    report = MergeReport()
    if loaded is None:  # empty file: nothing to merge
        return report
    if not isinstance(loaded, dict):
        raise ConfigValueError(f"Config file {path} must hold a mapping of keys to values, got {type(loaded).__name__}.")
    loaded = _prune(loaded, ignored, "", report)
    source = f"file {path}"
    unknown = _find_unknown(loaded, cfg)
    if unknown:
        raise _unknown_key_error(unknown, source, cfg)
    plan: list = []
    _plan_merge(cfg, loaded, "", source, plan)
    _apply(cfg, plan)
    return report


def merge_from_list(cfg: _YacsCfgNode, opts: Sequence[Any] | None, ignored: Collection[str] = ()) -> MergeReport:
    """Merge a flat ``[KEY, VALUE, KEY, VALUE, ...]`` list (command-line ``opts``) into `cfg`.

    Nothing is merged unless every key exists and every value has the right type. Keys named in
    `ignored` (or under a node named there) are skipped and reported instead.
    """
    report = MergeReport()
    if not opts:
        return report
    opts = list(opts)
    if len(opts) % 2 != 0:
        raise ConfigValueError(
            f"Config overrides must come in KEY VALUE pairs, got an odd number ({len(opts)}) of items: {opts}. "
            "Check for a missing value or a stray word after the flags."
        )
    source = "command line"
    unknown, targets = [], []
    for key, value in zip(opts[0::2], opts[1::2]):
        if not isinstance(key, str):
            raise ConfigValueError(f"Config override key must be a dotted string like OPTIM.LR, got {key!r}.")
        if _is_ignored(key, ignored):
            report.ignored.append(key)
            continue
        node: Any = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[part] if isinstance(node, _YacsCfgNode) and part in node else None
        leaf = parts[-1]
        if not isinstance(node, _YacsCfgNode) or (leaf not in node and not node.is_new_allowed()):
            unknown.append(key)
        else:
            targets.append((node, leaf, key, value))
    if unknown:
        raise _unknown_key_error(unknown, source, cfg)
    plan = []
    for node, leaf, key, value in targets:
        if leaf in node:
            if isinstance(node[leaf], _YacsCfgNode):
                raise ConfigTypeError(f"Config key {key} (from {source}) is a group of keys; set one of its entries instead.")
            plan.append((node, leaf, _coerce(value, node[leaf], key, source)))
        else:
            plan.append((node, leaf, _YacsCfgNode._decode_cfg_value(value)))
        report.set_keys.append(key)
    _apply(cfg, plan)
    return report


def added_keys(cfg: _YacsCfgNode, reference: _YacsCfgNode) -> set[str]:
    """Dotted keys (nodes and leaves) of `cfg` that `reference` does not have."""
    return set(flatten_keys(cfg)) - set(flatten_keys(reference))


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def cfg_to_yaml(cfg: _YacsCfgNode) -> str:
    """The full resolved config as YAML; merging it into the defaults reproduces `cfg`."""
    return yaml.safe_dump(_to_plain(cfg), sort_keys=False, default_flow_style=False)
