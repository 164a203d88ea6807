"""Find, download, verify and read CLIP checkpoints; build ``(model, preprocess)``.

A checkpoint is named either by a released model name ("ViT-B/16", downloaded
once into the cache folder and checked by SHA-256) or by a file path. Files may
be OpenAI's TorchScript archives, plain state dicts, or training checkpoints
``{"state_dict": ...}`` (keys optionally prefixed with ``module.``) as open_clip
and DDP save them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor
from tqdm import tqdm

from .model import CLIP, EXTRA_KEYS, build_model, infer_config
from .preprocess import image_transform, openai_preprocess_cfg

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://openaipublic.azureedge.net/clip/models"

# name -> (file name, SHA-256). The digest is also the second-to-last URL component.
MODEL_FILES: "OrderedDict[str, Tuple[str, str]]" = OrderedDict(
    [
        ("RN50", ("RN50.pt", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762")),
        ("RN101", ("RN101.pt", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599")),
        ("RN50x4", ("RN50x4.pt", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd")),
        ("RN50x16", ("RN50x16.pt", "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa")),
        ("RN50x64", ("RN50x64.pt", "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c")),
        ("ViT-B/32", ("ViT-B-32.pt", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af")),
        ("ViT-B/16", ("ViT-B-16.pt", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f")),
        ("ViT-L/14", ("ViT-L-14.pt", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836")),
        ("ViT-L/14@336px", ("ViT-L-14-336px.pt", "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02")),
    ]
)

# Input resolution of each released model (OpenAI's model card; the geometry of its checkpoint),
# so its preprocessing is known without downloading it.
MODEL_RESOLUTIONS: Dict[str, int] = {
    "RN50": 224,
    "RN101": 224,
    "RN50x4": 288,
    "RN50x16": 384,
    "RN50x64": 448,
    "ViT-B/32": 224,
    "ViT-B/16": 224,
    "ViT-L/14": 224,
    "ViT-L/14@336px": 336,
}

# Checkpoint files known by a short name, added by `register_local_model` (e.g. `import demo`
# registers "demo"); name -> path, and the fix to print when that file is missing.
LOCAL_MODELS: Dict[str, str] = {}
_LOCAL_MODEL_HINTS: Dict[str, str] = {}

_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A CLIP checkpoint that cannot be found, downloaded or read; the message says how to fix it.

    Command-line tools report it as a user error (one message, no traceback)."""


def register_local_model(name: str, path: str, *, missing_hint: str = "") -> None:
    """Let `name` stand for the checkpoint file `path` wherever a model name is accepted.

    `missing_hint` is added to the error raised when the file is missing (how to restore it).
    Registering a name again with the same path is a no-op; a released model name, or a name
    already registered for another file, raises ValueError.
    """
    if name in MODEL_FILES:
        raise ValueError(f"Cannot register local model {name!r}: it is the name of a released CLIP; choose another name.")
    path = os.path.abspath(os.path.expanduser(str(path)))
    if LOCAL_MODELS.get(name, path) != path:
        raise ValueError(
            f"Local model {name!r} is already registered as {LOCAL_MODELS[name]}; cannot register it as {path}."
        )
    LOCAL_MODELS[name] = path
    _LOCAL_MODEL_HINTS[name] = missing_hint


def available_models() -> List[str]:
    """Names of the released OpenAI CLIP models, in OpenAI's order."""
    return list(MODEL_FILES)


def default_cache_dir() -> str:
    """``$CLIP_CACHE_DIR`` if set, else ``~/.cache/clip`` (the folder OpenAI and open_clip use)."""
    return os.path.expanduser(os.environ.get("CLIP_CACHE_DIR") or os.path.join("~", ".cache", "clip"))


def model_url(name: str) -> str:
    """Download URL of a released model; ``$CLIP_DOWNLOAD_BASE_URL`` replaces OpenAI's host (mirrors, tests)."""
    if name not in MODEL_FILES:
        raise CheckpointError(f"Model {name!r} not found; available models = {available_models()}")
    file_name, sha256 = MODEL_FILES[name]
    base = os.environ.get("CLIP_DOWNLOAD_BASE_URL") or DEFAULT_BASE_URL
    return f"{base.rstrip('/')}/{sha256}/{file_name}"


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _digest_from_url(url: str) -> Optional[str]:
    parts = url.rstrip("/").split("/")
    candidate = parts[-2].lower() if len(parts) >= 2 else ""
    if len(candidate) == 64 and all(c in "0123456789abcdef" for c in candidate):
        return candidate
    return None


