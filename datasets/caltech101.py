"""Caltech101 (Fei-Fei et al., 2004) as used by CoOp: 100 object classes, split 50/20/30.

Layout under DATASET.ROOT (see DATASETS.md#caltech101)::

    caltech-101/
      101_ObjectCategories/<category>/image_XXXX.jpg
      split_zhou_Caltech101.json      (CoOp's split; generated and saved when missing)
      split_fewshot/                  (few-shot caches, written on first use)
"""
from __future__ import annotations

from engine.data import DATASET_REGISTRY, Datum, SplitFileDataset

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
class Caltech101(SplitFileDataset):
    """Caltech101 with CoOp's split file, few-shot cache and base/new class subsampling."""

    dataset_dir = "caltech-101"
    docs_anchor = "caltech101"
    image_subdir = "101_ObjectCategories"
    required_paths = (image_subdir,)
    split_file = "split_zhou_Caltech101.json"
    generates_split = True
    official_counts = {"classes": 100, "train": 4128, "val": 1649, "test": 2465}

    def generate_split(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """CoOp's 50/20/30 split per class folder."""
        return self.read_and_split_data(self.image_dir, ignored=IGNORED, new_cnames=NEW_CNAMES)
