"""Oxford Flowers-102 (Nilsback & Zisserman, 2008) as used by CoOp: 102 flower species.

Layout under DATASET.ROOT (see DATASETS.md#oxfordflowers)::

    oxford_flowers/
      jpg/image_00001.jpg ... image_08189.jpg
      imagelabels.mat                   (only read when the split file is missing)
      cat_to_name.json                  ({"1": "pink primrose", ...}; a separate download)
      split_zhou_OxfordFlowers.json     (CoOp's split; generated and saved when missing)
      split_fewshot/

`imagelabels.mat["labels"][0][i]` is the 1-based class of `jpg/image_{i+1:05d}.jpg`. CoOp ignores
the official setid.mat split: per class (in order of first appearance in the label file) the
images are shuffled and split 50/20/30 with Python's round(). The label is class - 1 and the
name is `cat_to_name.json[str(class)]`.
"""
from __future__ import annotations

import logging
import os
import random
from collections import defaultdict

from engine.data import DATASET_REGISTRY, DatasetError, Datum, SplitFileDataset
from engine.utils import read_json
from datasets.stanford_cars import load_mat

__all__ = ["OxfordFlowers"]

logger = logging.getLogger(__name__)


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitFileDataset):
    """Flowers-102 with CoOp's split file, few-shot cache and base/new class subsampling."""

    dataset_dir = "oxford_flowers"
    docs_anchor = "oxfordflowers"
    image_subdir = "jpg"
    required_paths = (image_subdir,)
    split_file = "split_zhou_OxfordFlowers.json"
    generates_split = True
    official_counts = {"classes": 102, "train": 4093, "val": 1633, "test": 2463}
    raw_files = ("imagelabels.mat", "cat_to_name.json")

    def generate_split(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """CoOp's 50/20/30 split of the labelled images (uses Python's `random`)."""
        self.label_file = os.path.join(self.dataset_dir, "imagelabels.mat")
        self.lab2cname_file = os.path.join(self.dataset_dir, "cat_to_name.json")
        self.require_file(self.lab2cname_file, "class-name file")
        labels = load_mat(self, self.label_file, "labels")[0]
        # Group by 1-based class in order of first appearance (the order CoOp iterates in).
        tracker: defaultdict = defaultdict(list)
        for i, label in enumerate(labels):
            tracker[int(label)].append(os.path.join(self.image_dir, f"image_{i + 1:05d}.jpg"))
        try:
            lab2cname = read_json(self.lab2cname_file)
        except Exception as exc:
            raise DatasetError(
                f"OxfordFlowers: {self.lab2cname_file} could not be parsed ({exc}). See {self.docs_ref()}."
            ) from exc

        logger.info("Splitting data into 50%% train, 20%% val, and 30%% test")
        train, val, test = [], [], []
        for label, impaths in tracker.items():
            cname = lab2cname.get(str(label)) if isinstance(lab2cname, dict) else None
            if cname is None:
                raise DatasetError(
                    f"OxfordFlowers: {self.lab2cname_file} has no name for class {label} (keys are the "
                    f"1-based class ids as strings, e.g. \"1\": \"pink primrose\"). See {self.docs_ref()}."
                )
            random.shuffle(impaths)
            n_total = len(impaths)
            n_train = round(n_total * 0.5)
            n_val = round(n_total * 0.2)
            if not (n_train > 0 and n_val > 0 and n_total - n_train - n_val > 0):
                raise DatasetError(
                    f"OxfordFlowers: class {label} has {n_total} images, too few for a 50/20/30 split."
                )
            parts = (impaths[:n_train], impaths[n_train : n_train + n_val], impaths[n_train + n_val :])
            for out, paths in zip((train, val, test), parts):
                for impath in paths:
                    try:
                        out.append(Datum(impath=impath, label=label - 1, classname=cname))
                    except FileNotFoundError as exc:
                        raise DatasetError(
                            f"OxfordFlowers: {self.label_file} labels {impath}, which does not exist. "
                            f"Is jpg/ complete? See {self.docs_ref()}."
                        ) from exc
        return train, val, test
