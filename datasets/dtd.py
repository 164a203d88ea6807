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

from engine.data import DATASET_REGISTRY, Datum, SplitFileDataset

__all__ = ["DescribableTextures"]


@DATASET_REGISTRY.register()
class DescribableTextures(SplitFileDataset):
    """DTD with CoOp's split file, few-shot cache and base/new class subsampling."""

    dataset_dir = "dtd"
    docs_anchor = "dtd"
    image_subdir = "images"
    required_paths = (image_subdir,)
    split_file = "split_zhou_DescribableTextures.json"
    generates_split = True
    official_counts = {"classes": 47, "train": 2820, "val": 1128, "test": 1692}

    def generate_split(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """CoOp's 50/20/30 split per class folder."""
        return self.read_and_split_data(self.image_dir)