def download(url: str, root: Optional[str] = None, expected_sha256: Optional[str] = None) -> str:
    """Download ``url`` into ``root`` (default: :func:`default_cache_dir`) once; return the file path.

    ``expected_sha256`` defaults to the digest embedded in OpenAI-style URLs
    (``.../<sha256>/<file>``). A cached file with the right digest is reused; a
    wrong one is downloaded again. The download goes to a temporary file that is
    renamed only after its digest checks out, so the cache never holds half files.
    """
    root = root or default_cache_dir()
    os.makedirs(root, exist_ok=True)
    file_name = os.path.basename(url.rstrip("/"))
    target = os.path.join(root, file_name)
    expected = (expected_sha256 or _digest_from_url(url) or "").lower() or None
    fix = (
        f"Delete {target} and retry, put the correct checkpoint at that path, "
        "or pass a local file path instead of a model name."
    )

    if os.path.exists(target):
        if not os.path.isfile(target):
            raise CheckpointError(f"{target} exists and is not a regular file. {fix}")
        if expected is None:
            return target
        actual = sha256_of(target)
        if actual == expected:
            return target
        warnings.warn(
            f"{target} exists, but its SHA-256 ({actual}) does not match {expected}; downloading it again.",
            stacklevel=2,
        )

    logger.info("Downloading %s to %s", url, target)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".part", dir=root)
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as output, urllib.request.urlopen(url, timeout=60) as source:
                total = source.headers.get("Content-Length")
                with tqdm(
                    total=int(total) if total else None,
                    unit="iB",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=file_name,
                    disable=not sys.stderr.isatty(),
                ) as bar:
                    for chunk in iter(lambda: source.read(_CHUNK), b""):
                        output.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise CheckpointError(
                f"Could not download {url}: {error}. Download the file manually into {root} "
                f"(as {file_name}), set CLIP_DOWNLOAD_BASE_URL to a reachable mirror, "
                "or pass a local checkpoint path instead of a model name."
            ) from error
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise CheckpointError(
                f"Downloaded file for {target} has SHA-256 {actual}, expected {expected} (from {url}). "
                f"The file was discarded. {fix}"
            )
        os.replace(tmp_path, target)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return target


# CoOp-era code calls clip._download(url) with a single argument.
_download = download


def resolve_checkpoint(name_or_path: str, download_root: Optional[str] = None) -> str:
    """File path for a model name (cached or downloaded), a registered local model or an existing checkpoint path."""
    if name_or_path in MODEL_FILES:
        return download(model_url(name_or_path), download_root or default_cache_dir(), MODEL_FILES[name_or_path][1])
    path = _local_file(name_or_path)
    _warn_if_known_file_mismatch(path)
    return path


def check_model_name(name_or_path: str) -> None:
    """Raise `CheckpointError` unless `name_or_path` is a released model name, a registered local
    model or an existing file. Downloads and reads nothing (for checking a run's settings before it starts)."""
    if not name_or_path:
        raise CheckpointError(
            "MODEL.BACKBONE.NAME is empty: give a CLIP name (e.g. ViT-B/16) or a checkpoint path, "
            "in the trainer config or as 'MODEL.BACKBONE.NAME <name>' on the command line."
        )
    if name_or_path not in MODEL_FILES:
        _local_file(name_or_path)


def _local_file(name_or_path: str) -> str:
    """The file of a registered local model name or of an existing path; a clear error otherwise."""
    if name_or_path in LOCAL_MODELS:
        path = LOCAL_MODELS[name_or_path]
        if not os.path.isfile(path):
            hint = _LOCAL_MODEL_HINTS.get(name_or_path) or "Restore that file or register the name with another path."
            raise CheckpointError(f"Model {name_or_path!r} should be the file {path}, which is missing. {hint}")
        return path
    path = os.path.expanduser(str(name_or_path))
    if os.path.isfile(path):
        return path
    raise CheckpointError(
        f"Model {name_or_path!r} not found: it is neither a known model name nor an existing file. "
        f"Available models = {available_models()} and {list(LOCAL_MODELS)}; or pass the path of a checkpoint file."
    )


def _warn_if_known_file_mismatch(path: str) -> None:
    # A local file named like a released checkpoint is checked, but only warned about:
    # users may legitimately keep converted (plain state-dict) copies under that name.
    known = {file_name: sha for file_name, sha in MODEL_FILES.values()}
    expected = known.get(os.path.basename(path))
    if expected is not None:
        actual = sha256_of(path)
        if actual != expected:
            logger.warning(
                "%s is named like a released CLIP checkpoint but its SHA-256 is %s, not %s; using it anyway.",
                path, actual, expected,
            )


