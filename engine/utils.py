"""Small tools shared by the engine: files, JSON, seeding and RNG state, meters, logging, images."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from typing import IO, Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn

from engine.errors import MissingFileError, UserError

__all__ = [
    "mkdir_if_missing",
    "check_isfile",
    "read_json",
    "write_json",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_torch_save",
    "listdir_nohidden",
    "tolist_if_not",
    "count_num_param",
    "set_random_seed",
    "get_rng_state",
    "set_rng_state",
    "AverageMeter",
    "MetricMeter",
    "setup_logger",
    "FILE_ONLY",
    "collect_env_info",
    "read_image",
    "format_duration",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- files
def mkdir_if_missing(dirname: str) -> None:
    """Create `dirname` (and parents) unless it exists; safe when several processes race."""
    if not dirname:
        return
    try:
        os.makedirs(dirname, exist_ok=True)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise


def check_isfile(fpath: str) -> bool:
    """True if `fpath` is a file; warns (does not raise) otherwise, as Dassl does."""
    isfile = os.path.isfile(fpath)
    if not isfile:
        warnings.warn(f'No file found at "{fpath}"', stacklevel=2)
    return isfile


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path`; on success it atomically replaces `path`.

    The data goes to a temporary file in the same folder (same filesystem, so `os.replace` is an
    atomic rename), is flushed and fsynced, and only then renamed over `path`. If the block raises
    (or the process dies) `path` keeps its old content and the temporary file is removed (or, on
    a hard kill, left behind as a hidden ``.tmp`` file): readers never see a truncated file.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open() supports modes 'wb' and 'w', got {mode!r}.")
    folder = os.path.dirname(os.path.abspath(path))
    mkdir_if_missing(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.close(fd)
        # Reopened by name so that `f.name` is the temporary path (callers may inspect the file).
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_torch_save(obj: Any, path: str) -> None:
    """`torch.save(obj, path)` done atomically (see `atomic_open`)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def read_json(fpath: str) -> Any:
    """Load a JSON file."""
    with open(fpath, "r") as f:
        return json.load(f)


def write_json(obj: Any, fpath: str) -> None:
    """Write `obj` as JSON (indent 4, separators ``(",", ": ")``) atomically, creating the folder."""
    text = json.dumps(obj, indent=4, separators=(",", ": "))
    atomic_write_bytes(fpath, text.encode("utf-8"))


def listdir_nohidden(path: str, sort: bool = False) -> list[str]:
    """Entries of `path` not starting with "."; filesystem order unless `sort`."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def tolist_if_not(x: Any) -> list:
    """Wrap `x` in a list unless it already is one."""
    if not isinstance(x, list):
        x = [x]
    return x


def count_num_param(model: nn.Module | None = None, params: Iterable[torch.Tensor] | None = None) -> int:
    """Number of elements in `model`'s parameters, or in `params` (`model` wins if both are given)."""
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        total = 0
        for p in params:
            if isinstance(p, dict):  # a param group
                total += sum(q.numel() for q in p["params"])
            else:
                total += p.numel()
        return total
    raise ValueError("count_num_param() needs a model or an iterable of parameters, got neither.")


# ----------------------------------------------------------------------------- seeding
def set_random_seed(seed: int) -> None:
    """Seed Python's `random`, NumPy, torch and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def get_rng_state() -> dict:
    """Snapshot of every RNG the training loop draws from.

    Stored only as tensors, ints, strings, lists and tuples so that
    ``torch.load(..., weights_only=True)`` reads it back (NumPy's state is split into its parts;
    Python's state is a nested tuple of ints).
    """
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.uint32).astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore a snapshot made by `get_rng_state`."""
    py = state["python"]
    # After a JSON-like round trip tuples may come back as lists; random.setstate wants tuples.
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    keys = npst["keys"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state(
        (npst["bit_generator"], keys.astype(np.uint32), int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"]))
    )
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else torch.as_tensor(state["torch"]))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if len(cuda_states) != n:
            logger.warning(
                "RNG state holds %d CUDA device states but %d devices are visible; restoring the first %d.",
                len(cuda_states), n, min(n, len(cuda_states)),
            )
        for i, s in enumerate(cuda_states[:n]):
            torch.cuda.set_rng_state(s.cpu(), device=i)


# ----------------------------------------------------------------------------- meters
class AverageMeter:
    """Current value and running average (or an exponential moving average with `ema=True`)."""

    def __init__(self, ema: bool = False) -> None:
        self.ema = ema
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float | torch.Tensor, n: int = 1) -> None:
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        if self.ema:
            self.avg = self.avg * 0.9 + self.val * 0.1
        else:
            self.avg = self.sum / self.count


class MetricMeter:
    """A dict of `AverageMeter`s printed as ``name val (avg)`` entries."""

    def __init__(self, delimiter: str = " ") -> None:
        self.meters: dict[str, AverageMeter] = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, input_dict: dict | None) -> None:
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError(f"MetricMeter.update() expects a dict of name -> number, got {type(input_dict).__name__}")
        for k, v in input_dict.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(v)

    def __str__(self) -> str:
        return self.delimiter.join(f"{name} {meter.val:.4f} ({meter.avg:.4f})" for name, meter in self.meters.items())


