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

from engine.data import DATASET_REGISTRY, DatasetBase, DatasetError, Datum

__all__ = ["SUN397", "clean_classname"]

RAW_FILES = ("ClassName.txt", "Training_01.txt", "Testing_01.txt")


def clean_classname(key: str) -> str:
    """`a/apartment_building/outdoor` -> `outdoor apartment_building` (letter dropped, rest reversed)."""
    return " ".join(key.split("/")[1:][::-1])


@DATASET_REGISTRY.register()
class SUN397(DatasetBase):
    """SUN397 with CoOp's split file (80/20 train/val from Training_01, Testing_01 as test)."""

    dataset_dir = "sun397"
    docs_anchor = "sun397"
    required_paths = ("SUN397",)
    split_file = "split_zhou_SUN397.json"
    generates_split = True
    official_counts = {"classes": 397, "train": 15880, "val": 3970, "test": 19850}

    @classmethod
    def extra_checks(cls, dataset_dir: str) -> list[str]:
        """Without the split file, the partition files are needed to generate it."""
        if os.path.isfile(os.path.join(dataset_dir, cls.split_file)):
            return []
        missing = [f for f in RAW_FILES if not os.path.isfile(os.path.join(dataset_dir, f))]
        if not missing:
            return []
        return [
            f"{os.path.join(dataset_dir, cls.split_file)} is missing and so are {missing}, needed to generate it. "
            f"Download CoOp's split_zhou_SUN397.json (or the SUN397 partitions). See {cls.docs_ref()}."
        ]

    def __init__(self, cfg) -> None:
        self.dataset_dir = self.resolve_dataset_dir(cfg)
        self.image_dir = self.require_dir(os.path.join(self.dataset_dir, "SUN397"), "image folder")
        self.split_path = os.path.join(self.dataset_dir, self.split_file)

        if os.path.exists(self.split_path):
            train, val, test = self.read_split(self.split_path, self.image_dir)
        else:
            # Strip the leading "/" of "/a/abbey": the rest is the lookup key.
            classnames = [line[1:] for line in self._read_lines("ClassName.txt")]
            cname2lab = {c: i for i, c in enumerate(classnames)}
            trainval = self.read_data(cname2lab, "Training_01.txt")
            test = self.read_data(cname2lab, "Testing_01.txt")
            train, val = self.split_trainval(trainval)
            self.save_split(train, val, test, self.split_path, self.image_dir)

        train, val = self.load_or_generate_fewshot(cfg, self.dataset_dir, train, val)
        train, val, test = self.subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    def _read_lines(self, filename: str) -> list[str]:
        """Stripped non-blank lines of `dataset_dir/filename`; a missing file names the fix."""
        path = os.path.join(self.dataset_dir, filename)
        return self.read_lines(
            path,
            f"SUN397: neither {self.split_path} nor {path} (needed to generate it) exists. Download "
            f"CoOp's split_zhou_SUN397.json into {self.dataset_dir}.",
        )

    def read_data(self, cname2lab: dict[str, int], text_file: str) -> list[Datum]:
        """Items of a partition file: `/a/abbey/sun_x.jpg` -> SUN397/a/abbey/sun_x.jpg, label of `a/abbey`."""
        items = []
        for line in self._read_lines(text_file):
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
