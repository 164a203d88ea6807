"""Tiny trees for ImageNet, its four variants, FGVCAircraft, SUN397 and UCF101 in their exact layouts."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from tests.factories.datasets import class_colour, write_jpeg

SIZE = (8, 6)  # tiny JPEGs: only paths and labels matter here

# Real wnids and CLIP names (sorted wnid order); A lacks goldfish, R has it.
WNIDS = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"),
    ("n01494475", "hammerhead shark"),
]

FGVC_VARIANTS = ("707-320", "A300B4", "Cessna 172", "F-16A/B", "DHC-1")
SUN_CLASSES = ("a/abbey", "a/apartment_building/outdoor", "b/bakery/shop", "s/shoe_shop", "y/youth_hostel")
UCF_ACTIONS = ("ApplyEyeMakeup", "HandstandPushups", "YoYo", "PlayingDaf", "Skijet")


def dataset_cfg(root: str | Path, name: str, num_shots: int = -1, seed: int = 1, subsample: str = "all"):
    """A default cfg for dataset `name` under `root`, no workers."""
    from engine.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = num_shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    cfg.USE_CUDA = False
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def _images(folder: Path, names: Sequence[str], label: int, rng: np.random.RandomState) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_jpeg(folder / name, SIZE, class_colour(label), rng)


def write_classnames(path: Path, entries: Sequence[tuple[str, str]]) -> Path:
    """classnames.txt: `<wnid> <name>` per line, in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in entries))
    return path


def make_imagenet_tree(
    root: str | Path,
    entries: Sequence[tuple[str, str]] = tuple(WNIDS),
    n_train: int = 5,
    n_val: int = 2,
    flat_val: bool = False,
    seed: int = 0,
) -> Path:
    """root/imagenet/images/{train,val}/<wnid>/*.JPEG and classnames.txt; returns root.

    Train images are named `<wnid>_<i>.JPEG`, val `ILSVRC2012_val_<n>.JPEG` (unique across classes);
    with `flat_val` the val images lie directly in images/val (the archive's layout).
    """
    root = Path(root)
    rng = np.random.RandomState(seed)
    base = root / "imagenet"
    counter = 1
    for label, (wnid, _) in enumerate(sorted(entries)):
        _images(base / "images" / "train" / wnid, [f"{wnid}_{i}.JPEG" for i in range(n_train)], label, rng)
        names = [f"ILSVRC2012_val_{counter + i:08d}.JPEG" for i in range(n_val)]
        counter += n_val
        _images(base / "images" / "val" / ("" if flat_val else wnid), names, label, rng)
    write_classnames(base / "classnames.txt", entries)
    return root


def make_imagenet_variant_tree(
    root: str | Path,
    variant: str,
    entries: Sequence[tuple[str, str]] = tuple(WNIDS),
    classnames: Sequence[tuple[str, str]] | None = None,
    n_images: int = 3,
    seed: int = 0,
) -> Path:
    """One variant tree (`v2`, `sketch`, `a` or `r`) with class folders for `entries`; returns root.

    classnames.txt lists `classnames` (default: `entries`), e.g. the full list for a subset variant.

    v2: numbered folders 0..len(entries)-1 (folder k = line k of classnames.txt).
    sketch/a/r: the folders are the given wnids; a/r also get the archive's README.txt. The class at
    position p gets n_images + p images, so per-class counts tell classes apart.
    """
    root = Path(root)
    rng = np.random.RandomState(seed)
    dataset_dir, image_subdir = {
        "v2": ("imagenetv2", "imagenetv2-matched-frequency-format-val"),
        "sketch": ("imagenet-sketch", "images"),
        "a": ("imagenet-adversarial", "imagenet-a"),
        "r": ("imagenet-rendition", "imagenet-r"),
    }[variant]
    image_dir = root / dataset_dir / image_subdir
    for pos, (wnid, _) in enumerate(entries):
        folder = str(pos) if variant == "v2" else wnid
        ext = "jpeg" if variant == "v2" else "JPEG" if variant == "sketch" else "jpg"
        _images(image_dir / folder, [f"img_{i}.{ext}" for i in range(n_images + pos)], pos, rng)
    if variant in ("a", "r"):
        (image_dir / "README.txt").write_text("subset of ImageNet classes\n")
    write_classnames(root / dataset_dir / "classnames.txt", entries if classnames is None else classnames)
    return root


