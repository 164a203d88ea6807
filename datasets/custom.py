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
"""
from __future__ import annotations

import csv
import logging
import os
import random

from engine.data import DATASET_REGISTRY, DatasetBase, DatasetError, Datum
from engine.utils import listdir_nohidden

__all__ = ["Custom"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@DATASET_REGISTRY.register()
class Custom(DatasetBase):
    """A user's image-folder tree or CSV, with the CoOp split, few-shot cache and base/new machinery."""

    dataset_dir = ""  # chosen by DATASET.CUSTOM.DIR / CSV, so the doctor does not look for it
    docs_anchor = "your-own-data"

    def __init__(self, cfg) -> None:
        opts = cfg.DATASET.CUSTOM
        if bool(opts.DIR) == bool(opts.CSV):
            raise ValueError(
                f"Custom dataset: set exactly one of DATASET.CUSTOM.DIR (an image-folder tree) and "
                f"DATASET.CUSTOM.CSV (a CSV file); got DIR={opts.DIR!r}, CSV={opts.CSV!r}. See {self.docs_ref()}."
            )
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT or "."))
        self._seed = cfg.SEED
        self._p_train, self._p_val = float(opts.P_TRAIN), float(opts.P_VAL)
        if opts.DIR:
            self.dataset_dir = os.path.join(root, os.path.expanduser(opts.DIR))
            self.cache_tag = ""
            if not os.path.isdir(self.dataset_dir):
                raise FileNotFoundError(
                    f"Dataset folder not found: {self.dataset_dir} (DATASET.ROOT={cfg.DATASET.ROOT}, "
                    f"DATASET.CUSTOM.DIR={opts.DIR}). See {self.docs_ref()}."
                )
            split_path = os.path.join(self.dataset_dir, opts.SPLIT_FILE)
            train, val, test = self._from_folder(split_path)
        else:
            csv_path = os.path.join(root, os.path.expanduser(opts.CSV))
            if not os.path.isfile(csv_path):
                raise FileNotFoundError(
                    f"CSV file not found: {csv_path} (DATASET.ROOT={cfg.DATASET.ROOT}, "
                    f"DATASET.CUSTOM.CSV={opts.CSV}). See {self.docs_ref()}."
                )
            self.dataset_dir = os.path.dirname(csv_path)
            stem = os.path.splitext(os.path.basename(csv_path))[0]
            self.cache_tag = stem  # several CSVs may share a folder: keep their caches apart
            train, val, test = self._from_csv(csv_path, os.path.join(self.dataset_dir, f"{stem}_split.json"))

        train, val = self.load_or_generate_fewshot(cfg, self.dataset_dir, train, val)
        if val is None:
            train, test = self.subsample_classes(train, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        else:
            train, val, test = self.subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    def fewshot_cache_dir(self, cfg, dataset_dir: str) -> str:
        base = super().fewshot_cache_dir(cfg, dataset_dir)
        return os.path.join(base, self.cache_tag) if self.cache_tag else base

    # ------------------------------------------------------------------ image-folder tree
    def _from_folder(self, split_path: str):
        if os.path.exists(split_path):
            return self.read_split(split_path, self.dataset_dir)
        classes = [c for c in listdir_nohidden(self.dataset_dir) if os.path.isdir(os.path.join(self.dataset_dir, c))]
        classes = [c for c in classes if not c.startswith("split_fewshot")]
        if not classes:
            raise DatasetError(
                f"Custom dataset: {self.dataset_dir} has no class folders; expected <class>/<image> "
                f"sub-folders. See {self.docs_ref()}."
            )
        train, val, test = self._seeded(
            lambda: self.read_and_split_data(
                self.dataset_dir, p_trn=self._p_train, p_val=self._p_val,
                ignored=[n for n in listdir_nohidden(self.dataset_dir) if n not in classes],
            )
        )
        self.save_split(train, val, test, split_path, self.dataset_dir)
        return train, val, test

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
        has_split = any(r.get("split") for r in rows)
        if not has_split and os.path.exists(split_path):
            return self.read_split(split_path, self.dataset_dir)

        raw_labels = [r["label"] for r in rows]
        try:
            labels = [int(y) for y in raw_labels]
            label_names: dict[int, str] = {}
        except ValueError:
            # Class names given as labels: index them in sorted order.
            names = sorted(set(raw_labels))
            index = {n: i for i, n in enumerate(names)}
            labels = [index[y] for y in raw_labels]
            label_names = {i: n for n, i in index.items()}
        items_by_split: dict[str, list[Datum]] = {s: [] for s in SPLITS}
        seen_names: dict[int, str] = {}
        for lineno, (row, label) in enumerate(zip(rows, labels), 2):
            if label < 0:
                raise DatasetError(f"Custom dataset: {csv_path} line {lineno}: negative label {label}.")
            name = row.get("classname") or label_names.get(label) or f"class_{label}"
            if seen_names.setdefault(label, name) != name:
                raise DatasetError(
                    f"Custom dataset: {csv_path} line {lineno}: label {label} is named {name!r}, but an "
                    f"earlier row named it {seen_names[label]!r}. Use one class name per label."
                )
            impath = os.path.join(self.dataset_dir, os.path.expanduser(row["path"]))
            try:
                item = Datum(impath=impath, label=label, classname=name)
            except FileNotFoundError:
                raise DatasetError(
                    f"Custom dataset: {csv_path} line {lineno} lists {impath}, which does not exist. "
                    f"Paths are relative to the CSV's folder. See {self.docs_ref()}."
                ) from None
            split = (row.get("split") or "train").strip().lower() if has_split else "train"
            if split not in SPLITS:
                raise DatasetError(
                    f"Custom dataset: {csv_path} line {lineno}: split {row.get('split')!r} is not one of "
                    f"train, val, test."
                )
            items_by_split[split].append(item)

        if has_split:
            for split in ("train", "test"):
                if not items_by_split[split]:
                    raise DatasetError(
                        f"Custom dataset: {csv_path} has no rows with split={split!r}; train and test must "
                        f"be non-empty (val is optional). See {self.docs_ref()}."
                    )
            val = items_by_split["val"] or None
            if val is None:
                logger.info("Custom dataset: %s has no val rows; training runs without validation", csv_path)
            return items_by_split["train"], val, items_by_split["test"]

        train, val, test = self._seeded(lambda: self._split_per_class(items_by_split["train"], csv_path))
        self.save_split(train, val, test, split_path, self.dataset_dir)
        return train, val, test

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
                    f"Custom dataset: label {label} in {source} has {len(group)} images, too few for a "
                    f"{self._p_train:.0%}/{self._p_val:.0%}/rest split (each part needs one). Add images "
                    f"or give a split column."
                )
            train.extend(group[:n_train])
            val.extend(group[n_train : n_train + n_val])
            test.extend(group[n_train + n_val :])
        return train, val, test

    def _read_csv(self, csv_path: str) -> list[dict[str, str]]:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "path" not in fields or "label" not in fields:
                raise DatasetError(
                    f"Custom dataset: {csv_path} needs a header row with columns 'path' and 'label' "
                    f"(optional 'classname', 'split'); got {reader.fieldnames}. See {self.docs_ref()}."
                )
            rows = []
            for raw in reader:
                row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
                if row.get("path"):
                    rows.append(row)
        if not rows:
            raise DatasetError(f"Custom dataset: {csv_path} has no data rows. See {self.docs_ref()}.")
        return rows
