"""ImageNet (ILSVRC-2012) as used by CoOp: 1000 classes, the 50,000 val images as test (and val).

Layout under DATASET.ROOT (see DATASETS.md#imagenet)::

    imagenet/
      images/train/<wnid>/*.JPEG      (1000 class folders)
      images/val/<wnid>/*.JPEG        (val must be sorted into class folders too)
      classnames.txt                  (<wnid> <class name>, one line per class, sorted wnid order)
      preprocessed.pkl                (item lists, written on first use)
      split_fewshot/                  (few-shot caches, written on first use; train only)

Labels are the index of the wnid folder in sorted order; names come from classnames.txt.
`preprocessed.pkl` is read with the engine's restricted unpickler, so both our files (paths
relative to the dataset folder) and the original CoOp files (absolute paths, Dassl `Datum`) load.

Command-line helpers (run from the repository root)::

    python -m datasets.prepare_imagenet --write-classnames $DATA          # classnames.txt from open_clip's names
    python -m datasets.prepare_imagenet --sort-val $DATA --val-labels LOC_val_solution.csv
"""
from __future__ import annotations

import csv
import logging
import os
import pickle
import re
import shutil
from collections import OrderedDict

from engine.data import DATASET_REGISTRY, DatasetBase, DatasetError, Datum
from engine.data.datasets import load_fewshot_pickle
from engine.errors import MissingFileError, UserError
from engine.utils import atomic_write_bytes, listdir_nohidden

