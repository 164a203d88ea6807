"""`Custom`: a user's own images, as an image-folder tree or a CSV (see DATASETS.md#your-own-data).

Image-folder tree (``DATASET.CUSTOM.DIR``, a folder under DATASET.ROOT or an absolute path)::

    <DIR>/
      <class_a>/*.jpg             class folders, labelled in sorted (case-sensitive) order;
      <class_b>/*.jpg             the folder name is the class name
      split_custom.json           (DATASET.CUSTOM.SPLIT_FILE; CoOp format, read if present,
                                   else a per-class 50/20/30 split is drawn with cfg.SEED and saved)
      split_fewshot/              (few-shot caches)

CSV (``DATASET.CUSTOM.CSV``, relative to DATASET.ROOT or absolute) with a header row and columns
``path,label`` plus optional ``classname`` and ``split`` (train/val/test). Paths are relative to the
CSV's folder (or absolute). Integer labels are used as they are; non-integer labels are class names,
labelled in sorted order. Without a ``split`` column the split is generated and saved as above,
next to the CSV (``<csv stem>_split.json``). With one, train and test must be non-empty and val may
be absent (no validation then).

Only image files (`engine.data.IMAGE_EXTENSIONS`, any case) are taken: anything else in a class
folder (a README, Thumbs.db, a sub-folder), a CSV row or a split-file entry that is not an image is
skipped and listed in `ignored_files`, which training and the doctor report. Hidden files (names
starting with '.') are skipped silently.
"""
from __future__ import annotations

import csv
import logging
import os
import random
from dataclasses import dataclass

from engine.data import DATASET_REGISTRY, IMAGE_EXTENSIONS, DatasetBase, DatasetError, Datum, is_image_file
from engine.errors import ConfigValueError, MissingFileError
from engine.utils import listdir_nohidden

