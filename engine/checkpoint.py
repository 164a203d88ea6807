"""Checkpoint files (Dassl layout) written atomically and read with ``weights_only=True``.

Layout in a model folder (e.g. ``OUTPUT_DIR/prompt_learner/``)::

    model.pth.tar-<N>      N = number of finished epochs
    model-best.pth.tar     best_val mode
    checkpoint             text: basename of the most recently saved file + "\\n"

Files written by the original Dassl/CoOp code pickle the warm-up scheduler's successor (a
torch LR scheduler holding a copy of the optimizer). Those load through a small, explicit
allow-list of torch classes; nothing else is ever unpickled, and ``weights_only=False`` is never used.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import shutil
import warnings
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn

from engine.errors import ConfigValueError, MissingFileError, UserError
from engine.layout import BEST_CHECKPOINT_NAME, POINTER_NAME, checkpoint_name
from engine.utils import atomic_open, atomic_write_bytes, mkdir_if_missing

__all__ = [
    "save_checkpoint",
    "write_loadable",
    "load_checkpoint",
    "resume_from_checkpoint",
    "load_pretrained_weights",
    "LEGACY_SAFE_GLOBALS",
    "UnsafeCheckpointError",
    "CorruptCheckpointError",
]

logger = logging.getLogger(__name__)


class UnsafeCheckpointError(UserError, pickle.UnpicklingError):
    """A checkpoint needs globals outside the allow-list; it was not loaded."""


class CorruptCheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be read at all (truncated, empty, not a torch file)."""


def _legacy_defaultdict(default_factory: Any = None, *args: Any) -> dict:
    """Stand-in for ``collections.defaultdict`` while reading legacy checkpoints.

    torch's safe unpickler only fills plain dicts, and the pickled optimizer's ``state`` is a
    ``defaultdict(dict)``. A plain dict holds the same items; the factory is never called.
    """
    return {}


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


_LEGACY_CLASSES = [
    torch.optim.lr_scheduler.StepLR,
    torch.optim.lr_scheduler.MultiStepLR,
    torch.optim.lr_scheduler.CosineAnnealingLR,
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.RMSprop,
    torch.optim.RAdam,
    dict,  # the default_factory of the optimizer's defaultdict state
]
# What legacy Dassl/CoOp checkpoints need beyond plain tensors and containers: the scheduler and
# optimizer classes (pickled inside the warm-up scheduler's "successor") and the optimizer's
# defaultdict state. Found with torch.serialization.get_unsafe_globals_in_checkpoint on real
# CoOp, CoCoOp, KgCoOp, TaskRes and CLIP-Adapter checkpoints.
LEGACY_SAFE_GLOBALS: dict[str, Any] = {_qualname(c): c for c in _LEGACY_CLASSES}
LEGACY_SAFE_GLOBALS["builtins.dict"] = dict
LEGACY_SAFE_GLOBALS["collections.defaultdict"] = _legacy_defaultdict


def _safe_globals_list() -> list:
    out: list = []
    for name, obj in LEGACY_SAFE_GLOBALS.items():
        out.append(obj if name == _qualname(obj) else (obj, name))
    return out


def _unsafe_globals(source: Any) -> list[str] | None:
    """Globals a checkpoint needs beyond torch's defaults, or None if that cannot be determined."""
    get = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if get is None:
        return None
    try:
        if isinstance(source, (bytes, bytearray)):
            return list(get(io.BytesIO(source)))
        return list(get(source))
    except Exception:  # e.g. the pre-1.6 (non-zip) format is not supported by the scanner
        return None


def _strip_module_prefix(state_dict: Any) -> Any:
    if not isinstance(state_dict, dict):
        return state_dict
    out = OrderedDict()
    for k, v in state_dict.items():
        out[k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k] = v
    return out


