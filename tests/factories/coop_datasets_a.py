"""Tiny on-disk trees for OxfordPets, StanfordCars, OxfordFlowers, Food101, DTD and EuroSAT.

Each `make_*_tree(root, ...)` writes `root/<dataset_dir>/...` in CoOp's exact layout (real
class-name formats, tiny JPEGs) and returns `root`. Unless told otherwise it also writes the raw
annotation files the original reads when no split file exists, and a `split_zhou_*.json` in which,
per class in label order, the first `n_train` images are train, the next `n_val` val, the rest test
(a deterministic choice that a generated, shuffled split would not reproduce).

The `check_*` functions at the end run the few-shot and base/new checks that every one of these
datasets must pass; the per-dataset tests call them.
"""
from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence
from unittest import mock

import numpy as np

from tests.factories.datasets import caltech_cfg, class_colour, write_jpeg

IMAGE_SIZE = (24, 20)  # (width, height): small, so trees are written in milliseconds

# (image-name breed, species 1=cat 2=dog); class ids are positions in case-insensitive order, as in Pets.
PETS_BREEDS = (("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1), ("great_pyrenees", 2), ("yorkshire_terrier", 2))
# Real cars_meta.mat names (note the "/" in the Ram van).
CARS_NAMES = (
    "AM General Hummer SUV 2000",
    "Acura RL Sedan 2012",
    "Aston Martin V8 Vantage Convertible 2012",
    "Ram C/V Cargo Van Minivan 2012",
    "smart fortwo Convertible 2012",
)
# 1-based class id -> name, as in cat_to_name.json.
FLOWERS_NAMES = {1: "pink primrose", 2: "hard-leaved pocket orchid", 3: "canterbury bells", 4: "sweet pea", 5: "english marigold"}
FOOD_CLASSES = ("apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare")
DTD_CLASSES = ("banded", "blotchy", "braided", "bubbly", "bumpy")
EUROSAT_CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "SeaLake")


def coop_cfg(root: str | Path, name: str, num_shots: int = -1, seed: int = 1, subsample: str = "all"):
    """A default cfg for dataset `name` under `root` (CLIP input settings, no workers)."""
    cfg = caltech_cfg(root, num_shots=num_shots, seed=seed, subsample=subsample)
    cfg.DATASET.NAME = name
    return cfg


def _write_split(path: Path, split: dict[str, list]) -> None:
    path.write_text(json.dumps(split, indent=4, separators=(",", ": ")))


def _assign(split: dict[str, list], i: int, n_train: int, n_val: int, entry: list) -> None:
    part = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    split[part].append(entry)


def _savemat(path: Path, variables: dict) -> None:
    from scipy.io import savemat  # only the .mat-writing factories need scipy

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), variables)


