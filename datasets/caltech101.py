"""Caltech101 (Fei-Fei et al., 2004) as used by CoOp: 100 object classes, split 50/20/30.

Layout under DATASET.ROOT (see DATASETS.md#caltech101)::

    caltech-101/
      101_ObjectCategories/<category>/image_XXXX.jpg
      split_zhou_Caltech101.json      (CoOp's split; generated and saved when missing)
      split_fewshot/                  (few-shot caches, written on first use)
"""
from __future__ import annotations

import os

from engine.data import DATASET_REGISTRY, DatasetBase

__all__ = ["Caltech101", "IGNORED", "NEW_CNAMES"]

# Not object classes: the clutter folder and a duplicate of "Faces".
IGNORED = ("BACKGROUND_Google", "Faces_easy")
# Renames applied after labelling, so labels still follow the case-sensitive folder sort.
NEW_CNAMES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}


@DATASET_REGISTRY.register()
class Caltech101(DatasetBase):
    """Caltech101 with CoOp's split file, few-shot cache and base/new class subsampling."""

    dataset_dir = "caltech-101"
    docs_anchor = "caltech101"
    required_paths = ("101_ObjectCategories",)
    split_file = "split_zhou_Caltech101.json"
    generates_split = True
    official_counts = {"classes": 100, "train": 4128, "val": 1649, "test": 2465}

    def __init__(self, cfg) -> None:
        self.dataset_dir = self.resolve_dataset_dir(cfg)
        self.image_dir = self.require_dir(os.path.join(self.dataset_dir, "101_ObjectCategories"), "image folder")
        self.split_path = os.path.join(self.dataset_dir, "split_zhou_Caltech101.json")

        if os.path.exists(self.split_path):
            train, val, test = self.read_split(self.split_path, self.image_dir)
        else:
            train, val, test = self.read_and_split_data(self.image_dir, ignored=IGNORED, new_cnames=NEW_CNAMES)
            self.save_split(train, val, test, self.split_path, self.image_dir)

        train, val = self.load_or_generate_fewshot(cfg, self.dataset_dir, train, val)
        train, val, test = self.subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)