def save_checkpoint(
    state: dict,
    save_dir: str,
    is_best: bool = False,
    remove_module_from_keys: bool = True,
    model_name: str = "",
) -> str:
    """Save `state` to ``save_dir/(model_name or model.pth.tar-<epoch>)`` atomically; return its path.

    Also rewrites the ``checkpoint`` pointer file and, with `is_best`, copies the file to
    ``model-best.pth.tar``. `state` must hold only data that ``torch.load(weights_only=True)``
    can read (tensors, numbers, strings, containers); anything else is refused before writing.
    """
    mkdir_if_missing(save_dir)
    state = dict(state)
    if remove_module_from_keys and "state_dict" in state:
        # DataParallel prefixes every key with "module."; store the bare module's names.
        state["state_dict"] = _strip_module_prefix(state["state_dict"])

    if model_name:
        fname = model_name
    else:
        if "epoch" not in state:
            raise KeyError("save_checkpoint() needs state['epoch'] to name the file (or pass model_name=...).")
        fname = checkpoint_name(state["epoch"])
    fpath = os.path.join(save_dir, fname)

    write_loadable(state, fpath)
    logger.info(f"Checkpoint saved to {fpath}")

    # The pointer names the file just written (also when it is model-best.pth.tar).
    atomic_write_bytes(os.path.join(save_dir, POINTER_NAME), (os.path.basename(fpath) + "\n").encode("utf-8"))

    if is_best:
        best_fpath = os.path.join(save_dir, BEST_CHECKPOINT_NAME)
        if os.path.abspath(best_fpath) != os.path.abspath(fpath):
            with open(fpath, "rb") as src, atomic_open(best_fpath, "wb") as dst:
                shutil.copyfileobj(src, dst, 16 * 1024 * 1024)
        logger.info(f'Best checkpoint saved to "{best_fpath}"')
    return fpath


def write_loadable(state: dict, fpath: str) -> None:
    """`torch.save(state)` to `fpath` atomically, refusing (and leaving any previous file untouched)
    if the result could not be read back with ``torch.load(weights_only=True)``."""
    with atomic_open(fpath, "wb") as f:
        torch.save(state, f)
        f.flush()
        unsafe = _unsafe_globals(f.name)
        if unsafe:
            raise TypeError(
                f"Refusing to write {fpath}: the state contains objects that torch.load(weights_only=True) "
                f"cannot read back ({unsafe}). Store plain data instead (state_dict() of optimizers and "
                "schedulers, Python floats instead of NumPy scalars)."
            )


def _checkpoint_like_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    names = []
    for n in sorted(os.listdir(folder)):
        if n.startswith(".") or not os.path.isfile(os.path.join(folder, n)):
            continue
        if n.startswith("model") or n == "checkpoint" or n.endswith((".pth", ".pt", ".tar", ".pth.tar", ".bin")):
            names.append(n)
    return names


def _torch_load(fpath: str, **kwargs: Any) -> Any:
    try:
        return torch.load(fpath, map_location="cpu", weights_only=True, **kwargs)
    except UnicodeDecodeError:
        # Files pickled by Python 2.
        return torch.load(fpath, map_location="cpu", weights_only=True, encoding="latin1", **kwargs)


