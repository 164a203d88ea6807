"""The demo datasets: procedural colour x shape images generated on first use.

Importing this module (as `import demo` does) registers DemoShapes, DemoShapesSketch and
DemoSymbols in DATASET_REGISTRY; the project's `datasets` package does not know them.

Same layout and code path as a real dataset (image folders, a CoOp-format split file, the
few-shot cache, base/new subsampling), so everything that runs on a real dataset runs here::

    <root>/demo_shapes/          DemoShapes:       48 classes (8 colours x 6 shapes), filled shapes
    <root>/demo_shapes_sketch/   DemoShapesSketch: the same 48 classes as noisy outlines (domain shift)
    <root>/demo_symbols/         DemoSymbols:      32 other classes (8 colours x 4 shapes), cross-dataset
      images/<color>_<shape>/<color>_<shape>_NNNN.png
      split_<DatasetName>.json
      split_fewshot/             few-shot caches, written on first use

`<root>` is DATASET.ROOT (--root) when set; when it is empty it defaults to
``$CLIP_ADAPT_DEMO_DATA`` or ``~/.cache/clip_adapt/demo_data``. A missing dataset folder is
generated there (a few seconds, atomically: a temporary folder renamed into place).
"""
from __future__ import annotations

import os

from demo.world import DEMO_DATASETS
from engine.data import DATASET_REGISTRY, DatasetBase

__all__ = ["DemoShapes", "DemoShapesSketch", "DemoSymbols"]


class _DemoDataset(DatasetBase):
    """A demo dataset: generated when missing, then read like any CoOp dataset."""

    dataset_dir = ""
    docs_anchor = "demo-world"
    required_paths = ("images",)
    generates_split = False  # the generator writes the split file with the images

    def __init__(self, cfg) -> None:
        # Imported here, not at the top: `import demo` imports this module, and `python -m
        # demo.make_data` must find demo.make_data not yet imported (runpy would run it twice).
        from demo.make_data import ensure_dataset

        self.dataset_dir = ensure_dataset(type(self).dataset_dir, cfg.DATASET.ROOT)
        self.image_dir = self.require_dir(os.path.join(self.dataset_dir, "images"), "image folder")
        self.split_path = os.path.join(self.dataset_dir, type(self).split_file)
        train, val, test = self.read_split(self.split_path, self.image_dir)
        train, val = self.load_or_generate_fewshot(cfg, self.dataset_dir, train, val)
        train, val, test = self.subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)


@DATASET_REGISTRY.register()
class DemoShapes(_DemoDataset):
    """Main demo dataset: 48 colour x shape classes (base/new: 24/24)."""

    dataset_dir = "demo_shapes"
    split_file = DEMO_DATASETS[dataset_dir].split_file
    official_counts = DEMO_DATASETS[dataset_dir].counts


@DATASET_REGISTRY.register()
class DemoShapesSketch(_DemoDataset):
    """Domain-shifted DemoShapes: the same 48 classes drawn as outlines on heavy noise."""

    dataset_dir = "demo_shapes_sketch"
    split_file = DEMO_DATASETS[dataset_dir].split_file
    official_counts = DEMO_DATASETS[dataset_dir].counts


@DATASET_REGISTRY.register()
class DemoSymbols(_DemoDataset):
    """Cross-dataset target: 32 classes (8 colours x heart/moon/arrow/pentagon), none shared with DemoShapes."""

    dataset_dir = "demo_symbols"
    split_file = DEMO_DATASETS[dataset_dir].split_file
    official_counts = DEMO_DATASETS[dataset_dir].counts
