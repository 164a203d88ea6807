"""SUN397 (Xiao et al., 2010) as used by CoOp: 397 scene classes, CoOp's split of partition 01.

Layout under DATASET.ROOT (see DATASETS.md#sun397)::

    sun397/
      SUN397/<letter>/<scene>[/<sub-scene>]/sun_*.jpg
      split_zhou_SUN397.json       (CoOp's split; generated and saved when missing)
      ClassName.txt                (only needed to generate the split: lines like /a/abbey)
      Training_01.txt              (idem: lines like /a/abbey/sun_xxx.jpg)
      Testing_01.txt
      split_fewshot/               (few-shot caches, written on first use)

Class names drop the letter and reverse the remaining parts: `a/apartment_building/outdoor`
becomes `outdoor apartment_building`.
"""
from __future__ import annotations

import os

from engine.data import DATASET_REGISTRY, DatasetError, Datum, SplitFileDataset

__all__ = ["SUN397", "clean_classname"]

RAW_FILES = ("ClassName.txt", "Training_01.txt", "Testing_01.txt")


def clean_classname(key: str) -> str:
    """`a/apartment_building/outdoor` -> `outdoor apartment_building` (letter dropped, rest reversed)."""
    return " ".join(key.split("/")[1:][::-1])


@DATASET_REGISTRY.register()
class SUN397(SplitFileDataset):
    """SUN397 with CoOp's split file (80/20 train/val from Training_01, Testing_01 as test)."""

    dataset_dir = "sun397"
    docs_anchor = "sun397"
    image_subdir = "SUN397"
    required_paths = (image_subdir,)
    split_file = "split_zhou_SUN397.json"
    generates_split = True
    raw_files = RAW_FILES
    official_counts = {"classes": 397, "train": 15880, "val": 3970, "test": 19850}

    def generate_split(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """80/20 per-class split of Training_01.txt; Testing_01.txt is the test set."""
        # Strip the leading "/" of "/a/abbey": the rest is the lookup key.
        classnames = [line[1:] for line in self.read_raw_lines("ClassName.txt")]
        cname2lab = {c: i for i, c in enumerate(classnames)}
        trainval = self.read_data(cname2lab, "Training_01.txt")
        test = self.read_data(cname2lab, "Testing_01.txt")
        train, val = self.split_trainval(trainval)
        return train, val, test

    def read_data(self, cname2lab: dict[str, int], text_file: str) -> list[Datum]:
        """Items of a partition file: `/a/abbey/sun_x.jpg` -> SUN397/a/abbey/sun_x.jpg, label of `a/abbey`."""
        items = []
        for line in self.read_raw_lines(text_file):
            imname = line[1:]  # drop the leading "/"
            key = os.path.dirname(imname)
            if key not in cname2lab:
                raise DatasetError(
                    f"SUN397: {text_file} lists {line!r}, whose class {key!r} is not in ClassName.txt. "
                    f"See {self.docs_ref()}."
                )
            impath = os.path.join(self.image_dir, imname)
            try:
                items.append(Datum(impath=impath, label=cname2lab[key], classname=clean_classname(key)))
            except FileNotFoundError as exc:
                raise DatasetError(
                    f"SUN397: {text_file} lists {impath}, which does not exist. See {self.docs_ref()}."
                ) from exc
        return items