def load_checkpoint(fpath: str | None) -> dict:
    """Load a checkpoint on the CPU with ``weights_only=True``.

    Legacy Dassl/CoOp checkpoints are retried with the minimal allow-list `LEGACY_SAFE_GLOBALS`;
    a file needing any other global raises `UnsafeCheckpointError` naming those globals.
    """
    if fpath is None:
        raise ConfigValueError("load_checkpoint() got fpath=None; pass the path of a checkpoint file.")
    if not os.path.exists(fpath):
        folder = os.path.dirname(os.path.abspath(fpath))
        present = _checkpoint_like_files(folder)
        listing = f"Checkpoint files in {folder}: {present}." if present else f"No checkpoint files in {folder}."
        raise MissingFileError(f'Checkpoint file not found at "{fpath}". {listing}')

    try:
        return _torch_load(fpath)
    except (RuntimeError, EOFError, OSError) as error:  # e.g. "PytorchStreamReader failed reading zip archive"
        raise CorruptCheckpointError(
            f"Cannot read checkpoint {fpath}: {error}. The file is truncated or corrupt (an interrupted copy?), "
            "or not a PyTorch checkpoint; copy it again or point at another file."
        ) from error
    except pickle.UnpicklingError as first_error:
        unsafe = _unsafe_globals(fpath)
        if unsafe is None:
            raise UnsafeCheckpointError(
                f"Cannot load {fpath} with weights_only=True: {first_error} It is corrupt, not a PyTorch checkpoint, "
                "or a raw pickle of objects the safe loader never runs; use a torch.save'd file of tensors."
            ) from first_error
        offending = sorted(g for g in unsafe if g not in LEGACY_SAFE_GLOBALS)
        if offending or not unsafe:
            raise UnsafeCheckpointError(
                f"Refusing to load {fpath}: it needs globals outside the safe allow-list: "
                f"{offending or '(unknown)'}. Only tensors, plain containers and the torch optimizer/"
                "scheduler classes of legacy Dassl checkpoints are accepted. If you trust the file, "
                "re-save its tensors (e.g. {'state_dict': ...}) in a trusted environment."
            ) from first_error
        if not hasattr(torch.serialization, "safe_globals"):
            raise UnsafeCheckpointError(
                f"{fpath} is a legacy Dassl checkpoint (needs {unsafe}); reading it safely needs torch >= 2.6."
            ) from first_error
        with torch.serialization.safe_globals(_safe_globals_list()):
            checkpoint = _torch_load(fpath)
        logger.info(f"Loaded legacy (Dassl-format) checkpoint {fpath} using the allow-list {sorted(unsafe)}")
        return checkpoint


def _read_pointer(fdir: str) -> str:
    pointer = os.path.join(fdir, POINTER_NAME)
    if not os.path.isfile(pointer):
        raise MissingFileError(
            f"No 'checkpoint' pointer file in {fdir} (files: {_checkpoint_like_files(fdir)}). "
            "It is written by save_checkpoint(); point RESUME/OUTPUT_DIR at the run's output folder."
        )
    with open(pointer, "r") as f:
        fname = f.readline().strip()
    if not fname:
        raise CorruptCheckpointError(f"The pointer file {pointer} is empty; delete it or save a checkpoint again.")
    return os.path.join(fdir, fname)


def resume_from_checkpoint(
    fdir: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
) -> int:
    """Restore model (strictly), optimizer and scheduler from the file named in ``fdir/checkpoint``.

    Returns the saved ``epoch`` (the number of finished epochs), i.e. the next start epoch.
    """
    fpath = _read_pointer(fdir)
    logger.info(f'Loading checkpoint from "{fpath}"')
    checkpoint = load_checkpoint(fpath)
    model.load_state_dict(checkpoint["state_dict"])
    logger.info("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        logger.info("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        logger.info("Loaded scheduler")
    start_epoch = int(checkpoint["epoch"])
    logger.info(f"Previous epoch: {start_epoch}")
    return start_epoch


def load_pretrained_weights(model: nn.Module, weight_path: str) -> list[str]:
    """Load the tensors of `weight_path` whose names and shapes match `model`; return their names.

    Accepts a checkpoint dict (its ``"state_dict"``) or a bare state dict; a ``module.`` prefix is
    stripped. Keys missing from the model or with another shape are skipped and listed.
    """
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint["state_dict"] if isinstance(checkpoint, dict) and "state_dict" in checkpoint else checkpoint
    if not isinstance(state_dict, dict):
        raise TypeError(f"{weight_path} holds a {type(state_dict).__name__}, expected a state dict of tensors.")
    model_dict = model.state_dict()
    new_state_dict = OrderedDict()
    matched, discarded = [], []
    for k, v in _strip_module_prefix(state_dict).items():
        if k in model_dict and isinstance(v, torch.Tensor) and model_dict[k].size() == v.size():
            new_state_dict[k] = v
            matched.append(k)
        else:
            discarded.append(k)
    model_dict.update(new_state_dict)
    model.load_state_dict(model_dict)

    if not matched:
        warnings.warn(
            f'The pretrained weights "{weight_path}" cannot be loaded: no key matched the model by name and '
            "shape. Check the key names manually.",
            stacklevel=2,
        )
    else:
        logger.info(f'Successfully loaded pretrained weights from "{weight_path}"')
        if discarded:
            logger.info(f"** The following layers are discarded due to unmatched keys or layer size: {discarded}")
    return matched
