"""The provenance card: what decides a run's number, written into its results.json.

`build_card(trainer, ...)` collects the code state (git commit, dirty flag), library versions, the
device, the backbone file's SHA-256, hashes of the split file, the few-shot sample, the class-name
list and the prompt texts the trainer tokenised (`clip.recording_texts`, passed in by train.py), the exact train and test transform pipelines, the
resolved config with its hash, and which checkpoint was evaluated. `python -m reproduce diff`
compares two cards.

Hashing a 300 MB backbone takes seconds, so file digests are cached on disk by path, mtime and
size (`$CLIP_ADAPT_HASH_CACHE`, default ``~/.cache/clip_adapt/sha256_cache.json``).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from typing import Any, Iterator

import yaml

from engine.config import cfg_to_yaml
from engine.layout import BEST_CHECKPOINT_NAME, parse_checkpoint_epoch
from engine.utils import atomic_write_bytes

__all__ = ["CARD_KEY", "LOCATION_KEYS", "build_card", "config_hash", "file_sha256", "hash_cache_path"]

CARD_KEY = "provenance"
# Config keys that say where things are, not what is computed: left out of the config hash (the
# content they point to is hashed on its own: split file, few-shot sample, backbone file).
LOCATION_KEYS = ("OUTPUT_DIR", "DATASET.ROOT", "DATASET.FEWSHOT_CACHE_DIR", "RESUME")
HASH_CACHE_ENV = "CLIP_ADAPT_HASH_CACHE"
_CHUNK = 1 << 20
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- hashing
def sha256_json(obj: Any) -> str:
    """SHA-256 of `obj` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_cache_path() -> str:
    return os.path.expanduser(os.environ.get(HASH_CACHE_ENV) or "~/.cache/clip_adapt/sha256_cache.json")


