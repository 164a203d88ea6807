"""Oxford-IIIT Pets (Parkhi et al., 2012) as used by CoOp: 37 cat and dog breeds.

Layout under DATASET.ROOT (see DATASETS.md#oxfordpets)::

    oxford_pets/
      images/<Breed>_<n>.jpg            (e.g. Abyssinian_100.jpg, american_bulldog_12.jpg)
      annotations/trainval.txt          (only read when the split file is missing)
      annotations/test.txt
      split_zhou_OxfordPets.json        (CoOp's split; generated and saved when missing)
      split_fewshot/                    (few-shot caches, written on first use)

Annotation lines are `<image name> <class 1..37> <species 1|2> <breed id>`. The class name is the
image name without its trailing `_<n>`, lower-cased (`Abyssinian_100` -> `abyssinian`); trainval is
split 80/20 per class, test.txt is the test set.
"""
from __future__ import annotations

import os

from engine.data import DATASET_REGISTRY, DatasetError, Datum, SplitFileDataset

__all__ = ["OxfordPets"]


@DATASET_REGISTRY.register()
class OxfordPets(SplitFileDataset):
    """Oxford-IIIT Pets with CoOp's split file, few-shot cache and base/new class subsampling."""

    dataset_dir = "oxford_pets"
    docs_anchor = "oxfordpets"
    image_subdir = "images"
    required_paths = (image_subdir,)
    split_file = "split_zhou_OxfordPets.json"
    generates_split = True
    official_counts = {"classes": 37, "train": 2944, "val": 736, "test": 3669}
    # Only needed when the split file has to be generated.
    raw_files = ("annotations/trainval.txt", "annotations/test.txt")

    def generate_split(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """80/20 per-class split of annotations/trainval.txt; annotations/test.txt is the test set."""
        trainval = self.read_data("trainval.txt")
        test = self.read_data("test.txt")
        train, val = self.split_trainval(trainval)
        return train, val, test

    def read_data(self, split_file: str) -> list[Datum]:
        """Items of `annotations/<split_file>`, in file order."""
        filepath = self.require_file(os.path.join(self.dataset_dir, "annotations", split_file), "annotation file")
        items = []
        with open(filepath, "r") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.strip()
                if not line or line.startswith("#"):  # the official list.txt style has '#' headers
                    continue
                fields = line.split()
                if len(fields) != 4 or not fields[1].isdigit():
                    raise DatasetError(
                        f"OxfordPets: {filepath} line {lineno} should be '<image name> <class 1..37> "
                        f"<species> <breed id>', got {line!r}. See {self.docs_ref()}."
                    )
                imname, label = fields[0], int(fields[1]) - 1  # 1-based in the file
                breed = "_".join(imname.split("_")[:-1]).lower()
                impath = os.path.join(self.image_dir, imname + ".jpg")
                try:
                    items.append(Datum(impath=impath, label=label, classname=breed))
                except FileNotFoundError as exc:
                    raise DatasetError(
                        f"OxfordPets: {filepath} line {lineno} names {impath}, which does not exist. "
                        f"Is the image folder complete? See {self.docs_ref()}."
                    ) from exc
        if not items:
            raise DatasetError(f"OxfordPets: annotation file {filepath} lists no images. See {self.docs_ref()}.")
        return items
