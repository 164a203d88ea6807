"""Stanford Cars (Krause et al., 2013) as used by CoOp: 196 car models.

Layout under DATASET.ROOT (see DATASETS.md#stanfordcars)::

    stanford_cars/
      cars_train/00001.jpg ...
      cars_test/00001.jpg ...
      devkit/cars_train_annos.mat       (only read when the split file is missing)
      devkit/cars_meta.mat
      cars_test_annos_withlabels.mat
      split_zhou_StanfordCars.json      (CoOp's split; paths like `cars_train/00001.jpg`,
                                         relative to `stanford_cars/` itself)
      split_fewshot/

The class name is `cars_meta.mat`'s name with its last word (the year) moved to the front:
`AM General Hummer SUV 2000` -> `2000 AM General Hummer SUV`. The train annotations are split
80/20 per class; the labelled test annotations are the test set. Reading the .mat files needs
scipy, which is imported only on that path.
"""
from __future__ import annotations

import os
from typing import Any

from engine.data import DATASET_REGISTRY, DatasetBase, DatasetError, Datum, SplitFileDataset

__all__ = ["StanfordCars", "load_mat", "year_first"]


def load_mat(dataset: DatasetBase, path: str, key: str) -> Any:
    """`scipy.io.loadmat(path)[key]`, with clear errors for a missing scipy, file or key."""
    dataset.require_file(path, "annotation file")
    name = type(dataset).__name__
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # scipy is only needed to regenerate a split
        raise ImportError(
            f"{name}: reading {path} needs scipy (`pip install scipy`). Alternatively download CoOp's "
            f"{dataset.split_file} so the .mat files are not read. See {dataset.docs_ref()}."
        ) from exc
    try:
        mat = loadmat(path)
    except Exception as exc:
        raise DatasetError(f"{name}: {path} could not be read as a .mat file ({exc}). See {dataset.docs_ref()}.") from exc
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{name}: {path} has no variable {key!r} (found {found}). See {dataset.docs_ref()}.")
    return mat[key]


def year_first(name: str) -> str:
    """Move the last word (the model year) to the front, as CoOp does."""
    words = name.split(" ")
    return " ".join([words[-1]] + words[:-1])


@DATASET_REGISTRY.register()
class StanfordCars(SplitFileDataset):
    """Stanford Cars with CoOp's split file, few-shot cache and base/new class subsampling."""

    dataset_dir = "stanford_cars"
    docs_anchor = "stanfordcars"
    # No single image folder: the split file's paths (`cars_train/...`, `cars_test/...`) are relative
    # to dataset_dir itself, and the image folders are only checked when the split is generated.
    image_subdir = None
    required_paths = ("cars_train", "cars_test")
    split_file = "split_zhou_StanfordCars.json"
    generates_split = True
    official_counts = {"classes": 196, "train": 6509, "val": 1635, "test": 8041}
    raw_files = ("devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat", "devkit/cars_meta.mat")

    def generate_split(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """80/20 per-class split of the train annotations; the labelled test annotations are the test set."""
        for folder in self.required_paths:
            self.require_dir(os.path.join(self.dataset_dir, folder), "image folder")
        trainval_file = os.path.join(self.dataset_dir, "devkit", "cars_train_annos.mat")
        test_file = os.path.join(self.dataset_dir, "cars_test_annos_withlabels.mat")
        meta_file = os.path.join(self.dataset_dir, "devkit", "cars_meta.mat")
        trainval = self.read_data("cars_train", trainval_file, meta_file)
        test = self.read_data("cars_test", test_file, meta_file)
        train, val = self.split_trainval(trainval)
        return train, val, test

    def read_data(self, image_dir: str, anno_file: str, meta_file: str) -> list[Datum]:
        """Items of one annotation .mat file (fields `fname`, 1-based `class`), in file order."""
        annos = load_mat(self, anno_file, "annotations")[0]
        class_names = load_mat(self, meta_file, "class_names")[0]
        items = []
        for i, anno in enumerate(annos):
            try:
                imname = str(anno["fname"][0])
                label = int(anno["class"][0, 0]) - 1  # 1-based in the file
            except (ValueError, IndexError, KeyError) as exc:
                raise DatasetError(
                    f"StanfordCars: entry {i} of {anno_file} lacks a usable 'fname'/'class' ({exc}); is this "
                    f"the labelled annotation file? See {self.docs_ref()}."
                ) from exc
            if not 0 <= label < len(class_names):
                raise DatasetError(
                    f"StanfordCars: entry {i} of {anno_file} has class {label + 1}, but {meta_file} names "
                    f"only {len(class_names)} classes. See {self.docs_ref()}."
                )
            impath = os.path.join(self.dataset_dir, image_dir, imname)
            classname = year_first(str(class_names[label][0]))
            try:
                items.append(Datum(impath=impath, label=label, classname=classname))
            except FileNotFoundError as exc:
                raise DatasetError(
                    f"StanfordCars: {anno_file} lists {impath}, which does not exist. "
                    f"Is {image_dir}/ complete? See {self.docs_ref()}."
                ) from exc
        return items
