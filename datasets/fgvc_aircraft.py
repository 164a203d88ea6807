"""FGVC-Aircraft (Maji et al., 2013) as used by CoOp: 100 aircraft variants, official splits.

Layout under DATASET.ROOT (the `data/` folder of fgvc-aircraft-2013b, renamed; DATASETS.md#fgvcaircraft)::

    fgvc_aircraft/
      images/<image id>.jpg
      variants.txt                          (one variant name per line; label = line index)
      images_variant_train.txt              (<image id> <variant name>, per line)
      images_variant_val.txt
      images_variant_test.txt
      split_fewshot/                        (few-shot caches, written on first use)

There is no split JSON: the official files are read every time.
"""
from __future__ import annotations

import os

from engine.data import DATASET_REGISTRY, DatasetBase, DatasetError, Datum

__all__ = ["FGVCAircraft"]

SPLIT_FILES = {
    "train": "images_variant_train.txt",
    "val": "images_variant_val.txt",
    "test": "images_variant_test.txt",
}


@DATASET_REGISTRY.register()
class FGVCAircraft(DatasetBase):
    """FGVC-Aircraft variants with the official train/val/test, few-shot cache and base/new subsampling."""

    dataset_dir = "fgvc_aircraft"
    docs_anchor = "fgvcaircraft"
    required_paths = ("images", "variants.txt", *SPLIT_FILES.values())
    split_file = None
    generates_split = False
    official_counts = {"classes": 100, "train": 3334, "val": 3333, "test": 3333}

    def __init__(self, cfg) -> None:
        self.dataset_dir = self.resolve_dataset_dir(cfg)
        self.image_dir = self.require_dir(os.path.join(self.dataset_dir, "images"), "image folder")

        classnames = self._read_lines("variants.txt")
        cname2lab = {c: i for i, c in enumerate(classnames)}
        train = self.read_data(cname2lab, SPLIT_FILES["train"])
        val = self.read_data(cname2lab, SPLIT_FILES["val"])
        test = self.read_data(cname2lab, SPLIT_FILES["test"])

        train, val = self.load_or_generate_fewshot(cfg, self.dataset_dir, train, val)
        train, val, test = self.subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    def _read_lines(self, filename: str) -> list[str]:
        """Stripped non-blank lines of `dataset_dir/filename`; a missing file names the fix."""
        path = os.path.join(self.dataset_dir, filename)
        return self.read_lines(
            path,
            f"FGVCAircraft: expected file {path} is missing (it ships in fgvc-aircraft-2013b/data).",
        )

    def read_data(self, cname2lab: dict[str, int], split_file: str) -> list[Datum]:
        """Items of one split file: `<image id> <variant>` -> images/<id>.jpg with the variant's label."""
        items = []
        for line in self._read_lines(split_file):
            image_id, _, classname = line.partition(" ")
            if classname not in cname2lab:
                raise DatasetError(
                    f"FGVCAircraft: {split_file} names the variant {classname!r} (line {line!r}), which is not "
                    f"in variants.txt. Use the files of one fgvc-aircraft-2013b release. See {self.docs_ref()}."
                )
            impath = os.path.join(self.image_dir, image_id + ".jpg")
            try:
                items.append(Datum(impath=impath, label=cname2lab[classname], classname=classname))
            except FileNotFoundError as exc:
                raise DatasetError(
                    f"FGVCAircraft: {split_file} lists {impath}, which does not exist. Is images/ complete? "
                    f"See {self.docs_ref()}."
                ) from exc
        if not items:
            raise DatasetError(f"FGVCAircraft: {split_file} lists no images. See {self.docs_ref()}.")
        return items