__all__ = ["Custom", "CsvRow"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FEWSHOT_PREFIX = "split_fewshot"


@dataclass(frozen=True)
class CsvRow:
    """One data row of a Custom CSV: its line number (for messages) and its stripped fields."""

    lineno: int
    path: str
    label: str
    classname: str = ""
    split: str = ""


@DATASET_REGISTRY.register()
class Custom(DatasetBase):
    """A user's image-folder tree or CSV, with the CoOp split, few-shot cache and base/new machinery."""

    dataset_dir = ""  # chosen by DATASET.CUSTOM.DIR / CSV, so the doctor does not look for it
    docs_anchor = "your-own-data"

    def __init__(self, cfg) -> None:
        opts = cfg.DATASET.CUSTOM
        if bool(opts.DIR) == bool(opts.CSV):
            raise ConfigValueError(
                f"Custom dataset: set exactly one of DATASET.CUSTOM.DIR (an image-folder tree) and "
                f"DATASET.CUSTOM.CSV (a CSV file); got DIR={opts.DIR!r}, CSV={opts.CSV!r}. See {self.docs_ref()}."
            )
        self._p_train, self._p_val = float(opts.P_TRAIN), float(opts.P_VAL)
        if not (self._p_train > 0 and self._p_val > 0 and self._p_train + self._p_val < 1):
            raise ConfigValueError(
                f"Custom dataset: DATASET.CUSTOM.P_TRAIN={opts.P_TRAIN} and P_VAL={opts.P_VAL} must both be "
                f"above 0 and sum to less than 1 (the rest is test). See {self.docs_ref()}."
            )
        self._seed = cfg.SEED
        self.ignored_files: list[str] = []  # set first: the doctor reads it even if a later step stops
        self.dataset_dir = self.source_folder(cfg)
        if opts.DIR:
            self.cache_tag = ""
            if not os.path.isdir(self.dataset_dir):
                raise MissingFileError(
                    f"Dataset folder not found: {self.dataset_dir} (DATASET.ROOT={cfg.DATASET.ROOT}, "
                    f"DATASET.CUSTOM.DIR={opts.DIR}). See {self.docs_ref()}."
                )
            split_path = os.path.join(self.dataset_dir, opts.SPLIT_FILE)
            train, val, test = self._from_folder(split_path)
        else:
            csv_path = os.path.join(self._root(cfg), os.path.expanduser(opts.CSV))
            if not os.path.isfile(csv_path):
                raise MissingFileError(
                    f"CSV file not found: {csv_path} (DATASET.ROOT={cfg.DATASET.ROOT}, "
                    f"DATASET.CUSTOM.CSV={opts.CSV}). See {self.docs_ref()}."
                )
            stem = os.path.splitext(os.path.basename(csv_path))[0]
            self.cache_tag = stem  # several CSVs may share a folder: keep their caches apart
            train, val, test = self._from_csv(csv_path, os.path.join(self.dataset_dir, f"{stem}_split.json"))

        train, val = self.load_or_generate_fewshot(cfg, self.dataset_dir, train, val)
        if val is None:
            train, test = self.subsample_classes(train, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        else:
            train, val, test = self.subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    @staticmethod
    def _root(cfg) -> str:
        return os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT or "."))

    @classmethod
    def source_folder(cls, cfg) -> str:
        """The folder the data is in: DATASET.CUSTOM.DIR, or the CSV's folder (relative to DATASET.ROOT)."""
        opts = cfg.DATASET.CUSTOM
        if opts.DIR:
            return os.path.join(cls._root(cfg), os.path.expanduser(opts.DIR))
        return os.path.dirname(os.path.join(cls._root(cfg), os.path.expanduser(opts.CSV)))

    def fewshot_cache_dir(self, cfg, dataset_dir: str) -> str:
        base = super().fewshot_cache_dir(cfg, dataset_dir)
        return os.path.join(base, self.cache_tag) if self.cache_tag else base

    def _images_only(self, *splits: list[Datum]) -> tuple[list[Datum], ...]:
        """Drop the non-image entries of a split file (one written before they were filtered out)."""
        out = []
        for items in splits:
            self.ignored_files.extend(x.impath for x in items if not is_image_file(x.impath))
            out.append([x for x in items if is_image_file(x.impath)])
        return tuple(out)

    # ------------------------------------------------------------------ image-folder tree
    def _from_folder(self, split_path: str):
        if os.path.exists(split_path):
            return self._images_only(*self.read_split(split_path, self.dataset_dir))
        items = self._scan_class_folders()
        train, val, test = self._seeded(lambda: self._split_per_class(items, self.dataset_dir))
        self.save_split(train, val, test, split_path, self.dataset_dir)
        return train, val, test

    def _scan_class_folders(self) -> list[Datum]:
        """The image files of every class folder (sorted names), labelled by sorted folder name.

        Non-image entries of a class folder, and images lying directly in the dataset folder, go to
        `ignored_files` (sub-folders with a trailing separator).
        """
        entries = sorted(listdir_nohidden(self.dataset_dir))
        classes = [
            e for e in entries
            if os.path.isdir(os.path.join(self.dataset_dir, e)) and not e.startswith(FEWSHOT_PREFIX)
        ]
        if not classes:
            raise DatasetError(
                f"Custom dataset: {self.dataset_dir} has no class folders; expected <class>/<image> "
                f"sub-folders. See {self.docs_ref()}."
            )
        self.ignored_files.extend(
            os.path.join(self.dataset_dir, e) for e in entries if e not in classes and is_image_file(e)
        )
        items: list[Datum] = []
        for label, classname in enumerate(classes):
            folder = os.path.join(self.dataset_dir, classname)
            images, skipped = [], []
            for name in sorted(listdir_nohidden(folder)):
                path = os.path.join(folder, name)
                if os.path.isfile(path) and is_image_file(name):
                    images.append(path)
                else:
                    skipped.append(path + os.sep if os.path.isdir(path) else path)
            self.ignored_files.extend(skipped)
            if not images:
                raise DatasetError(
                    f"Custom dataset: class folder {folder} holds no image files"
                    f"{f' (only {len(skipped)} other entries)' if skipped else ''}. Add images "
                    f"({' '.join(IMAGE_EXTENSIONS)}) or remove the folder. See {self.docs_ref()}."
                )
            items.extend(Datum(impath=p, label=label, classname=classname) for p in images)
        return items

    def _seeded(self, fn):
        """Run `fn` with `random` seeded by cfg.SEED, restoring the caller's random state afterwards."""
        state = random.getstate()
        random.seed(self._seed if self._seed >= 0 else 0)
        try:
            return fn()
        finally:
            random.setstate(state)

    # ------------------------------------------------------------------ CSV
    def _from_csv(self, csv_path: str, split_path: str):
        rows = self._read_csv(csv_path)
        has_split = any(r.split for r in rows)
        if not has_split and os.path.exists(split_path):
            return self._images_only(*self.read_split(split_path, self.dataset_dir))

        rows = self._image_rows(rows, csv_path)
        labels, label_names = self._labels(rows, csv_path)
        items_by_split: dict[str, list[Datum]] = {s: [] for s in SPLITS}
        seen_names: dict[int, str] = {}
        for row, label in zip(rows, labels):
            where = f"Custom dataset: {csv_path} line {row.lineno}"
            if label < 0:
                raise DatasetError(f"{where}: negative label {label}; labels start at 0.")
            name = row.classname or label_names.get(label) or f"class_{label}"
            if seen_names.setdefault(label, name) != name:
                raise DatasetError(
                    f"{where}: label {label} is named {name!r}, but an earlier row named it "
                    f"{seen_names[label]!r}. Use one class name per label."
                )
            impath = os.path.join(self.dataset_dir, os.path.expanduser(row.path))
            try:
                item = Datum(impath=impath, label=label, classname=name)
            except FileNotFoundError:
                raise DatasetError(
                    f"{where} lists {impath}, which does not exist. Paths are relative to the CSV's "
                    f"folder. See {self.docs_ref()}."
                ) from None
            split = (row.split or "train").lower() if has_split else "train"
            if split not in SPLITS:
                raise DatasetError(f"{where}: split {row.split!r} is not one of train, val, test.")
            items_by_split[split].append(item)

        if has_split:
            for split in ("train", "test"):
                if not items_by_split[split]:
                    raise DatasetError(
                        f"Custom dataset: {csv_path} has no image rows with split={split!r}; train and test "
                        f"must be non-empty (val is optional). See {self.docs_ref()}."
                    )
            val = items_by_split["val"] or None
            if val is None:
                logger.info("Custom dataset: %s has no val rows; training runs without validation", csv_path)
            return items_by_split["train"], val, items_by_split["test"]

        train, val, test = self._seeded(lambda: self._split_per_class(items_by_split["train"], csv_path))
        self.save_split(train, val, test, split_path, self.dataset_dir)
        return train, val, test

    def _image_rows(self, rows: list[CsvRow], csv_path: str) -> list[CsvRow]:
        """The rows whose path is an image file; the others go to `ignored_files`."""
        kept = [r for r in rows if is_image_file(r.path)]
        self.ignored_files.extend(os.path.join(self.dataset_dir, r.path) for r in rows if not is_image_file(r.path))
        if not kept:
            raise DatasetError(
                f"Custom dataset: no row of {csv_path} names an image file ({' '.join(IMAGE_EXTENSIONS)}). "
                f"See {self.docs_ref()}."
            )
        return kept

    @staticmethod
    def _labels(rows: list[CsvRow], csv_path: str) -> tuple[list[int], dict[int, str]]:
        """Integer labels as given, or class-name labels numbered in sorted order (with their names)."""
        as_int = [_parse_int(r.label) for r in rows]
        if all(y is not None for y in as_int):
            return as_int, {}
        if any(y is not None for y in as_int):
            number = next(r for r, y in zip(rows, as_int) if y is not None)
            word = next(r for r, y in zip(rows, as_int) if y is None)
            raise DatasetError(
                f"Custom dataset: {csv_path} mixes integer labels (line {number.lineno}: {number.label!r}) "
                f"and class-name labels (line {word.lineno}: {word.label!r}). Use integers throughout "
                f"(names go in the 'classname' column) or class names throughout."
            )
        names = sorted({r.label for r in rows})
        index = {n: i for i, n in enumerate(names)}
        return [index[r.label] for r in rows], {i: n for n, i in index.items()}

    def _split_per_class(self, items: list[Datum], source: str):
        """Per label (sorted), shuffle and cut round(n*P_TRAIN) / round(n*P_VAL) / rest, like read_and_split_data."""
        by_label: dict[int, list[Datum]] = {}
        for item in items:
            by_label.setdefault(item.label, []).append(item)
        train, val, test = [], [], []
        for label in sorted(by_label):
            group = by_label[label]
            random.shuffle(group)
            n_train, n_val = round(len(group) * self._p_train), round(len(group) * self._p_val)
            if not (n_train > 0 and n_val > 0 and len(group) - n_train - n_val > 0):
                raise DatasetError(
                    f"Custom dataset: class {group[0].classname!r} (label {label}) in {source} has "
                    f"{len(group)} images, too few for a {self._p_train:.0%}/{self._p_val:.0%}/rest split "
                    f"(each part needs one). Add images, or give a split (file or CSV column)."
                )
            train.extend(group[:n_train])
            val.extend(group[n_train : n_train + n_val])
            test.extend(group[n_train + n_val :])
        return train, val, test

    def _read_csv(self, csv_path: str) -> list[CsvRow]:
        """The CSV's data rows (fully blank rows skipped); a malformed header or row raises DatasetError."""
        reader = None
        try:
            # utf-8-sig: spreadsheet programs often start a UTF-8 CSV with a byte-order mark.
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                fields = [c.strip().lower() for c in (reader.fieldnames or [])]
                if "path" not in fields or "label" not in fields:
                    raise DatasetError(
                        f"Custom dataset: {csv_path} needs a header row with columns 'path' and 'label' "
                        f"(optional 'classname', 'split'); got {reader.fieldnames}. See {self.docs_ref()}."
                    )
                rows = [row for raw in reader if (row := self._csv_row(raw, reader.line_num, csv_path))]
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"Custom dataset: {csv_path} is not UTF-8 text ({exc}). Save it as a UTF-8 CSV."
            ) from None
        except csv.Error as exc:
            line = f" line {reader.line_num}" if reader is not None else ""
            raise DatasetError(f"Custom dataset: {csv_path}{line} is not valid CSV ({exc}).") from None
        if not rows:
            raise DatasetError(f"Custom dataset: {csv_path} has no data rows. See {self.docs_ref()}.")
        return rows

    def _csv_row(self, raw: dict, lineno: int, csv_path: str) -> CsvRow | None:
        """One row as a CsvRow; None for a blank row. Extra or missing values are errors."""
        where = f"Custom dataset: {csv_path} line {lineno}"
        if None in raw:  # DictReader files values beyond the header under the key None
            raise DatasetError(
                f"{where} has more values than the header ({raw[None]!r} left over). Quote a path that "
                f"contains a comma."
            )
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items()}
        if not any(row.values()):
            return None
        if not row.get("path") or not row.get("label"):
            missing = " and ".join(c for c in ("path", "label") if not row.get(c))
            raise DatasetError(f"{where} has no {missing}; every row needs both. See {self.docs_ref()}.")
        return CsvRow(lineno, row["path"], row["label"], row.get("classname", ""), row.get("split", ""))


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
