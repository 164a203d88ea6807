"""EuroSAT (Helber et al., 2019), RGB version, as used by CoOp: 10 land-use classes.

Layout under DATASET.ROOT (see DATASETS.md#eurosat)::

    eurosat/
      2750/<Class>/<Class>_<n>.jpg      (e.g. 2750/AnnualCrop/AnnualCrop_1.jpg)
      split_zhou_EuroSAT.json           (CoOp's split; generated and saved when missing)
      split_fewshot/

Labels follow the sorted folder names; the class names are CoOp's descriptive renames
(`AnnualCrop` -> `Annual Crop Land`, ...). The split is CoOp's own 50/20/30 per class.
"""
from __future__ import annotations

import os

from engine.data import DATASET_REGISTRY, Datum, SplitFileDataset
from engine.utils import listdir_nohidden

__all__ = ["EuroSAT", "NEW_CNAMES"]

# Folder name -> class name used in prompts (applied after labelling by sorted folder name).
NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(SplitFileDataset):
    """EuroSAT with CoOp's split file, few-shot cache and base/new class subsampling."""

    dataset_dir = "eurosat"
    docs_anchor = "eurosat"
    image_subdir = "2750"
    required_paths = (image_subdir,)
    split_file = "split_zhou_EuroSAT.json"
    generates_split = True
    official_counts = {"classes": 10, "train": 13500, "val": 5400, "test": 8100}

    @classmethod
    def extra_checks(cls, dataset_dir: str) -> list[str]:
        """Newer mirrors unpack to EuroSAT_RGB/ instead of 2750/; say how to fix that."""
        image_dir = os.path.join(dataset_dir, "2750")
        if not os.path.isdir(image_dir):
            for alt in ("EuroSAT_RGB", "EuroSAT"):
                if os.path.isdir(os.path.join(dataset_dir, alt)):
                    return [
                        f"{image_dir} is missing but {os.path.join(dataset_dir, alt)} exists: rename it to "
                        f"2750 (CoOp's layout). See {cls.docs_ref()}."
                    ]
            return []
        unknown = sorted(set(listdir_nohidden(image_dir)) - set(NEW_CNAMES))
        if unknown:
            return [
                f"{image_dir} contains unexpected entries {unknown}; it should hold only the 10 class "
                f"folders {sorted(NEW_CNAMES)}. See {cls.docs_ref()}."
            ]
        return []

    def generate_split(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """CoOp's 50/20/30 split per class folder."""
        return self.read_and_split_data(self.image_dir, new_cnames=NEW_CNAMES)
