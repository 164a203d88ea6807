"""The four test-only ImageNet variants used for domain generalisation: V2, Sketch, A and R.

Each folder holds a copy of ImageNet's `classnames.txt` (see DATASETS.md). The datasets have no
val split, no few-shot sampling and no base/new subsampling: train_x = test = all images.

Layouts under DATASET.ROOT::

    imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg   label = folder number
    imagenet-sketch/images/<wnid>/*                                      label = sorted folder index
    imagenet-adversarial/imagenet-a/<wnid>/*   (200 wnids, README.txt)   label = sorted folder index
    imagenet-rendition/imagenet-r/<wnid>/*     (200 wnids, README.txt)   label = sorted folder index

ImageNet-A and -R are 200-class subsets, labelled 0..199 by sorted wnid and named through
classnames.txt; that is the order of the 200 columns the original benchmark code selects from
1000-way logits, so both evaluation styles agree.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict

from engine.data import DATASET_REGISTRY, DatasetBase, DatasetError, Datum
from engine.utils import listdir_nohidden

from datasets.imagenet import read_classnames

__all__ = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]

logger = logging.getLogger(__name__)

# Top-level files of the A/R archives that are not class folders.
TO_BE_IGNORED = ("README.txt",)


class _ImageNetTestVariant(DatasetBase):
    """Shared reader: classnames.txt + one image folder of class sub-folders (not registered)."""

    image_subdir: str = ""
    split_file = None
    generates_split = False

    @classmethod
    def extra_checks(cls, dataset_dir: str) -> list[str]:
        """Class folders that classnames.txt cannot name (a wrong or partial copy of the file)."""
        text_file = os.path.join(dataset_dir, "classnames.txt")
        image_dir = os.path.join(dataset_dir, cls.image_subdir)
        if not (os.path.isfile(text_file) and os.path.isdir(image_dir)):
            return []  # required_paths reports these
        try:
            cls._read_items(image_dir, read_classnames(text_file, cls.docs_ref()), list_images=False)
        except DatasetError as exc:
            return [str(exc)]
        return []

    def __init__(self, cfg) -> None:
        self.dataset_dir = self.resolve_dataset_dir(cfg)
        self.image_dir = self.require_dir(os.path.join(self.dataset_dir, self.image_subdir), "image folder")
        classnames = read_classnames(os.path.join(self.dataset_dir, "classnames.txt"), self.docs_ref())
        if cfg.DATASET.SUBSAMPLE_CLASSES != "all" or cfg.DATASET.NUM_SHOTS >= 1:
            # As in the originals: a test-only set is always used whole.
            logger.warning(
                "%s is test-only: DATASET.NUM_SHOTS and DATASET.SUBSAMPLE_CLASSES are ignored.", type(self).__name__
            )
        data = self._read_items(self.image_dir, classnames)
        super().__init__(train_x=data, test=data)

    @classmethod
    def _label_folders(cls, image_dir: str, classnames: "OrderedDict[str, str]") -> list[tuple[int, str, str]]:
        """(label, folder name, wnid) per class: the sorted wnid folders, label = position."""
        folders = sorted(
            name for name in listdir_nohidden(image_dir)
            if name not in TO_BE_IGNORED and os.path.isdir(os.path.join(image_dir, name))
        )
        if not folders:
            raise DatasetError(f"{cls.__name__}: {image_dir} has no class folders. See {cls.docs_ref()}.")
        unknown = [wnid for wnid in folders if wnid not in classnames]
        if unknown:
            raise DatasetError(
                f"{cls.__name__}: folder(s) {unknown[:3]} in {image_dir} have no entry in classnames.txt "
                f"({len(unknown)} missing). Copy ImageNet's classnames.txt into {os.path.dirname(image_dir)}. "
                f"See {cls.docs_ref()}."
            )
        return [(label, wnid, wnid) for label, wnid in enumerate(folders)]

    @classmethod
    def _read_items(
        cls, image_dir: str, classnames: "OrderedDict[str, str]", list_images: bool = True
    ) -> list[Datum]:
        """All images, labelled per `_label_folders`; `list_images=False` only validates the folders."""
        folders = cls._label_folders(image_dir, classnames)
        items: list[Datum] = []
        if not list_images:
            return items
        for label, folder, wnid in folders:
            class_dir = os.path.join(image_dir, folder)
            classname = classnames[wnid]
            # Just listed, so skip the per-file stat.
            items.extend(
                Datum(os.path.join(class_dir, name), label, 0, classname, check_exists=False)
                for name in listdir_nohidden(class_dir)
            )
        return items


@DATASET_REGISTRY.register()
class ImageNetV2(_ImageNetTestVariant):
    """ImageNetV2 (matched frequency): folder `k` holds class k of the standard sorted-wnid order."""

    dataset_dir = "imagenetv2"
    docs_anchor = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"
    required_paths = (image_subdir, "classnames.txt")
    official_counts = {"classes": 1000, "train": 10000, "test": 10000}

    @classmethod
    def extra_checks(cls, dataset_dir: str) -> list[str]:
        """Also: labels go through classnames.txt *positions*, so the file must be in sorted-wnid order."""
        problems = super().extra_checks(dataset_dir)
        text_file = os.path.join(dataset_dir, "classnames.txt")
        if os.path.isfile(text_file) and not problems:
            wnids = list(read_classnames(text_file, cls.docs_ref()))
            if wnids != sorted(wnids):
                problems.append(
                    f"{text_file} is not in sorted wnid order, so ImageNetV2's numbered folders would get "
                    f"the wrong names. Copy ImageNet's standard classnames.txt. See {cls.docs_ref()}."
                )
        return problems

    @classmethod
    def _label_folders(cls, image_dir: str, classnames: "OrderedDict[str, str]") -> list[tuple[int, str, str]]:
        """Folder `k` is label k, named by line k of classnames.txt (1000 lines for the real file)."""
        wnids = list(classnames)
        missing = [str(k) for k in range(len(wnids)) if not os.path.isdir(os.path.join(image_dir, str(k)))]
        if missing:
            raise DatasetError(
                f"ImageNetV2: {image_dir} lacks the numbered class folder(s) {missing[:3]} ({len(missing)} "
                f"missing; classnames.txt has {len(wnids)} classes, folders 0..{len(wnids) - 1} are expected). "
                f"See {cls.docs_ref()}."
            )
        return [(label, str(label), wnid) for label, wnid in enumerate(wnids)]


@DATASET_REGISTRY.register()
class ImageNetSketch(_ImageNetTestVariant):
    """ImageNet-Sketch: 1000 wnid folders of sketches."""

    dataset_dir = "imagenet-sketch"
    docs_anchor = "imagenetsketch"
    image_subdir = "images"
    required_paths = (image_subdir, "classnames.txt")
    official_counts = {"classes": 1000, "train": 50889, "test": 50889}


@DATASET_REGISTRY.register()
class ImageNetA(_ImageNetTestVariant):
    """ImageNet-A (natural adversarial examples): 200 of the 1000 classes."""

    dataset_dir = "imagenet-adversarial"
    docs_anchor = "imageneta"
    image_subdir = "imagenet-a"
    required_paths = (image_subdir, "classnames.txt")
    official_counts = {"classes": 200, "train": 7500, "test": 7500}


@DATASET_REGISTRY.register()
class ImageNetR(_ImageNetTestVariant):
    """ImageNet-R (renditions): 200 of the 1000 classes."""

    dataset_dir = "imagenet-rendition"
    docs_anchor = "imagenetr"
    image_subdir = "imagenet-r"
    required_paths = (image_subdir, "classnames.txt")
    official_counts = {"classes": 200, "train": 30000, "test": 30000}