# ----------------------------------------------------------------------------- logging
class _OwnedHandler:
    """Marker mixin: handlers `setup_logger` installed (so a second call can replace them)."""


class _OwnedStreamHandler(_OwnedHandler, logging.StreamHandler):
    pass


class _FlushingFileHandler(_OwnedHandler, logging.FileHandler):
    """A file handler that flushes after every record so `log.txt` is complete after a crash."""

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self.flush()


FILE_ONLY = {"file_only": True}  # `logger.info(..., extra=FILE_ONLY)`: to log.txt, not to the console


class _ConsoleFilter(logging.Filter):
    """Keeps records marked `file_only` (the full config, the environment) off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def setup_logger(output: str | None) -> str | None:
    """Send INFO+ log records to stdout and to a log file; return the file path.

    `output` ending in ``.txt``/``.log`` is the file itself, otherwise the file is
    ``output/log.txt``. An existing file is continued, not replaced: a marker line with the time
    separates the new invocation (a resumed run's log reads as one story). Records logged with
    ``extra=FILE_ONLY`` go to the file only. Calling it again replaces the handlers an earlier
    call installed. None: nothing is done.
    """
    if output is None:
        return None
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = os.path.join(output, "log.txt")
    mkdir_if_missing(os.path.dirname(os.path.abspath(fpath)))
    continued = os.path.isfile(fpath) and os.path.getsize(fpath) > 0

    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _OwnedHandler):
            root.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(message)s")
    console = _OwnedStreamHandler(sys.stdout)
    console.setFormatter(fmt)
    console.addFilter(_ConsoleFilter())
    file_handler = _FlushingFileHandler(fpath, mode="a", encoding="utf-8")
    file_handler.setFormatter(fmt)
    if continued:
        file_handler.stream.write(
            f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')}: a new invocation continues this log "
            f"(pid {os.getpid()}) =====\n"
        )
        file_handler.flush()
    root.addHandler(console)
    root.addHandler(file_handler)
    root.setLevel(logging.INFO)
    return fpath


def collect_env_info() -> str:
    """A short environment report for log.txt (versions, CUDA and GPUs).

    torch's own `collect_env` report shells out to pip, conda and nvidia-smi and takes seconds,
    which dominates short runs in a sweep; this reads the same essentials in milliseconds.
    """
    import platform

    import numpy
    import PIL
    import torchvision

    lines = [
        f"Python: {platform.python_version()} ({platform.platform()})",
        f"PyTorch: {torch.__version__} (CUDA build {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None})",
        f"torchvision: {torchvision.__version__}, numpy: {numpy.__version__}, Pillow: {PIL.__version__}",
        f"CPU threads: {torch.get_num_threads()}",
        f"CUDA available: {torch.cuda.is_available()}",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"GPU {i}: {props.name} ({props.total_memory / 2**30:.1f} GiB)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- images
class UnreadableImageError(UserError, OSError):
    """An image file of a dataset that cannot be decoded."""


def read_image(path: str):
    """Open an image file as an RGB `PIL.Image`; unreadable files raise an error naming `path`."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise MissingFileError(f"Image not found: {path}. Check DATASET.ROOT and the dataset's split file.")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() forces the full decode while the file is open
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnreadableImageError(f"Cannot read image {path}: {e}. The file may be corrupt or not an image; re-extract the dataset.") from e


def format_duration(seconds: float) -> str:
    """Whole seconds (truncated, as Dassl's ``Elapsed:`` line) as ``H:MM:SS``; hours may exceed 24."""
    total = max(int(seconds), 0)
    hours, rem = divmod(total, 3600)
    minutes, secs = divmod(rem, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