# ---------------------------------------------------------------------------------------- OxfordPets
def make_oxford_pets_tree(
    root: str | Path,
    breeds: Sequence[tuple[str, int]] = PETS_BREEDS,
    n_train: int = 4,
    n_val: int = 1,
    n_test: int = 2,
    with_split_json: bool = True,
    seed: int = 0,
) -> Path:
    """`oxford_pets/images/<Breed>_<n>.jpg`, `annotations/{trainval,test}.txt` and the split file.

    Per breed, images numbered from 101 on: the first n_train + n_val are listed in trainval.txt,
    the rest in test.txt. Lines are `<name> <class> <species> <breed id>` like the official files.
    """
    root = Path(root)
    ds = root / "oxford_pets"
    (ds / "images").mkdir(parents=True, exist_ok=True)
    (ds / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    ordered = sorted(breeds, key=lambda b: b[0].lower())
    species_count: Counter = Counter()
    trainval, test = [], []
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, (breed, species) in enumerate(ordered):
        species_count[species] += 1
        for i in range(n_train + n_val + n_test):
            stem = f"{breed}_{101 + i}"
            write_jpeg(ds / "images" / f"{stem}.jpg", IMAGE_SIZE, class_colour(label), rng)
            line = f"{stem} {label + 1} {species} {species_count[species]}"
            (trainval if i < n_train + n_val else test).append(line)
            _assign(split, i, n_train, n_val, [f"{stem}.jpg", label, breed.lower()])
    (ds / "annotations" / "trainval.txt").write_text("\n".join(trainval) + "\n")
    (ds / "annotations" / "test.txt").write_text("\n".join(test) + "\n")
    if with_split_json:
        _write_split(ds / "split_zhou_OxfordPets.json", split)
    return root


# -------------------------------------------------------------------------------------- StanfordCars
def make_stanford_cars_tree(
    root: str | Path,
    class_names: Sequence[str] = CARS_NAMES,
    n_train: int = 4,
    n_val: int = 1,
    n_test: int = 2,
    with_split_json: bool = True,
    with_mat: bool = True,
    seed: int = 0,
) -> Path:
    """`stanford_cars/cars_{train,test}/NNNNN.jpg`, the devkit .mat files and the split file.

    Images are numbered globally with classes interleaved (image k has class k mod C), like the
    real annotation files where classes are not grouped. Per class, the first n_train + n_val
    images go to cars_train, the rest to cars_test. `with_mat` needs scipy.
    """
    root = Path(root)
    ds = root / "stanford_cars"
    for folder in ("cars_train", "cars_test"):
        (ds / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    n_cls = len(class_names)
    annos: dict[str, list[tuple[str, int]]] = {"cars_train": [], "cars_test": []}
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for i in range(n_train + n_val + n_test):
        for label in range(n_cls):
            folder = "cars_train" if i < n_train + n_val else "cars_test"
            fname = f"{len(annos[folder]) + 1:05d}.jpg"
            annos[folder].append((fname, label + 1))
            write_jpeg(ds / folder / fname, IMAGE_SIZE, class_colour(label), rng)
            words = class_names[label].split(" ")
            _assign(split, i, n_train, n_val, [f"{folder}/{fname}", label, " ".join([words[-1]] + words[:-1])])
    if with_mat:
        def struct(entries: list[tuple[str, int]]) -> np.ndarray:
            fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
            arr = np.zeros((1, len(entries)), dtype=fields)
            for j, (fname, cls) in enumerate(entries):
                for box in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"):
                    arr[0, j][box] = np.array([[3]], dtype=np.uint8)
                arr[0, j]["class"] = np.array([[cls]], dtype=np.uint8)
                arr[0, j]["fname"] = np.array([fname])
            return arr

        names = np.empty((1, n_cls), dtype=object)
        for j, name in enumerate(class_names):
            names[0, j] = np.array([name])
        _savemat(ds / "devkit" / "cars_train_annos.mat", {"annotations": struct(annos["cars_train"])})
        _savemat(ds / "cars_test_annos_withlabels.mat", {"annotations": struct(annos["cars_test"])})
        _savemat(ds / "devkit" / "cars_meta.mat", {"class_names": names})
    if with_split_json:
        _write_split(ds / "split_zhou_StanfordCars.json", split)
    return root


# ------------------------------------------------------------------------------------- OxfordFlowers
FLOWERS_APPEARANCE_ORDER = (3, 1, 5, 2, 4)  # first-appearance order of the classes in imagelabels.mat


def make_oxford_flowers_tree(
    root: str | Path,
    names: dict[int, str] = FLOWERS_NAMES,
    n_train: int = 4,
    n_val: int = 2,
    n_test: int = 3,
    with_split_json: bool = True,
    with_mat: bool = True,
    seed: int = 0,
) -> Path:
    """`oxford_flowers/jpg/image_NNNNN.jpg`, `imagelabels.mat`, `cat_to_name.json` and the split file.

    Image k (1-based) has class FLOWERS_APPEARANCE_ORDER[(k-1) mod 5] (restricted to `names`), so
    classes are interleaved and first appear out of numeric order. `with_mat` needs scipy.
    """
    root = Path(root)
    ds = root / "oxford_flowers"
    (ds / "jpg").mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    order = [c for c in FLOWERS_APPEARANCE_ORDER if c in names] + sorted(set(names) - set(FLOWERS_APPEARANCE_ORDER))
    labels: list[int] = []
    per_class: dict[int, list[str]] = {c: [] for c in names}
    for i in range(n_train + n_val + n_test):
        for cls in order:
            labels.append(cls)
            fname = f"image_{len(labels):05d}.jpg"
            per_class[cls].append(fname)
            write_jpeg(ds / "jpg" / fname, IMAGE_SIZE, class_colour(cls - 1), rng)
    (ds / "cat_to_name.json").write_text(json.dumps({str(c): n for c, n in names.items()}))
    if with_mat:
        _savemat(ds / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    if with_split_json:
        split: dict[str, list] = {"train": [], "val": [], "test": []}
        for cls in sorted(names):
            for i, fname in enumerate(per_class[cls]):
                _assign(split, i, n_train, n_val, [fname, cls - 1, names[cls]])
        _write_split(ds / "split_zhou_OxfordFlowers.json", split)
    return root


# ------------------------------------------------------------------ folder-per-class datasets
def _make_folder_dataset(
    ds: Path,
    image_subdir: str,
    folders: Sequence[str],
    image_name: Callable[[str, int], str],
    classname: Callable[[str], str],
    split_name: str,
    n_train: int,
    n_val: int,
    n_test: int,
    with_split_json: bool,
    seed: int,
) -> None:
    image_dir = ds / image_subdir
    rng = np.random.RandomState(seed)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(sorted(folders)):  # CoOp labels by sorted folder name
        (image_dir / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n_train + n_val + n_test):
            fname = image_name(folder, i)
            write_jpeg(image_dir / folder / fname, IMAGE_SIZE, class_colour(label), rng)
            _assign(split, i, n_train, n_val, [f"{folder}/{fname}", label, classname(folder)])
    if with_split_json:
        _write_split(ds / split_name, split)


def make_food101_tree(
    root: str | Path, classes: Sequence[str] = FOOD_CLASSES, n_train: int = 4, n_val: int = 2, n_test: int = 3,
    with_split_json: bool = True, seed: int = 0,
) -> Path:
    """`food-101/images/<class>/<id>.jpg` (+ meta/ and README.txt, which are not read) and the split file."""
    root = Path(root)
    ds = root / "food-101"
    _make_folder_dataset(
        ds, "images", classes, lambda folder, i: f"{1000003 + 7919 * i + 13 * len(folder)}.jpg", lambda f: f,
        "split_zhou_Food101.json", n_train, n_val, n_test, with_split_json, seed,
    )
    (ds / "meta").mkdir(exist_ok=True)
    (ds / "meta" / "classes.txt").write_text("\n".join(sorted(classes)) + "\n")
    (ds / "README.txt").write_text("Food-101 (tiny test copy)\n")
    return root


def make_dtd_tree(
    root: str | Path, classes: Sequence[str] = DTD_CLASSES, n_train: int = 4, n_val: int = 2, n_test: int = 3,
    with_split_json: bool = True, seed: int = 0,
) -> Path:
    """`dtd/images/<category>/<category>_NNNN.jpg` (+ imdb/, labels/ and a hidden file) and the split file."""
    root = Path(root)
    ds = root / "dtd"
    _make_folder_dataset(
        ds, "images", classes, lambda folder, i: f"{folder}_{i + 2:04d}.jpg", lambda f: f,
        "split_zhou_DescribableTextures.json", n_train, n_val, n_test, with_split_json, seed,
    )
    for extra in ("imdb", "labels"):
        (ds / extra).mkdir(exist_ok=True)
    (ds / "labels" / "train1.txt").write_text(f"{sorted(classes)[0]}/{sorted(classes)[0]}_0002.jpg\n")
    # Hidden files inside the image tree must be skipped, as CoOp's listdir_nohidden does.
    (ds / "images" / sorted(classes)[0] / ".directory").write_text("[Dolphin]\n")
    return root


def make_eurosat_tree(
    root: str | Path, classes: Sequence[str] = EUROSAT_CLASSES, n_train: int = 4, n_val: int = 2, n_test: int = 3,
    with_split_json: bool = True, seed: int = 0,
) -> Path:
    """`eurosat/2750/<Class>/<Class>_<n>.jpg` and the split file (class names are CoOp's renames)."""
    from datasets.eurosat import NEW_CNAMES

    root = Path(root)
    _make_folder_dataset(
        root / "eurosat", "2750", classes, lambda folder, i: f"{folder}_{i + 1}.jpg", lambda f: NEW_CNAMES[f],
        "split_zhou_EuroSAT.json", n_train, n_val, n_test, with_split_json, seed,
    )
    return root


# ------------------------------------------------------------------------------- shared checks
def replay_folder_split(image_dir: str, seed: int, p_trn: float = 0.5, p_val: float = 0.2) -> tuple[list, list, list]:
    """Independent replay of CoOp's 50/20/30 folder split: sorted categories, listdir order, shuffle, round()."""
    random.seed(seed)
    out: tuple[list, list, list] = ([], [], [])
    for category in sorted(c for c in os.listdir(image_dir) if not c.startswith(".")):
        images = [os.path.join(image_dir, category, f) for f in os.listdir(os.path.join(image_dir, category)) if not f.startswith(".")]
        random.shuffle(images)
        n_trn, n_val = round(len(images) * p_trn), round(len(images) * p_val)
        out[0].extend(images[:n_trn])
        out[1].extend(images[n_trn : n_trn + n_val])
        out[2].extend(images[n_trn + n_val :])
    return out


def check_fewshot_cache(dataset_cls: type, root: Path, name: str, num_classes: int, k: int = 5, seed: int = 3) -> None:
    """K-shot train, min(K, 4)-shot val drawn from the full splits, cached once and then reused."""
    full = dataset_cls(coop_cfg(root, name))
    cfg = coop_cfg(root, name, num_shots=k, seed=seed)
    random.seed(0)
    first = dataset_cls(cfg)
    cache = Path(first.dataset_dir) / "split_fewshot" / f"shot_{k}-seed_{seed}.pkl"
    assert cache.is_file(), cache
    assert Counter(x.label for x in first.train_x) == {y: k for y in range(num_classes)}
    assert Counter(x.label for x in first.val) == {y: min(k, 4) for y in range(num_classes)}
    assert set(first.train_x) <= set(full.train_x) and set(first.val) <= set(full.val)
    assert first.test == full.test  # the test split is never subsampled by shots
    assert first.classnames == full.classnames
    mtime = cache.stat().st_mtime_ns
    # A second build must load the cache: sampling would raise, and a new random state must not matter.
    boom = mock.Mock(side_effect=AssertionError("few-shot sampling ran although a cache exists"))
    with mock.patch.object(dataset_cls, "generate_fewshot_dataset", boom):
        random.seed(12345)
        second = dataset_cls(cfg)
    assert second.train_x == first.train_x and second.val == first.val
    assert cache.stat().st_mtime_ns == mtime


def check_base_new(dataset_cls: type, root: Path, name: str, classnames: Sequence[str], k: int = 2) -> None:
    """Odd class count: base keeps the first ceil(n/2) labels, new the rest, both relabelled from 0,
    and both runs share one few-shot cache (sampling happens before the class split)."""
    n = len(classnames)
    m = (n + 1) // 2
    full = dataset_cls(coop_cfg(root, name))
    base = dataset_cls(coop_cfg(root, name, num_shots=k, subsample="base"))
    new = dataset_cls(coop_cfg(root, name, num_shots=k, subsample="new"))
    assert base.classnames == list(classnames[:m]) and base.num_classes == m
    assert new.classnames == list(classnames[m:]) and new.num_classes == n - m
    for ds, offset in ((base, 0), (new, m)):
        for part in (ds.train_x, ds.val, ds.test):
            assert sorted({x.label for x in part}) == list(range(ds.num_classes))
            assert all(x.classname == classnames[x.label + offset] for x in part)
        assert Counter(x.label for x in ds.train_x) == {y: k for y in range(ds.num_classes)}
        # Test keeps every image of the selected classes, relabelled.
        expected_test = [(x.impath, x.label - offset) for x in full.test if offset <= x.label < offset + ds.num_classes]
        assert [(x.impath, x.label) for x in ds.test] == expected_test
    caches = sorted(p.name for p in (Path(base.dataset_dir) / "split_fewshot").iterdir())
    assert caches == [f"shot_{k}-seed_1.pkl"]