def _read_cache(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def file_sha256(path: str, cache_path: str | None = None) -> str:
    """The file's SHA-256, from the on-disk cache when path, mtime and size match it."""
    path = os.path.abspath(path)
    stat = os.stat(path)
    cache_path = cache_path or hash_cache_path()
    cache = _read_cache(cache_path)
    entry = cache.get(path)
    if isinstance(entry, dict) and entry.get("mtime_ns") == stat.st_mtime_ns and entry.get("size") == stat.st_size:
        return str(entry["sha256"])
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    cache = _read_cache(cache_path)  # re-read: another run may have added entries meanwhile
    cache = {p: e for p, e in cache.items() if os.path.exists(p)}  # forget deleted files (test folders)
    cache[path] = {"mtime_ns": stat.st_mtime_ns, "size": stat.st_size, "sha256": digest.hexdigest()}
    try:
        atomic_write_bytes(cache_path, json.dumps(cache, indent=1).encode("utf-8"))
    except OSError:  # a read-only home only costs the recomputation next time
        pass
    return digest.hexdigest()


# ----------------------------------------------------------------------------- parts of the card
def git_state(repo_dir: str = REPO_ROOT) -> dict:
    """Commit of `repo_dir` and whether tracked files differ from it (None where git is unavailable)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", repo_dir, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def library_versions() -> dict:
    import sys

    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("torch", "torchvision", "open_clip_torch", "numpy"):
        key = "open_clip" if name == "open_clip_torch" else name
        try:
            versions[key] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def device_info(device) -> dict:
    import torch

    info = {"type": device.type, "name": platform.processor() or platform.machine(), "cuda": torch.version.cuda}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def backbone_info(name: str, path: str | None) -> dict:
    """The backbone's name, file (None when it is not a file here) and the file's SHA-256."""
    return {"name": name, "file": path, "sha256": file_sha256(path) if path else None}


def data_info(dataset, lab2cname: dict, num_shots: int) -> dict:
    """Hashes of the split file, the few-shot training sample and the class-name list."""
    split_path = getattr(dataset, "split_path", None)
    split_sha = file_sha256(split_path) if split_path and os.path.isfile(split_path) else None
    root = getattr(dataset, "dataset_dir", "") or ""
    sample = None
    if num_shots > 0:
        # Paths relative to the dataset folder, so the same images under another root hash the same.
        items = sorted((os.path.relpath(d.impath, root) if root else d.impath, int(d.label)) for d in dataset.train_x)
        sample = {"sha256": sha256_json(items), "images": len(items)}
    classnames = [lab2cname[k] for k in sorted(lab2cname)]
    return {
        "split_file": split_path,
        "split_sha256": split_sha,
        "fewshot_sample": sample,
        "classnames_sha256": sha256_json(classnames),
        "num_classes": len(classnames),
    }


def transform_text(transform) -> str | None:
    return None if transform is None else repr(transform)


def plain_config(cfg) -> dict:
    return yaml.safe_load(cfg_to_yaml(cfg))


def config_hash(plain: dict) -> str:
    """SHA-256 of the resolved config without the location keys (`LOCATION_KEYS`)."""
    trimmed = json.loads(json.dumps(plain))
    for dotted in LOCATION_KEYS:
        *parents, leaf = dotted.split(".")
        node = trimmed
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return sha256_json(trimmed)


def checkpoint_info(trainer, model_dir: str | None, load_epoch: int | None, trained_here: bool) -> dict:
    """Which weights produced the number: the last or best epoch of this training run, or the
    checkpoint an evaluation loaded (with the dataset it was trained on), or none (zero-shot)."""
    cfg = trainer.cfg
    if trained_here:
        if cfg.TEST.FINAL_MODEL == "best_val":
            return {"evaluated": "best", "epoch": None, "model_dir": None, "trained_on": cfg.DATASET.NAME}
        return {"evaluated": "last", "epoch": int(getattr(trainer, "finished_epochs", cfg.OPTIM.MAX_EPOCH)),
                "model_dir": None, "trained_on": cfg.DATASET.NAME}
    if not model_dir:
        return {"evaluated": "none (initial weights)", "epoch": None, "model_dir": None, "trained_on": None}
    names = trainer.get_model_names()
    folder = os.path.join(model_dir, names[0]) if names else model_dir
    saved = [e for e in (parse_checkpoint_epoch(f) for f in sorted(os.listdir(folder))) if e is not None] \
        if os.path.isdir(folder) else []
    if load_epoch is None and os.path.isfile(os.path.join(folder, BEST_CHECKPOINT_NAME)):
        evaluated, epoch = "best", None
    else:
        epoch = load_epoch if load_epoch is not None else (max(saved) if saved else None)
        evaluated = "last" if saved and epoch == max(saved) else "epoch"
    return {"evaluated": evaluated, "epoch": epoch, "model_dir": os.path.abspath(model_dir),
            "trained_on": _trained_on(model_dir)}


def _trained_on(model_dir: str) -> str | None:
    """DATASET.NAME of the run that wrote `model_dir` (its config.yaml), None if unknown."""
    try:
        with open(os.path.join(model_dir, "config.yaml")) as f:
            return (yaml.safe_load(f) or {}).get("DATASET", {}).get("NAME")
    except (OSError, yaml.YAMLError, AttributeError):
        return None


# ----------------------------------------------------------------------------- the card
def build_card(trainer, prompts: list[str], backbone_file: str | None, model_dir: str | None = None,
               load_epoch: int | None = None, trained_here: bool = True) -> dict:
    """The provenance card of `trainer`'s last test (see the module docstring); `backbone_file` is the
    weights file the backbone was loaded from (the caller resolves it: the engine knows no model)."""
    cfg = trainer.cfg
    plain = plain_config(cfg)
    train_loader = getattr(trainer, "train_loader_x", None)
    test_loader = getattr(trainer, "test_loader", None)
    return {
        "git": git_state(),
        "versions": library_versions(),
        "device": device_info(trainer.device),
        "backbone": backbone_info(cfg.MODEL.BACKBONE.NAME, backbone_file),
        "data": data_info(trainer.dm.dataset, trainer.lab2cname, cfg.DATASET.NUM_SHOTS),
        "prompts": {"sha256": sha256_json(prompts), "count": len(prompts), "first": prompts[:3]},
        "transforms": {
            "train": transform_text(getattr(getattr(train_loader, "dataset", None), "transform", None)),
            "test": transform_text(getattr(getattr(test_loader, "dataset", None), "transform", None)),
        },
        "config": {"sha256": config_hash(plain), "hash_excludes": list(LOCATION_KEYS), "resolved": plain},
        "checkpoint": checkpoint_info(trainer, model_dir, load_epoch, trained_here),
    }
