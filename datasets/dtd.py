"""Describable Textures (DTD; Cimpoi et al., 2014) as used by CoOp: 47 texture categories.

Layout under DATASET.ROOT (see DATASETS.md#dtd)::

    dtd/
      images/<category>/<category>_XXXX.jpg   (e.g. images/banded/banded_0002.jpg)
      imdb/, labels/                          (part of the archive; not read)
      split_zhou_DescribableTextures.json     (CoOp's split; generated and saved when missing)
      split_fewshot/

Class names are the folder names and labels follow their sorted order. CoOp ignores the official
ten splits in labels/ and uses its own 50/20/30 split per class.
"""
from __future__ import annotations

import os

from engine.data import DATASET_REGISTRY, DatasetBase

__all__ = ["DescribableTextures"]


@DATASET_REGISTRY.register()
class DescribableTextures(DatasetBase):
    """DTD with CoOp's split file, few-shot cache and base/new class subsampling."""

    dataset_dir = "dtd"
    docs_anchor = "dtd"
    required_paths = ("images",)
    split_file = "split_zhou_DescribableTextures.json"
    generates_split = True
    official_counts = {"classes": 47, "train": 2820, "val": 1128, "test": 1692}

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
