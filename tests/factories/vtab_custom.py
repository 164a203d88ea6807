"""Tiny VTAB-1K task trees, user image-folder / CSV datasets and an ImageNet tree for the doctor."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from tests.factories.datasets import CLIP_MEAN, CLIP_STD, class_colour, write_jpeg


def make_vtab_task(
    root: str | Path,
    task: str = "cifar",
    n_classes: int = 3,
    n_train800: int = 4,
    n_val200: int = 2,
    n_test: int = 2,
    folder: str | None = None,
    size: tuple[int, int] = (24, 24),
    seed: int = 0,
) -> Path:
    """Write `root/vtab-1k/<folder or task>/` in the NOAH/SSF export layout and return the task folder.

    Per class: n_train800 train800 images, n_val200 val200 images, n_test test images; the
    train800val200 list is train800 followed by val200, with its own JPEG copies (as the export does).
    Images are written class-interleaved (label = index % n_classes), like a TFDS stream.
    """
    rng = np.random.RandomState(seed)
    task_dir = Path(root) / "vtab-1k" / (folder or task)
    lists: dict[str, list[tuple[str, int]]] = {}
    for split, per_class in (("train800", n_train800), ("val200", n_val200), ("test", n_test)):
        (task_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        entries = []
        for i in range(per_class * n_classes):
            label = i % n_classes
            rel = f"images/{split}/{i:06d}.jpg"
            write_jpeg(task_dir / rel, size, class_colour(label), rng)
            entries.append((rel, label))
        lists[split] = entries
    union = []
    (task_dir / "images" / "train800val200").mkdir(parents=True, exist_ok=True)
    for i, (rel, label) in enumerate(lists["train800"] + lists["val200"]):
        new_rel = f"images/train800val200/{i:06d}.jpg"
        (task_dir / new_rel).write_bytes((task_dir / rel).read_bytes())
        union.append((new_rel, label))
    lists["train800val200"] = union
    for split, entries in lists.items():
        (task_dir / f"{split}.txt").write_text("".join(f"{rel} {label}\n" for rel, label in entries))
    return task_dir


def make_image_folder(
    root: str | Path,
    name: str = "my_data",
    classes: Sequence[str] = ("cat", "Dog", "zebra"),
    n_per_class: int = 10,
    size: tuple[int, int] = (24, 24),
    seed: int = 0,
) -> Path:
    """Write `root/<name>/<class>/img_NN.jpg` (n_per_class each) and return the dataset folder."""
    rng = np.random.RandomState(seed)
    data_dir = Path(root) / name
    for label, cls in enumerate(sorted(classes)):
        (data_dir / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            write_jpeg(data_dir / cls / f"img_{i:02d}.jpg", size, class_colour(label), rng)
    return data_dir


def make_csv_dataset(
    root: str | Path,
    csv_name: str = "labels.csv",
    classes: Sequence[str] = ("red", "green", "blue"),
    per_split: dict[str, int] | None = None,
    with_classname: bool = True,
    with_split: bool = True,
    label_as_name: bool = False,
    size: tuple[int, int] = (24, 24),
    seed: int = 0,
) -> Path:
    """Write images under `root/csvdata/imgs/` and a CSV `root/csvdata/<csv_name>`; return the CSV path.

    `per_split` gives images per class for each split (default train 4, val 2, test 3); without
    `with_split` the rows carry no split column (all splits' images are still written). With
    `label_as_name` the label column holds the class name instead of an integer.
    """
    per_split = per_split or {"train": 4, "val": 2, "test": 3}
    rng = np.random.RandomState(seed)
    base = Path(root) / "csvdata"
    (base / "imgs").mkdir(parents=True, exist_ok=True)
    header = ["path", "label"] + (["classname"] if with_classname else []) + (["split"] if with_split else [])
    rows = []
    for split, n in per_split.items():
        for label, cls in enumerate(classes):
            for i in range(n):
                rel = f"imgs/{split}_{cls}_{i}.jpg"
                write_jpeg(base / rel, size, class_colour(label), rng)
                row = [rel, cls if label_as_name else str(label)]
                if with_classname:
                    row.append(cls)
                if with_split:
                    row.append(split)
                rows.append(row)
    path = base / csv_name
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


IMAGENET_WNIDS = ("n01440764", "n01443537", "n01484850")
IMAGENET_NAMES = ("tench", "goldfish", "great white shark")


def make_imagenet_tree(root: str | Path, n_train: int = 3, n_val: int = 2, val_in_class_folders: bool = True) -> Path:
    """`root/imagenet/images/{train,val}/<wnid>/*.JPEG` + `classnames.txt`; return the imagenet folder.

    With `val_in_class_folders=False` the val images lie flat in `images/val/` as the official
    archive ships them (the mistake the doctor must catch).
    """
    rng = np.random.RandomState(0)
    base = Path(root) / "imagenet"
    for label, wnid in enumerate(IMAGENET_WNIDS):
        (base / "images" / "train" / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(n_train):
            write_jpeg(base / "images" / "train" / wnid / f"{wnid}_{i}.JPEG", (24, 24), class_colour(label), rng)
        val_dir = base / "images" / "val" / (wnid if val_in_class_folders else "")
        val_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n_val):
            write_jpeg(val_dir / f"ILSVRC2012_val_{label * n_val + i + 1:08d}.JPEG", (24, 24), class_colour(label), rng)
    (base / "classnames.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(IMAGENET_WNIDS, IMAGENET_NAMES))
    )
    return base


def small_cfg(root: str | Path, name: str, num_shots: int = -1, seed: int = 1, subsample: str = "all"):
    """A default cfg for dataset `name` under `root`, CPU, no workers, 32 px inputs."""
    from engine.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = num_shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    cfg.USE_CUDA = False
    cfg.VERBOSE = False
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 4
    cfg.INPUT.SIZE = (32, 32)
    cfg.INPUT.PIXEL_MEAN = list(CLIP_MEAN)
    cfg.INPUT.PIXEL_STD = list(CLIP_STD)
    cfg.INPUT.TRANSFORMS = ["normalize"]
    return cfg