__all__ = ["ImageNet", "read_classnames", "write_classnames", "sort_val_into_folders", "OverwriteRefusedError"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
WNID_PATTERN = re.compile(r"^n\d{8}$")
# Folders (under DATASET.ROOT) of the test-only variants that need their own copy of classnames.txt.
VARIANT_DIRS = ("imagenetv2", "imagenet-sketch", "imagenet-adversarial", "imagenet-rendition")


def read_classnames(text_file: str, docs_ref: str = "DATASETS.md#imagenet") -> "OrderedDict[str, str]":
    """Read `<wnid> <class name>` lines into an OrderedDict wnid -> name, keeping file order.

    The name is everything after the first space (names contain spaces). Blank lines are skipped.
    """
    if not os.path.isfile(text_file):
        raise MissingFileError(
            f"Class-name file not found: {text_file}. It lists '<wnid> <class name>' per class; create it "
            f"with `python -m datasets.prepare_imagenet --write-classnames <DATASET.ROOT>`. See {docs_ref}."
        )
    classnames: OrderedDict[str, str] = OrderedDict()
    with open(text_file, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            wnid, _, name = line.partition(" ")
            if not name:
                raise DatasetError(
                    f"{text_file} line {lineno}: expected '<wnid> <class name>', got {line!r}. See {docs_ref}."
                )
            classnames[wnid] = name
    if not classnames:
        raise DatasetError(f"Class-name file {text_file} is empty. See {docs_ref}.")
    return classnames


def _class_folders(directory: str) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `directory` (files such as README.txt are skipped)."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _loose_images(directory: str) -> int:
    """How many image files sit directly in `directory` (not in a class folder)."""
    return sum(
        1 for e in os.scandir(directory) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )


@DATASET_REGISTRY.register()
class ImageNet(DatasetBase):
    """ImageNet with CoOp's item cache, few-shot cache (train only), base/new subsampling; val = test."""

    dataset_dir = "imagenet"
    docs_anchor = "imagenet"
    required_paths = ("images/train", "images/val", "classnames.txt")
    split_file = None
    generates_split = False
    official_counts = {"classes": 1000, "train": 1281167, "val": 50000, "test": 50000}

    @staticmethod
    def read_classnames(text_file: str) -> "OrderedDict[str, str]":
        """wnid -> class name from classnames.txt, in file order (Dassl-era static method name)."""
        return read_classnames(text_file)

    @classmethod
    def extra_checks(cls, dataset_dir: str) -> list[str]:
        """Flag images/val not sorted into class folders, and train wnids missing from classnames.txt."""
        problems: list[str] = []
        val_dir = os.path.join(dataset_dir, "images", "val")
        if os.path.isdir(val_dir):
            problem = cls._val_layout_problem(val_dir)
            if problem:
                problems.append(problem)
        train_dir = os.path.join(dataset_dir, "images", "train")
        text_file = os.path.join(dataset_dir, "classnames.txt")
        if os.path.isdir(train_dir) and os.path.isfile(text_file):
            try:
                known = read_classnames(text_file)
            except DatasetError as exc:
                return problems + [str(exc)]
            missing = [w for w in _class_folders(train_dir) if w not in known]
            if missing:
                problems.append(
                    f"{text_file} has no entry for {len(missing)} train folder(s), e.g. {missing[:3]}. "
                    f"Rewrite it with `python -m datasets.prepare_imagenet --write-classnames <DATASET.ROOT> --force`. "
                    f"See {cls.docs_ref()}."
                )
        return problems

    @classmethod
    def _val_layout_problem(cls, val_dir: str) -> str | None:
        """A message when val images lie flat in images/val (the archive's layout), else None."""
        loose = _loose_images(val_dir)
        if not loose:
            return None
        fix = (
            f"Sort them into <wnid>/ folders, e.g. `python -m datasets.prepare_imagenet --sort-val <DATASET.ROOT> "
            f"--val-labels LOC_val_solution.csv`. See {cls.docs_ref()}."
        )
        if not _class_folders(val_dir):
            return f"{val_dir} holds {loose} images directly but no class folders. {fix}"
        return f"{val_dir} holds {loose} images outside its class folders; they would be ignored. {fix}"

    def __init__(self, cfg) -> None:
        self.dataset_dir = self.resolve_dataset_dir(cfg)
        self.image_dir = os.path.join(self.dataset_dir, "images")
        self.preprocessed = os.path.join(self.dataset_dir, "preprocessed.pkl")
        cache_dir = cfg.DATASET.get("FEWSHOT_CACHE_DIR", "")
        if cache_dir and not os.path.exists(self.preprocessed):
            # A read-only data folder: keep the item cache next to the few-shot caches.
            self.preprocessed = os.path.join(self.fewshot_cache_dir(cfg, self.dataset_dir), "preprocessed.pkl")

        if os.path.exists(self.preprocessed):
            train, test = self._load_preprocessed(self.preprocessed)
        else:
            classnames = read_classnames(os.path.join(self.dataset_dir, "classnames.txt"), self.docs_ref())
            train = self.read_data(classnames, "train")
            # Standard practice: evaluate on the official val set, which also serves as val.
            test = self.read_data(classnames, "val")
            self._save_preprocessed(self.preprocessed, train, test)

        train, _ = self.load_or_generate_fewshot(cfg, self.dataset_dir, train, None)
        train, test = self.subsample_classes(train, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        # No separate val split: pick the last-step model rather than selecting on "val".
        super().__init__(train_x=train, val=test, test=test)

    def read_data(self, classnames: "OrderedDict[str, str]", split_dir: str) -> list[Datum]:
        """Items of images/<split_dir>: label = index of the wnid folder in sorted order."""
        split_path = self.require_dir(os.path.join(self.image_dir, split_dir), f"{split_dir} image folder")
        folders = _class_folders(split_path)
        if not folders:
            problem = self._val_layout_problem(split_path) or f"{split_path} has no class folders."
            raise DatasetError(f"ImageNet: {problem}")
        unknown = [f for f in folders if f not in classnames]
        if unknown:
            raise DatasetError(
                f"ImageNet: folder(s) {unknown[:3]} in {split_path} have no entry in classnames.txt "
                f"({len(unknown)} missing). Rewrite it with `python -m datasets.prepare_imagenet --write-classnames "
                f"<DATASET.ROOT> --force`. See {self.docs_ref()}."
            )
        items = []
        for label, folder in enumerate(folders):
            class_dir = os.path.join(split_path, folder)
            classname = classnames[folder]
            # The listing was just taken, so skip the per-file stat (1.3M files for train).
            items.extend(
                Datum(os.path.join(class_dir, name), label, 0, classname, check_exists=False)
                for name in listdir_nohidden(class_dir)
            )
        logger.info("ImageNet %s: %d images in %d classes", split_dir, len(items), len(folders))
        return items

    # ------------------------------------------------------------------ preprocessed.pkl
    def _save_preprocessed(self, filepath: str, train: list[Datum], test: list[Datum]) -> None:
        """Write {"train", "test"} with paths relative to the dataset folder; a failure only warns."""
        data = {
            "train": self._relative_items(train, self.dataset_dir),
            "test": self._relative_items(test, self.dataset_dir),
        }
        try:
            atomic_write_bytes(filepath, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
            logger.info("Saved the ImageNet item lists to %s", filepath)
        except OSError as exc:
            logger.warning(
                "Could not write %s (%s); the folders will be listed again next run. "
                "Set DATASET.FEWSHOT_CACHE_DIR to a writable folder to cache them.", filepath, exc
            )

    def _load_preprocessed(self, filepath: str) -> tuple[list[Datum], list[Datum]]:
        """Read ours (relative paths) or the original's (absolute paths, Dassl Datum) item cache."""
        logger.info("Loading preprocessed ImageNet item lists from %s", filepath)
        data = load_fewshot_pickle(filepath)
        if not data.get("test"):
            raise DatasetError(
                f"ImageNet: {filepath} has no 'test' list. Delete it; it is rebuilt from images/. "
                f"See {self.docs_ref()}."
            )
        return self._rebase_bulk(data["train"], filepath), self._rebase_bulk(data["test"], filepath)

    def _rebase_bulk(self, items: list[Datum], source: str) -> list[Datum]:
        """Paths onto the current dataset folder without a stat per image (1.3M files); one image per
        class is checked so that a moved or incomplete data folder still fails here, clearly."""
        marker = "/" + os.path.basename(os.path.normpath(self.dataset_dir)) + "/"
        out: list[Datum] = []
        checked: set[int] = set()
        for item in items:
            path = item._impath.replace("\\", "/")
            if path.startswith("/") or (len(path) > 2 and path[1] == ":"):
                cut = path.rfind(marker)
                if cut < 0:
                    raise DatasetError(
                        f"ImageNet: cannot rebase {item._impath!r} from {source} (no {marker!r} in it). "
                        f"Delete the file; it is rebuilt from images/."
                    )
                path = path[cut + len(marker):]
            impath = os.path.join(self.dataset_dir, *path.split("/"))
            label = int(item._label)
            if label not in checked:
                checked.add(label)
                if not os.path.isfile(impath):
                    raise DatasetError(
                        f"ImageNet: {source} lists {impath}, which does not exist. Delete {source} to rebuild "
                        f"it from images/, or check the dataset folder ({self.docs_ref()})."
                    )
            out.append(Datum(impath, label, int(getattr(item, "_domain", 0)), item._classname, check_exists=False))
        return out


# ---------------------------------------------------------------------- command-line helpers
class OverwriteRefusedError(UserError, FileExistsError):
    """A file the command would write exists already and --force was not given."""


def write_classnames(root: str, force: bool = False, also_variants: bool = False) -> list[str]:
    """Write <root>/imagenet/classnames.txt from the sorted train folders and open_clip's 1000 names.

    open_clip's `IMAGENET_CLASSNAMES` is CLIP's list (standard sorted-wnid order). Returns the files
    written; with `also_variants`, copies the file into each variant folder that exists under `root`.
    """
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    dataset_dir = os.path.join(os.path.abspath(os.path.expanduser(root)), ImageNet.dataset_dir)
    train_dir = os.path.join(dataset_dir, "images", "train")
    if not os.path.isdir(train_dir):
        raise MissingFileError(f"ImageNet train folder not found: {train_dir}. See DATASETS.md#imagenet.")
    wnids = _class_folders(train_dir)
    bad = [w for w in wnids if not WNID_PATTERN.match(w)]
    if len(wnids) != len(IMAGENET_CLASSNAMES) or bad:
        raise DatasetError(
            f"{train_dir} should hold exactly {len(IMAGENET_CLASSNAMES)} wnid folders (n########), found "
            f"{len(wnids)}{f'; not wnids: {bad[:3]}' if bad else ''}. Names are paired by sorted position, "
            f"so a partial train folder cannot be used. See DATASETS.md#imagenet."
        )
    target = os.path.join(dataset_dir, "classnames.txt")
    if os.path.exists(target) and not force:
        raise OverwriteRefusedError(f"{target} exists; pass --force to overwrite it.")
    text = "".join(f"{w} {name}\n" for w, name in zip(wnids, IMAGENET_CLASSNAMES))
    atomic_write_bytes(target, text.encode("utf-8"))
    written = [target]
    if also_variants:
        for sub in VARIANT_DIRS:
            folder = os.path.join(os.path.dirname(dataset_dir), sub)
            if os.path.isdir(folder):
                shutil.copyfile(target, os.path.join(folder, "classnames.txt"))
                written.append(os.path.join(folder, "classnames.txt"))
    return written


def _read_val_labels(labels_file: str) -> dict[str, str]:
    """image stem -> wnid, from Kaggle's LOC_val_solution.csv or '<image> <wnid>' lines."""
    mapping: dict[str, str] = {}
    with open(labels_file, "r", encoding="utf-8") as f:
        first = f.readline()
        f.seek(0)
        if first.startswith("ImageId,"):
            for row in csv.DictReader(f):
                mapping[row["ImageId"]] = row["PredictionString"].split()[0]
        else:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    mapping[os.path.splitext(parts[0])[0]] = parts[1]
    bad = [w for w in list(mapping.values())[:100] if not WNID_PATTERN.match(w)]
    if not mapping or bad:
        raise DatasetError(
            f"{labels_file}: expected Kaggle's LOC_val_solution.csv or lines '<image name> <wnid>'"
            f"{f', got wnids like {bad[:2]}' if bad else ', found no entries'}."
        )
    return mapping


def sort_val_into_folders(root: str, labels_file: str) -> int:
    """Move the flat images of <root>/imagenet/images/val into <wnid>/ folders; returns how many moved."""
    val_dir = os.path.join(os.path.abspath(os.path.expanduser(root)), ImageNet.dataset_dir, "images", "val")
    if not os.path.isdir(val_dir):
        raise MissingFileError(f"ImageNet val folder not found: {val_dir}. See DATASETS.md#imagenet.")
    mapping = _read_val_labels(labels_file)
    names = [e.name for e in os.scandir(val_dir) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    unknown = [n for n in names if os.path.splitext(n)[0] not in mapping]
    if unknown:
        # Check everything before moving anything, so a wrong labels file leaves the folder untouched.
        raise DatasetError(f"{labels_file} has no label for {len(unknown)} image(s), e.g. {unknown[:3]}.")
    for name in names:
        wnid = mapping[os.path.splitext(name)[0]]
        os.makedirs(os.path.join(val_dir, wnid), exist_ok=True)
        os.replace(os.path.join(val_dir, name), os.path.join(val_dir, wnid, name))
    return len(names)