def make_fgvc_aircraft_tree(
    root: str | Path, variants: Sequence[str] = FGVC_VARIANTS, per_split: tuple[int, int, int] = (5, 3, 2), seed: int = 0
) -> Path:
    """root/fgvc_aircraft/{images/<id>.jpg, variants.txt, images_variant_{train,val,test}.txt}; returns root.

    Image ids are 7-digit numbers; each split file lists, class after class, per_split[i] images
    per variant in the official `<id> <variant name>` form.
    """
    root = Path(root)
    rng = np.random.RandomState(seed)
    base = root / "fgvc_aircraft"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    next_id = 1000000
    for split, n in zip(("train", "val", "test"), per_split):
        lines = []
        for label, variant in enumerate(variants):
            for _ in range(n):
                write_jpeg(base / "images" / f"{next_id}.jpg", SIZE, class_colour(label), rng)
                lines.append(f"{next_id} {variant}\n")
                next_id += 1
        (base / f"images_variant_{split}.txt").write_text("".join(lines))
    return root


def make_sun397_tree(
    root: str | Path,
    classes: Sequence[str] = SUN_CLASSES,
    n_trainval: int = 5,
    n_test: int = 2,
    with_split_json: bool = False,
    split_sizes: tuple[int, int] = (3, 1),
    seed: int = 0,
) -> Path:
    """root/sun397/{SUN397/<key>/sun_*.jpg, ClassName.txt, Training_01.txt, Testing_01.txt}; returns root.

    With `with_split_json`, split_zhou_SUN397.json lists per class the first split_sizes[0] trainval
    images as train, the next split_sizes[1] as val, and the test images as test.
    """
    root = Path(root)
    rng = np.random.RandomState(seed)
    base = root / "sun397"
    split = {"train": [], "val": [], "test": []}
    train_lines, test_lines = [], []
    for label, key in enumerate(classes):
        names = [f"sun_{key.replace('/', '')}{i:03d}.jpg" for i in range(n_trainval + n_test)]
        _images(base / "SUN397" / key, names, label, rng)
        cname = " ".join(key.split("/")[1:][::-1])
        for i, name in enumerate(names):
            (train_lines if i < n_trainval else test_lines).append(f"/{key}/{name}\n")
            part = "test" if i >= n_trainval else "train" if i < split_sizes[0] else "val" if i < sum(split_sizes) else None
            if part:
                split[part].append([f"{key}/{name}", label, cname])
    (base / "ClassName.txt").write_text("".join(f"/{key}\n" for key in classes))
    (base / "Training_01.txt").write_text("".join(train_lines))
    (base / "Testing_01.txt").write_text("".join(test_lines))
    if with_split_json:
        (base / "split_zhou_SUN397.json").write_text(json.dumps(split, indent=4, separators=(",", ": ")))
    return root


def make_ucf101_tree(
    root: str | Path,
    actions: Sequence[str] = UCF_ACTIONS,
    n_trainval: int = 5,
    n_test: int = 2,
    with_split_json: bool = False,
    split_sizes: tuple[int, int] = (3, 1),
    seed: int = 0,
) -> Path:
    """root/ucf101/{UCF-101-midframes/<Split_Action>/v_*.jpg, ucfTrainTestlist/*.txt}; returns root.

    classInd.txt numbers the actions from 1 in the given order; the list files use CRLF like the
    official ones; trainlist lines carry the 1-based id, testlist lines do not. With
    `with_split_json`, split_zhou_UCF101.json is written like make_sun397_tree's.
    """
    root = Path(root)
    rng = np.random.RandomState(seed)
    base = root / "ucf101"
    lists = base / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    split = {"train": [], "val": [], "test": []}
    train_lines, test_lines = [], []
    for label, action in enumerate(actions):
        renamed = "_".join(re.findall(r"[A-Z][^A-Z]*", action))
        clips = [f"v_{action}_g{1 + i // 2:02d}_c{1 + i % 2:02d}" for i in range(n_trainval + n_test)]
        _images(base / "UCF-101-midframes" / renamed, [c + ".jpg" for c in clips], label, rng)
        for i, clip in enumerate(clips):
            if i < n_trainval:
                train_lines.append(f"{action}/{clip}.avi {label + 1}\r\n")
            else:
                test_lines.append(f"{action}/{clip}.avi\r\n")
            part = "test" if i >= n_trainval else "train" if i < split_sizes[0] else "val" if i < sum(split_sizes) else None
            if part:
                split[part].append([f"{renamed}/{clip}.jpg", label, renamed])
    (lists / "classInd.txt").write_bytes("".join(f"{i + 1} {a}\r\n" for i, a in enumerate(actions)).encode())
    (lists / "trainlist01.txt").write_bytes("".join(train_lines).encode())
    (lists / "testlist01.txt").write_bytes("".join(test_lines).encode())
    if with_split_json:
        (base / "split_zhou_UCF101.json").write_text(json.dumps(split, indent=4, separators=(",", ": ")))
    return root
