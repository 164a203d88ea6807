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

from engine.data import DATASET_REGISTRY, Datum, SplitFileDataset

__all__ = ["Food101"]


@DATASET_REGISTRY.register()
class Food101(SplitFileDataset):
    """Food-101 with CoOp's split file, few-shot cache and base/new class subsampling."""

    dataset_dir = "food-101"
    docs_anchor = "food101"
    image_subdir = "images"
    required_paths = (image_subdir,)
    split_file = "split_zhou_Food101.json"
    generates_split = True
    official_counts = {"classes": 101, "train": 50500, "val": 20200, "test": 30300}

    def generate_split(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """CoOp's 50/20/30 split per class folder."""
        return self.read_and_split_data(self.image_dir)
