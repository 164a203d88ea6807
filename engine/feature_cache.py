"""A disk cache of frozen image features, shared between runs, seeds and methods.

When a method's image encoder is frozen and prompt-free, the features of an image depend only on
the backbone file, the image file, the transform, the precision (and autocast), the device and
the batching of the computation. `FeatureKey` holds all of that but the image; the features of one
key live in ``<root>/<fingerprint>/`` as *shards*: one ``torch.save`` file per set of images computed
together, i.e. the images of a split missing at the time (``<group>-<hash of its image ids>.pt``,
group = dataset and split), holding the image ids,
the features and a SHA-256 of both. A shard is written to a temporary file and renamed
(`atomic_torch_save`), so readers never see half a file and two jobs computing the same images
write the same name with the same content. A shard that fails to load or to verify is deleted and
its images are computed again. Per-shard rather than per-image files keep a 50 000-image split to
one read.

An image id is its absolute path, size and modification time, so a replaced image misses.

`FeatureCache` is the engine-side glue: the features of a split (read, or computed for the missing
images with a caller-given encoder and stored), and the batches a trainer iterates instead of its
data loader's, with `CachedImageFeatures` in place of the image tensor.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader, Dataset

from engine.data.transforms import InstanceNormalization
from engine.utils import atomic_torch_save, atomic_write_bytes, read_image

__all__ = [
    "CachedImageFeatures",
    "FeatureCache",
    "FeatureKey",
    "FeatureStore",
    "default_cache_dir",
    "file_sha256",
    "image_id",
    "is_deterministic",
]

logger = logging.getLogger(__name__)

SHARD_VERSION = 1
# Transform steps that give the same output every time (anything else is treated as random).
DETERMINISTIC_STEPS = (T.Resize, T.CenterCrop, T.ToTensor, T.PILToTensor, T.ConvertImageDtype, T.Normalize,
                       InstanceNormalization)


def default_cache_dir() -> str:
    """``$CLIP_FEATURE_CACHE_DIR`` if set, else ``~/.cache/clip_features`` (FEATURE_CACHE.DIR "")."""
    return os.path.expanduser(os.environ.get("CLIP_FEATURE_CACHE_DIR") or os.path.join("~", ".cache", "clip_features"))


def is_deterministic(transform: Any) -> bool:
    """True when every step of a `T.Compose` is a known deterministic one (None: PIL images, not cacheable)."""
    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    return transform is not None and all(isinstance(step, DETERMINISTIC_STEPS) for step in steps)


def image_id(impath: str) -> str:
    """What identifies an image file: absolute path, size and modification time."""
    path = os.path.abspath(impath)
    stat = os.stat(path)
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def file_sha256(path: str, memo_dir: str) -> str:
    """SHA-256 of a (large) file, remembered in `memo_dir` by path, size and mtime."""
    path = os.path.abspath(path)
    stat = os.stat(path)
    signature = {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    memo = os.path.join(memo_dir, hashlib.sha1(path.encode()).hexdigest() + ".json")
    with contextlib.suppress(OSError, ValueError, KeyError):
        with open(memo) as f:
            saved = json.load(f)
        if {k: saved[k] for k in signature} == signature and len(saved["sha256"]) == 64:
            return saved["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    atomic_write_bytes(memo, json.dumps({**signature, "sha256": digest.hexdigest()}).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class FeatureKey:
    """Everything but the image that determines a frozen image feature."""

    backbone_sha256: str
    encoder: str  # the method's frozen encoder (qualified name), e.g. MethodModel.encode_frozen_images
    transform: str  # repr of the exact transform
    precision: str
    autocast: bool
    device: str  # cpu, or the CUDA device's name: kernels differ between GPUs
    torch_version: str
    batch_size: int  # the batching of the computation (kernels may round differently per batch shape)
    views: str = ""  # "": the transform once; "<K> views, seed <S>": K augmented views per image

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class CachedImageFeatures:
    """A batch's cached image features, travelling where the image tensor would ([B, D] or [B, K, D])."""

    features: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "CachedImageFeatures":
        return CachedImageFeatures(self.features.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return len(self.features)


def _digest(ids: Sequence[str], features: torch.Tensor) -> str:
    digest = hashlib.sha256("\n".join(ids).encode())
    digest.update(str((features.dtype, tuple(features.shape))).encode())
    digest.update(features.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureStore:
    """The shards of one `FeatureKey` in ``<root>/<fingerprint>/``."""

    def __init__(self, root: str, key: FeatureKey) -> None:
        self.key = key
        self.fingerprint = key.fingerprint()
        self.folder = os.path.join(root, self.fingerprint)

    def _shards(self, group: str) -> list[str]:
        if not os.path.isdir(self.folder):
            return []
        return sorted(os.path.join(self.folder, name) for name in os.listdir(self.folder)
                      if name.startswith(group + "-") and name.endswith(".pt"))

    def _read_shard(self, path: str) -> dict | None:
        """A verified shard, or None (a corrupt one is deleted so that it is rebuilt)."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            ids, features = data["ids"], data["features"]
            valid = (data["version"] == SHARD_VERSION and data["key"] == self.fingerprint
                     and len(ids) == len(features) and data["sha256"] == _digest(ids, features))
        except FileNotFoundError:  # removed by another job meanwhile
            return None
        except Exception as error:  # a damaged file fails in many ways
            valid, data = False, None
            logger.warning("Feature cache: cannot read %s (%s)", path, error)
        if not valid:
            logger.warning("Feature cache: %s is corrupt or stale; removing it, its images are recomputed", path)
            with contextlib.suppress(OSError):
                os.remove(path)
            return None
        return data

    def load(self, group: str, wanted: Sequence[str]) -> dict[str, torch.Tensor]:
        """Features of the `wanted` ids found in the group's shards, by id."""
        needed = set(wanted)
        found: dict[str, torch.Tensor] = {}
        for path in self._shards(group):
            if len(found) == len(needed):
                break
            data = self._read_shard(path)
            if data is None:
                continue
            for row, image in enumerate(data["ids"]):
                if image in needed and image not in found:
                    found[image] = data["features"][row]
        return found

    def write(self, group: str, ids: Sequence[str], features: torch.Tensor) -> str:
        """Store features [N, ...] of `ids` as one shard (atomically); return its path."""
        features = features.detach().cpu().contiguous()
        ids = list(ids)
        name = f"{group}-{hashlib.sha256(chr(10).join(ids).encode()).hexdigest()[:16]}.pt"
        path = os.path.join(self.folder, name)
        key_file = os.path.join(self.folder, "key.json")
        if not os.path.exists(key_file):  # for people browsing the cache
            atomic_write_bytes(key_file, json.dumps(asdict(self.key), indent=2).encode())
        atomic_torch_save({"version": SHARD_VERSION, "key": self.fingerprint, "ids": ids, "features": features,
                           "sha256": _digest(ids, features)}, path)
        return path


def shard_group(dataset: str, split: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", f"{dataset}-{split}").replace("-", "_")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch, random and numpy seeded with `seed` inside; the callers' generator states restored after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def view_seed(seed: int, image: str, view: int) -> int:
    """The seed of one augmented view: the same whichever images are computed together."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{image}|{view}".encode()).digest()[:8], "little") >> 1


class _Images(Dataset):
    """Images of a data source under a transform; with `views`, K seeded augmentations each ([K, ...])."""

    def __init__(self, data_source: Sequence[Any], transform: Any, ids: Sequence[str], views: int = 0,
                 seed: int = 0) -> None:
        self.data_source, self.transform, self.ids, self.views, self.seed = data_source, transform, ids, views, seed

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = read_image(self.data_source[i].impath)
        if not self.views:
            return self.transform(img)
        out = []
        for view in range(self.views):
            with seeded(view_seed(self.seed, self.ids[i], view)):
                out.append(self.transform(img))
        return torch.stack(out)


class _Rows(Dataset):
    """Index dataset: the collate function builds each batch from the cached features."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


@dataclass
class SplitFeatures:
    """The features of a split in data-source order and how they were obtained."""

    features: torch.Tensor  # [N, D] or [N, K, D]
    hits: int
    computed: int

    @property
    def status(self) -> str:
        return "hit" if not self.computed else ("built" if not self.hits else "partial")


class FeatureCache:
    """Read-or-compute the frozen features of a split, and the batches that replace a loader's."""

    def __init__(self, root: str, num_workers: int = 0) -> None:
        self.root = root
        self.num_workers = num_workers
        self._memory: dict[tuple[str, str], SplitFeatures] = {}  # one run evaluates a split many times

    def split_features(self, key: FeatureKey, group: str, data_source: Sequence[Any], transform: Any,
                       encode: Callable[[torch.Tensor], torch.Tensor], views: int = 0, seed: int = 0) -> SplitFeatures:
        """Features of every image of `data_source` (cached ones read, the others computed by
        `encode` on batches of `key.batch_size` in data-source order and stored)."""
        ids = [image_id(item.impath) for item in data_source]
        memo = self._memory.get((key.fingerprint(), group))
        if memo is not None and len(memo.features) == len(ids):
            return memo
        store = FeatureStore(self.root, key)
        found = store.load(group, ids)
        missing = [i for i, image in enumerate(ids) if image not in found]
        if missing:
            logger.info("Feature cache: computing %d of %d image features (%s) into %s", len(missing), len(ids),
                        group, store.folder)
            computed = self._compute([data_source[i] for i in missing], [ids[i] for i in missing], transform,
                                     encode, key.batch_size, views, seed)
            store.write(group, [ids[i] for i in missing], computed)
            found.update({ids[i]: row for i, row in zip(missing, computed)})
        else:
            logger.info("Feature cache: %d image features (%s) read from %s", len(ids), group, store.folder)
        result = SplitFeatures(torch.stack([found[image] for image in ids]), len(ids) - len(missing), len(missing))
        self._memory[(key.fingerprint(), group)] = result
        return result

    def _compute(self, data_source, ids, transform, encode, batch_size, views, seed) -> torch.Tensor:
        loader = DataLoader(_Images(data_source, transform, ids, views, seed), batch_size=batch_size,
                            shuffle=False, num_workers=self.num_workers)
        parts = []
        # The loader's base-seed draw must not advance the run's random stream: a run then continues
        # the same whether the cache was full or empty.
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for images in loader:
                if views:  # [B, K, ...] -> K-major batches are not needed: encode B*K images at once
                    b, k = images.shape[:2]
                    parts.append(encode(images.flatten(0, 1)).view(b, k, -1).cpu())
                else:
                    parts.append(encode(images).cpu())
        return torch.cat(parts)

    @staticmethod
    def batches(loader: DataLoader, features: torch.Tensor, view_generator: torch.Generator | None = None
                ) -> DataLoader:
        """What iterating `loader` gives, with `CachedImageFeatures` as "img" and no image read.

        The same batch sampler draws the same batches, and the global random stream advances as
        for `loader` (one base-seed draw per iteration, whatever the worker count), so training
        continues identically after it. With views ([N, K, D]) each image gets one view drawn
        from `view_generator`."""
        data_source = loader.dataset.data_source
        labels = torch.tensor([item.label for item in data_source])
        domains = torch.tensor([item.domain for item in data_source])

        def collate(indices: list[int]) -> dict:
            index = torch.tensor(indices)
            rows = features[index]
            if rows.dim() == 3:
                rows = rows[torch.arange(len(index)), torch.randint(rows.shape[1], (len(index),),
                                                                    generator=view_generator)]
            return {"img": CachedImageFeatures(rows), "label": labels[index], "domain": domains[index],
                    "impath": [data_source[i].impath for i in indices], "index": index}

        return DataLoader(_Rows(len(data_source)), batch_sampler=loader.batch_sampler, collate_fn=collate,
                          num_workers=0, generator=loader.generator)