def _is_torchscript_archive(path: str) -> bool:
    # TorchScript zips hold <archive>/constants.pkl; torch.save zips do not.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def load_state_dict(name_or_path: str, download_root: Optional[str] = None) -> Dict[str, Tensor]:
    """Read an OpenAI-format CLIP state dict from a model name or a checkpoint file.

    Handles TorchScript archives (OpenAI's releases), plain state dicts,
    ``{"state_dict": ...}`` checkpoints and ``module.`` prefixes; drops the
    ``input_resolution``/``context_length``/``vocab_size`` entries.
    Note: TorchScript archives are loaded with ``torch.jit.load``; only open archives you trust.
    """
    path = resolve_checkpoint(name_or_path, download_root)
    if _is_torchscript_archive(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still the only reader
            try:
                raw: object = torch.jit.load(path, map_location="cpu").state_dict()
            except Exception as error:  # a damaged archive fails in many ways
                raise CheckpointError(
                    f"Could not read the TorchScript checkpoint {path}: {error}. The file may be truncated or corrupt; "
                    "delete it and download it again (or pass another checkpoint path)."
                ) from error
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle errors come in many types
            raise CheckpointError(
                f"Could not read checkpoint {path}: {error}. Expected a TorchScript archive or a torch.save'd "
                "state dict of tensors (loaded with weights_only=True)."
            ) from error
    return _normalize_state_dict(raw, path)


def _normalize_state_dict(raw: object, path: str) -> Dict[str, Tensor]:
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"Checkpoint {path} holds a {type(raw).__name__}, expected a state dict (a mapping of tensors).")
    state: Dict[str, Tensor] = OrderedDict()
    strip = bool(raw) and all(str(k).startswith("module.") for k in raw)
    for key, value in raw.items():
        key = str(key)[len("module.") :] if strip else str(key)
        if key in EXTRA_KEYS:
            continue
        if not isinstance(value, Tensor):
            raise CheckpointError(f"Checkpoint {path}: entry {key!r} is a {type(value).__name__}, expected a tensor.")
        state[key] = value
    missing = [k for k in ("visual.conv1.weight", "token_embedding.weight", "text_projection") if k not in state]
    if missing:
        raise CheckpointError(
            f"Checkpoint {path} is not an OpenAI-format CLIP state dict: keys {missing} are missing "
            f"(first keys found: {list(state)[:5]})."
        )
    return state


def preprocess_cfg(name_or_path: str) -> Dict[str, Any]:
    """The preprocessing of a CLIP, in timm's ``pretrained_cfg`` keys, without building the model.

    A released name is answered from a table (nothing is downloaded); a registered local model or a
    checkpoint path from its file's geometry. Equals ``model.preprocess_cfg`` of the built model.
    """
    if name_or_path in MODEL_RESOLUTIONS:
        return openai_preprocess_cfg(MODEL_RESOLUTIONS[name_or_path])
    path = resolve_checkpoint(name_or_path)  # a local name or path: never downloaded
    stat = os.stat(path)
    return openai_preprocess_cfg(_file_resolution(path, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=32)
def _file_resolution(path: str, mtime_ns: int, size: int) -> int:
    """The image resolution of a checkpoint file, read once per file version (checking a sweep asks
    for it once per run; a ViT-B/16 file takes a second to read)."""
    return infer_config(load_state_dict(path)).image_resolution


def load(
    name_or_path: str,
    device: Union[str, torch.device] = "cpu",
    jit: bool = False,
    download_root: Optional[str] = None,
    precision: Optional[str] = None,
) -> Tuple[CLIP, Callable]:
    """``(model, preprocess)`` for a model name or checkpoint path.

    The model is in eval mode, in ``precision`` ("fp16": OpenAI's mixed precision; "fp32": the
    file's values exactly, see `build_model`); by default fp32 on CPU and fp16 elsewhere, as OpenAI's
    ``clip.load``. ``jit=True`` is accepted for compatibility and ignored (with a warning): the
    TorchScript model is always rebuilt as a regular module.
    """
    if jit:
        warnings.warn("clip.load(jit=True) is not supported; loading the regular (non-JIT) model.", stacklevel=2)
    if precision is None:
        precision = "fp32" if torch.device(device).type == "cpu" else "fp16"
    model = build_model(load_state_dict(name_or_path, download_root), precision=precision).to(device)
    return model, image_transform(model.visual.input_resolution)
