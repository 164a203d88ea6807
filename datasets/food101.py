"""Food-101 (Bossard et al., 2014) as used by CoOp: 101 dishes.

Layout under DATASET.ROOT (see DATASETS.md#food101)::

    food-101/
      images/<class>/<id>.jpg           (e.g. images/apple_pie/1005649.jpg)
      meta/, README.txt, license_agreement.txt   (part of the archive; not read)
      split_zhou_Food101.json           (CoOp's split; generated and saved when missing)
      split_fewshot/

Class names are the folder names (`apple_pie`; trainers replace `_` with a space) and labels
follow their sorted order. CoOp ignores the official meta/ train/test lists and uses its own
50/20/30 split per class.
"""
from __future__ import annotations

import os

from engine.data import DATASET_REGISTRY, DatasetBase

__all__ = ["Food101"]


@DATASET_REGISTRY.register()
class Food101(DatasetBase):
    """Food-101 with CoOp's split file, few-shot cache and base/new class subsampling."""

    dataset_dir = "food-101"
    docs_anchor = "food101"
    required_paths = ("images",)
    split_file = "split_zhou_Food101.json"
    generates_split = True
    official_counts = {"classes": 101, "train": 50500, "val": 20200, "test": 30300}

    def __init__(self, cfg) -> None:
        self.dataset_dir = self.resolve_dataset_dir(cfg)
        self.image_dir = self.require_dir(os.path.join(self.dataset_dir, "images"), "image folder")
        self.split_path = os.path.join(self.dataset_dir, self.split_file)

        if os.path.exists(self.split_path):
            train, val, test = self.read_split(self.split_path, self.image_dir)
        else:
            train, val, test = self.read_and_split_data(self.image_dir)
            self.save_split(train, val, test, self.split_path, self.image_dir)

        train, val = self.load_or_generate_fewshot(cfg, self.dataset_dir, train, val)
        train, val, test = self.subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)
