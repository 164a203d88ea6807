"""Tiny on-disk datasets in the layouts the dataset classes expect (no real data needed)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

CALTECH_RENAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}

DEFAULT_CALTECH_CLASSES = ("Faces", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor")


def class_colour(index: int) -> np.ndarray:
    """A distinct RGB base colour per class index, so a model can tell classes apart."""
    hue = (index * 0.61803398875) % 1.0  # golden-ratio spacing of hues
    h6 = hue * 6
    c, x = 200.0, 200.0 * (1 - abs(h6 % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h6) % 6]
    return np.array(rgb, dtype=np.float64) + 30.0


def write_jpeg(path: Path, size: tuple[int, int], colour: np.ndarray, rng: np.random.RandomState) -> None:
    """A (width, height) JPEG: the class colour plus mild noise."""
    w, h = size
    pixels = colour[None, None, :] + rng.normal(0.0, 12.0, size=(h, w, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)


def make_caltech101_tree(
    root: str | Path,
    classes: Sequence[str] = DEFAULT_CALTECH_CLASSES,
    n_train: int = 4,
    n_val: int = 2,
    n_test: int = 2,
    size: tuple[int, int] = (40, 30),
    with_split_json: bool = True,
    seed: int = 0,
) -> Path:
    """Write `root/caltech-101/101_ObjectCategories/<class>/image_NNNN.jpg` and return `root`.

    Each class gets n_train + n_val + n_test images of `size` = (width, height); a
    `BACKGROUND_Google` folder (to be ignored) is added too. With `with_split_json`, the split file
    `split_zhou_Caltech101.json` lists per class the first n_train images as train, the next n_val
    as val, the rest as test; labels follow the case-sensitive sort of the folder names and class
    names carry CoOp's renames.
    """
    root = Path(root)
    image_dir = root / "caltech-101" / "101_ObjectCategories"
    rng = np.random.RandomState(seed)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(sorted(classes)):  # Python sorts case-sensitively: capitals first
        (image_dir / folder).mkdir(parents=True, exist_ok=True)
        colour = class_colour(label)
        n_total = n_train + n_val + n_test
        for i in range(n_total):
            name = f"image_{i + 1:04d}.jpg"
            write_jpeg(image_dir / folder / name, size, colour, rng)
            part = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            split[part].append([f"{folder}/{name}", label, CALTECH_RENAMES.get(folder, folder)])
    background = image_dir / "BACKGROUND_Google"
    background.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        write_jpeg(background / f"image_{i + 1:04d}.jpg", size, np.array([128.0, 128.0, 128.0]), rng)
    if with_split_json:
        path = root / "caltech-101" / "split_zhou_Caltech101.json"
        path.write_text(json.dumps(split, indent=4, separators=(",", ": ")))
    return root


CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def caltech_cfg(root: str | Path, num_shots: int = -1, seed: int = 1, subsample: str = "all", size: int = 32):
    """A default cfg pointing at a factory Caltech101 tree, with CLIP's input settings and no workers."""
    from engine.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = "Caltech101"
    cfg.DATASET.NUM_SHOTS = num_shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    cfg.USE_CUDA = False
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 5
    cfg.INPUT.SIZE = (size, size)
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.PIXEL_MEAN = list(CLIP_MEAN)
    cfg.INPUT.PIXEL_STD = list(CLIP_STD)
    cfg.INPUT.TRANSFORMS = ["random_resized_crop", "random_flip", "normalize"]
    return cfg
