"""Dataset records and the dataset base class (Dassl's `dassl.data.datasets`).

`Datum` is one labelled image; `DatasetBase` holds the train_x / train_u / val / test lists and
derives `num_classes`, `lab2cname` and `classnames` from train_x. On top of Dassl, `DatasetBase`
carries the helpers that every CoOp dataset shares (split JSON I/O, 50/20/30 split generation,
the few-shot cache, base/new class subsampling), so dataset files stay short.

Few-shot caches (`split_fewshot/shot_{K}-seed_{S}.pkl`) are pickles. They are only ever read
through `_CacheUnpickler`, which resolves no global except `Datum` (ours, or the original
`dassl.data.datasets.base_dataset.Datum`), so loading a hostile file cannot run code.
"""
from __future__ import annotations

import io
import logging
import math
import os
import pickle
import random
from collections import defaultdict
from typing import Any, Iterable, Sequence

from torchvision.datasets.folder import IMG_EXTENSIONS

from engine.errors import ConfigValueError, MissingFileError, UserError
from engine.registry import Registry, UnknownNameError
from engine.utils import atomic_write_bytes, listdir_nohidden, read_json, write_json

__all__ = [
    "Datum",
    "DatasetBase",
    "SplitFileDataset",
    "DATASET_REGISTRY",
    "build_dataset",
    "DatasetError",
    "UnsafeCacheError",
    "IMAGE_EXTENSIONS",
    "is_image_file",
]

logger = logging.getLogger(__name__)

DATASET_REGISTRY = Registry("DATASET")

# Class path under which the original CoOp/Dassl pipeline pickled its records.
LEGACY_DATUM_PATH = ("dassl.data.datasets.base_dataset", "Datum")


# What torchvision's ImageFolder (and PIL) read as images, compared case-insensitively.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(IMG_EXTENSIONS)


def is_image_file(path: str) -> bool:
    """True when `path` has an image extension (`IMAGE_EXTENSIONS`, any case)."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


class DatasetError(UserError, RuntimeError):
    """A dataset on disk is missing, malformed or inconsistent with what the code expects."""


class UnsafeCacheError(DatasetError, pickle.UnpicklingError):
    """A few-shot cache that references something other than `Datum` records; it is not loaded."""


class Datum:
    """One image record: path, label, domain and class name (read-only).

    The constructor checks that `impath` exists, like Dassl. Pass `check_exists=False`, or set the
    class attribute `Datum.check_exists_default = False`, to skip the `stat` (tests, relative paths).
    Attribute names (`_impath`, `_label`, `_domain`, `_classname`) match Dassl's so that pickles
    written by the original code restore into this class.
    """

    check_exists_default: bool = True

    def __init__(
        self,
        impath: str = "",
        label: int = 0,
        domain: int = 0,
        classname: str = "",
        *,
        check_exists: bool | None = None,
    ) -> None:
        if not isinstance(impath, str):
            raise TypeError(f"Datum impath must be a str, got {type(impath).__name__}: {impath!r}.")
        if check_exists is None:
            check_exists = self.check_exists_default
        if check_exists and not os.path.isfile(impath):
            raise MissingFileError(f"Image not found: {impath!r} (label={label}, classname={classname!r}).")
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self) -> str:
        return self._impath

    @property
    def label(self) -> int:
        return self._label

    @property
    def domain(self) -> int:
        return self._domain

    @property
    def classname(self) -> str:
        return self._classname

    def _key(self) -> tuple:
        return (self._impath, self._label, self._domain, self._classname)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Datum):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Datum(impath={self._impath!r}, label={self._label}, domain={self._domain}, "
            f"classname={self._classname!r})"
        )


class _CacheUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `Datum` (ours or Dassl's class path) and refuses everything else."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in (LEGACY_DATUM_PATH, (Datum.__module__, Datum.__name__)):
            return Datum
        raise UnsafeCacheError(
            f"Refusing to load {self._source}: it references the global {module}.{name}, but a "
            f"few-shot cache may only contain Datum records. Delete the file if you did not create it; "
            f"it will be regenerated."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCacheError(
            f"Refusing to load {self._source}: persistent ids are not allowed. Delete the file if you did "
            f"not create it; it will be regenerated."
        )


def load_fewshot_pickle(filepath: str) -> dict:
    """Read a few-shot cache with the restricted unpickler; check it is {"train": [...], "val": [...]}."""
    with open(filepath, "rb") as f:
        try:
            data = _CacheUnpickler(f, filepath).load()
        except UnsafeCacheError:
            raise
        except Exception as exc:  # truncated or otherwise broken file
            raise DatasetError(
                f"Few-shot cache {filepath} could not be read ({type(exc).__name__}: {exc}). "
                f"Delete it and it will be regenerated."
            ) from exc
    if not isinstance(data, dict) or "train" not in data:
        raise DatasetError(
            f"Few-shot cache {filepath} should hold a dict with keys 'train' (and 'val'), got "
            f"{type(data).__name__}. Delete it and it will be regenerated."
        )
    for key, items in data.items():
        if items is None:
            continue
        if not isinstance(items, list) or not all(isinstance(x, Datum) for x in items):
            raise DatasetError(
                f"Few-shot cache {filepath}: entry {key!r} should be a list of Datum. "
                f"Delete the file and it will be regenerated."
            )
    return data


class DatasetBase:
    """Container of train_x / train_u / val / test lists of `Datum` (Dassl's `DatasetBase`).

    `num_classes`, `lab2cname` and `classnames` are derived from **train_x** only, as in Dassl.
    Subclasses set `dataset_dir` (folder name under DATASET.ROOT) and may set `docs_anchor`
    (the `DATASETS.md#<anchor>` that error messages point at; default: lower-cased class name).
    """

    dataset_dir: str = ""
    domains: list[str] = []
    docs_anchor: str = ""
    # What the dataset doctor (`python -m datasets.doctor`) checks before building the dataset:
    # paths (relative to dataset_dir) that must exist, the split file if the dataset reads one
    # (None: no split file; a missing one is generated on first use when `generates_split`),
    # and the official sizes ("classes", "train", "val", "test"), compared with a warning only.
    required_paths: tuple[str, ...] = ()
    split_file: str | None = None
    generates_split: bool = False
    official_counts: dict[str, int] = {}
    # Files under the dataset folder skipped because they are not images (set by `Custom`);
    # the DataManager and the doctor report them.
    ignored_files: Sequence[str] = ()

    @classmethod
    def extra_checks(cls, dataset_dir: str) -> list[str]:
        """Dataset-specific layout problems found by the doctor (each an error message)."""
        return []

    def __init__(
        self,
        train_x: list[Datum] | None = None,
        train_u: list[Datum] | None = None,
        val: list[Datum] | None = None,
        test: list[Datum] | None = None,
    ) -> None:
        if not train_x:
            raise DatasetError(
                f"{type(self).__name__}: train_x is empty, so the number of classes cannot be derived. "
                f"Check the dataset files ({self.docs_ref()}); test-only datasets pass their test "
                f"list as train_x."
            )
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self) -> list[Datum] | None:
        return self._train_x

    @property
    def train_u(self) -> list[Datum] | None:
        return self._train_u

    @property
    def val(self) -> list[Datum] | None:
        return self._val

    @property
    def test(self) -> list[Datum] | None:
        return self._test

    @property
    def lab2cname(self) -> dict[int, str]:
        return self._lab2cname

    @property
    def classnames(self) -> list[str]:
        return self._classnames

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @classmethod
    def docs_ref(cls) -> str:
        """Where the user can read how to prepare this dataset."""
        return f"DATASETS.md#{cls.docs_anchor or cls.__name__.lower()}"

    @staticmethod
    def get_num_classes(data_source: Iterable[Datum]) -> int:
        """max(label) + 1 over `data_source`."""
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source: Iterable[Datum]) -> tuple[dict[int, str], list[str]]:
        """{label: classname} and the class names ordered by label."""
        mapping = {item.label: item.classname for item in data_source}
        labels = sorted(mapping)
        return {y: mapping[y] for y in labels}, [mapping[y] for y in labels]

    # ------------------------------------------------------------------ Dassl domain helpers
    def check_input_domains(self, source_domains: Sequence[str], target_domains: Sequence[str]) -> None:
        self.is_input_domain_valid(source_domains)
        self.is_input_domain_valid(target_domains)

    def is_input_domain_valid(self, input_domains: Sequence[str]) -> None:
        for domain in input_domains:
            if domain not in self.domains:
                raise ConfigValueError(
                    f"Input domain {domain!r} is not one of {type(self).__name__}'s domains {self.domains}."
                )

    def download_data(self, url: str, dst: str, from_gdrive: bool = True) -> None:
        """Not supported: datasets are prepared by hand (machines may be offline)."""
        raise NotImplementedError(
            f"Automatic download is not supported. Download {url} yourself and unpack it to "
            f"{os.path.dirname(dst)}; see {self.docs_ref()}."
        )

    # ------------------------------------------------------------------ grouping and few-shot
    @staticmethod
    def split_dataset_by_label(data_source: Iterable[Datum]) -> defaultdict:
        """{label: [items]} with labels in order of first appearance."""
        output: defaultdict = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source: Iterable[Datum]) -> defaultdict:
        """{domain: [items]} with domains in order of first appearance."""
        output: defaultdict = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output

    def generate_fewshot_dataset(self, *data_sources: list[Datum], num_shots: int = -1, repeat: bool = False):
        """K images per class from each source, drawn with Python's `random` exactly like Dassl.

        Per label (first-appearance order): `random.sample(items, K)` when the label has at least K
        items, else all its items (or `random.choices(items, k=K)` with `repeat=True`).
        Returns one list for one source, a list of lists otherwise; `num_shots < 1` returns the input.
        """
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else data_sources
        logger.info("Creating a %d-shot dataset", num_shots)
        output = []
        for data_source in data_sources:
            sampled: list[Datum] = []
            for items in self.split_dataset_by_label(data_source).values():
                if len(items) >= num_shots:
                    sampled.extend(random.sample(items, num_shots))
                elif repeat:
                    sampled.extend(random.choices(items, k=num_shots))
                else:
                    sampled.extend(items)
            output.append(sampled)
        return output[0] if len(output) == 1 else output

    # ------------------------------------------------------------------ folders
    def resolve_dataset_dir(self, cfg) -> str:
        """abspath(DATASET.ROOT)/<dataset_dir>; raise a clear error when that folder is missing."""
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        dataset_dir = os.path.join(root, type(self).dataset_dir)
        if not os.path.isdir(dataset_dir):
            raise MissingFileError(
                f"Dataset folder not found: {dataset_dir} (DATASET.ROOT={cfg.DATASET.ROOT}). "
                f"See {self.docs_ref()}."
            )
        return dataset_dir

    def require_dir(self, path: str, what: str = "folder") -> str:
        """Raise a clear error if `path` (inside the dataset folder) is missing."""
        if not os.path.isdir(path):
            raise MissingFileError(
                f"{type(self).__name__}: expected {what} {path} is missing. See {self.docs_ref()}."
            )
        return path

    def require_file(self, path: str, what: str = "file") -> str:
        """Raise a clear error if the file `path` (inside the dataset folder) is missing."""
        if not os.path.isfile(path):
            raise MissingFileError(
                f"{type(self).__name__}: expected {what} {path} is missing. See {self.docs_ref()}."
            )
        return path

    def read_lines(self, path: str, missing_message: str = "") -> list[str]:
        """Stripped, non-blank lines of a text file (CRLF-safe); a missing file raises a clear error."""
        if not os.path.isfile(path):
            raise MissingFileError(
                (missing_message or f"{type(self).__name__}: expected file {path} is missing.")
                + f" See {self.docs_ref()}."
            )
        with open(path, "r", encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]

    @classmethod
    def missing_raw_files(cls, dataset_dir: str, rel_paths: Sequence[str]) -> list[str]:
        """Doctor messages for the raw annotation files needed to generate a missing split file."""
        if cls.split_file and os.path.isfile(os.path.join(dataset_dir, cls.split_file)):
            return []  # the split file is the source of truth; raw annotations are not read
        return [
            f"{os.path.join(dataset_dir, rel)} is missing; it is needed to generate {cls.split_file} "
            f"(or download CoOp's {cls.split_file} instead). See {cls.docs_ref()}."
            for rel in rel_paths
            if not os.path.isfile(os.path.join(dataset_dir, rel))
        ]

    # ------------------------------------------------------------------ split JSON (CoOp format)
    @classmethod
    def read_split(cls, filepath: str, path_prefix: str) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """Read a `split_zhou_*.json` file: {"train"|"val"|"test": [[rel_path, label, classname], ...]}.

        Paths are joined onto `path_prefix`; every image must exist. Any problem (bad JSON, wrong
        shape, empty split, missing image) raises `DatasetError` naming the file.
        """
        hint = f"Fix or delete the file (it is regenerated when missing), see {cls.docs_ref()}."
        try:
            split = read_json(filepath)
        except Exception as exc:
            raise DatasetError(f"{cls.__name__}: split file {filepath} could not be parsed ({exc}). {hint}") from exc
        if not isinstance(split, dict):
            raise DatasetError(f"{cls.__name__}: split file {filepath} should hold a JSON object. {hint}")

        def convert(name: str) -> list[Datum]:
            entries = split.get(name)
            if not isinstance(entries, list) or not entries:
                raise DatasetError(
                    f"{cls.__name__}: split {name!r} in {filepath} is missing or empty. {hint}"
                )
            out = []
            for i, entry in enumerate(entries):
                if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str)):
                    raise DatasetError(
                        f"{cls.__name__}: {filepath} {name}[{i}] should be [relative_path, label, "
                        f"classname], got {entry!r}. {hint}"
                    )
                impath, label, classname = entry
                impath = os.path.join(path_prefix, impath)
                try:
                    out.append(Datum(impath=impath, label=int(label), classname=classname))
                except FileNotFoundError as exc:
                    raise DatasetError(
                        f"{cls.__name__}: {filepath} lists {impath}, which does not exist. "
                        f"Is the image folder complete? See {cls.docs_ref()}."
                    ) from exc
            return out

        return convert("train"), convert("val"), convert("test")

    @staticmethod
    def save_split(
        train: list[Datum], val: list[Datum], test: list[Datum], filepath: str, path_prefix: str
    ) -> None:
        """Write the three lists in CoOp's JSON format, paths relative to `path_prefix` ('/' separated)."""
        prefix = os.path.normpath(path_prefix)

        def extract(items: list[Datum]) -> list[tuple[str, int, str]]:
            out = []
            for item in items:
                impath = os.path.normpath(item.impath)
                if not impath.startswith(prefix + os.sep):
                    raise ValueError(f"save_split: {item.impath} is not inside the path prefix {path_prefix}.")
                rel = impath[len(prefix) + 1 :].replace(os.sep, "/")
                out.append((rel, item.label, item.classname))
            return out

        split = {"train": extract(train), "val": extract(val), "test": extract(test)}
        write_json(split, filepath)
        logger.info("Saved split to %s", filepath)

    @staticmethod
    def split_trainval(trainval: list[Datum], p_val: float = 0.2) -> tuple[list[Datum], list[Datum]]:
        """Per label (first-appearance order): shuffle with `random`, first round(n*p_val) go to val."""
        p_trn = 1 - p_val
        logger.info("Splitting trainval into %.0f%% train and %.0f%% val", p_trn * 100, p_val * 100)
        tracker: defaultdict = defaultdict(list)
        for idx, item in enumerate(trainval):
            tracker[item.label].append(idx)
        train, val = [], []
        for label, idxs in tracker.items():
            n_val = round(len(idxs) * p_val)
            if n_val <= 0:
                raise DatasetError(
                    f"split_trainval: label {label} has {len(idxs)} items, too few for a {p_val:.0%} val split."
                )
            random.shuffle(idxs)
            for n, idx in enumerate(idxs):
                item = trainval[idx]
                new = Datum(impath=item.impath, label=item.label, classname=item.classname, check_exists=False)
                (val if n < n_val else train).append(new)
        return train, val

    @staticmethod
    def read_and_split_data(
        image_dir: str,
        p_trn: float = 0.5,
        p_val: float = 0.2,
        ignored: Iterable[str] = (),
        new_cnames: dict[str, str] | None = None,
    ) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """Split a `<image_dir>/<category>/<image>` tree per class into train/val/test.

        Categories: non-hidden entries minus `ignored`, sorted (case-sensitive); the label is the
        index in that list, taken before renaming with `new_cnames`. Images are listed in file-system
        order and shuffled with `random`; n_train = round(n*p_trn), n_val = round(n*p_val) (Python's
        round-half-even), the rest is test.
        """
        ignored = set(ignored)
        categories = sorted(c for c in listdir_nohidden(image_dir) if c not in ignored)
        p_tst = 1 - p_trn - p_val
        logger.info("Splitting into %.0f%% train, %.0f%% val, and %.0f%% test", p_trn * 100, p_val * 100, p_tst * 100)
        train, val, test = [], [], []
        for label, category in enumerate(categories):
            category_dir = os.path.join(image_dir, category)
            images = [os.path.join(category_dir, im) for im in listdir_nohidden(category_dir)]
            random.shuffle(images)
            n_total = len(images)
            n_train = round(n_total * p_trn)
            n_val = round(n_total * p_val)
            n_test = n_total - n_train - n_val
            if not (n_train > 0 and n_val > 0 and n_test > 0):
                raise DatasetError(
                    f"read_and_split_data: {category_dir} has {n_total} images, too few for a "
                    f"{p_trn:.0%}/{p_val:.0%}/{p_tst:.0%} split (each part needs at least one)."
                )
            classname = new_cnames.get(category, category) if new_cnames else category

            def make(paths: list[str]) -> list[Datum]:
                return [Datum(impath=p, label=label, classname=classname) for p in paths]

            train.extend(make(images[:n_train]))
            val.extend(make(images[n_train : n_train + n_val]))
            test.extend(make(images[n_train + n_val :]))
        return train, val, test

    # ------------------------------------------------------------------ base/new classes
    @staticmethod
    def subsample_classes(*datasets: list[Datum], subsample: str = "all"):
        """Keep the first half ("base", gets the extra class when odd) or the second half ("new")
        of the sorted labels found in the first dataset, relabelled from 0, in every dataset.

        "all" returns the inputs unchanged (as a tuple).
        """
        if subsample not in ("all", "base", "new"):
            raise ConfigValueError(
                f"DATASET.SUBSAMPLE_CLASSES={subsample!r} is not one of 'all', 'base', 'new'."
            )
        if subsample == "all":
            return datasets
        labels = sorted({item.label for item in datasets[0]})
        m = math.ceil(len(labels) / 2)
        selected = labels[:m] if subsample == "base" else labels[m:]
        logger.info("SUBSAMPLE %s CLASSES!", subsample.upper())
        relabeler = {y: y_new for y_new, y in enumerate(selected)}
        output = []
        for dataset in datasets:
            output.append(
                [
                    # The items were checked when first built; skip the stat here.
                    Datum(impath=item.impath, label=relabeler[item.label], classname=item.classname, check_exists=False)
                    for item in dataset
                    if item.label in relabeler
                ]
            )
        return output

    # ------------------------------------------------------------------ few-shot cache
    def fewshot_cache_dir(self, cfg, dataset_dir: str) -> str:
        """`<FEWSHOT_CACHE_DIR>/<dataset folder name>` when that key is set, else `<dataset_dir>/split_fewshot`."""
        override = cfg.DATASET.get("FEWSHOT_CACHE_DIR", "")
        if override:
            base = os.path.abspath(os.path.expanduser(override))
            return os.path.join(base, os.path.basename(os.path.normpath(dataset_dir)))
        return os.path.join(dataset_dir, "split_fewshot")

    def load_or_generate_fewshot(
        self, cfg, dataset_dir: str, train: list[Datum], val: list[Datum] | None = None
    ) -> tuple[list[Datum], list[Datum] | None]:
        """Step 2 of the CoOp construction flow: K-shot train and min(K, 4)-shot val, cached.

        With DATASET.NUM_SHOTS < 1 the lists come back unchanged. Otherwise the cache
        `shot_{K}-seed_{SEED}.pkl` is loaded if present (legacy Dassl pickles included: absolute
        paths are rebased onto `dataset_dir`), else sampled and written atomically with paths
        relative to `dataset_dir`. Pass `val=None` for datasets without a val split (ImageNet):
        the cache then holds only "train".
        """
        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots < 1:
            return train, val
        cache_dir = self.fewshot_cache_dir(cfg, dataset_dir)
        self.split_fewshot_dir = cache_dir
        filepath = os.path.join(cache_dir, f"shot_{num_shots}-seed_{cfg.SEED}.pkl")
        if os.path.exists(filepath):
            logger.info("Loading preprocessed few-shot data from %s", filepath)
            data = load_fewshot_pickle(filepath)
            train = self._rebase_items(data["train"], dataset_dir, filepath)
            if val is not None:
                if data.get("val") is None:
                    raise DatasetError(
                        f"Few-shot cache {filepath} has no 'val' list, but {type(self).__name__} needs one. "
                        f"Delete the file and it will be regenerated."
                    )
                val = self._rebase_items(data["val"], dataset_dir, filepath)
            return train, val

        train = self.generate_fewshot_dataset(train, num_shots=num_shots)
        data = {"train": self._relative_items(train, dataset_dir)}
        if val is not None:
            val = self.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
            data["val"] = self._relative_items(val, dataset_dir)
        logger.info("Saving preprocessed few-shot data to %s", filepath)
        atomic_write_bytes(filepath, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
        return train, val

    @staticmethod
    def _relative_items(items: list[Datum], dataset_dir: str) -> list[Datum]:
        """Copies of `items` whose paths are relative to `dataset_dir` ('/' separated)."""
        root = os.path.normpath(dataset_dir)
        out = []
        for item in items:
            rel = os.path.relpath(os.path.normpath(item.impath), root).replace(os.sep, "/")
            out.append(Datum(rel, item.label, item.domain, item.classname, check_exists=False))
        return out

    def _rebase_items(self, items: list[Datum], dataset_dir: str, source: str) -> list[Datum]:
        """Resolve cached paths against the current `dataset_dir` and check that each image exists.

        Relative paths (our caches) are joined onto `dataset_dir`. Absolute paths (legacy caches
        written elsewhere) lose everything up to and including the last `/<dataset folder name>/`.
        """
        marker = "/" + os.path.basename(os.path.normpath(dataset_dir)) + "/"
        out = []
        for item in items:
            for attr in ("_impath", "_label", "_classname"):
                if not hasattr(item, attr):
                    raise DatasetError(f"Few-shot cache {source}: a record lacks {attr}. Delete the file.")
            path = item._impath.replace("\\", "/")
            if path.startswith("/") or (len(path) > 2 and path[1] == ":"):
                cut = path.rfind(marker)
                if cut < 0:
                    raise DatasetError(
                        f"Few-shot cache {source}: cannot rebase {item._impath!r} because it does not "
                        f"contain {marker!r}. Delete the file and it will be regenerated."
                    )
                path = path[cut + len(marker) :]
            impath = os.path.join(dataset_dir, *path.split("/"))
            try:
                out.append(Datum(impath, int(item._label), int(getattr(item, "_domain", 0)), item._classname))
            except FileNotFoundError as exc:
                raise DatasetError(
                    f"{type(self).__name__}: few-shot cache {source} lists {impath}, which does not exist. "
                    f"Delete the cache to resample, or check the dataset folder ({self.docs_ref()})."
                ) from exc
        return out


class SplitFileDataset(DatasetBase):
    """A CoOp dataset read from its `split_zhou_*.json`, generated from the raw files when missing.

    `__init__(cfg)` runs CoOp's construction flow: resolve `dataset_dir`; require the image folder
    `image_subdir` (stored as `image_dir`); read `split_file` (paths relative to
    `split_path_prefix()`) or, when it is missing, build it with `generate_split()` and save it;
    then the few-shot cache (`load_or_generate_fewshot`) and base/new class subsampling.
    Subclasses set the layout attributes (`raw_files` among them) and implement `generate_split`
    from their raw files.
    """

    # Image folder under dataset_dir, checked on every build. None: no single image folder; split
    # paths are then relative to dataset_dir itself and `generate_split` checks what it reads.
    image_subdir: str | None = None
    generates_split = True
    # Raw annotation files (relative to dataset_dir) that `generate_split` reads; the doctor
    # reports the missing ones while the split file is absent.
    raw_files: tuple[str, ...] = ()

    @classmethod
    def extra_checks(cls, dataset_dir: str) -> list[str]:
        """Without the split file, the raw files in `raw_files` are needed to generate it."""
        return cls.missing_raw_files(dataset_dir, cls.raw_files)

    def __init__(self, cfg) -> None:
        self.dataset_dir = self.resolve_dataset_dir(cfg)
        if self.image_subdir is not None:
            self.image_dir = self.require_dir(os.path.join(self.dataset_dir, self.image_subdir), "image folder")
        self.split_path = os.path.join(self.dataset_dir, self.split_file)
        prefix = self.split_path_prefix()

        if os.path.exists(self.split_path):
            train, val, test = self.read_split(self.split_path, prefix)
        else:
            train, val, test = self.generate_split()
            self.save_split(train, val, test, self.split_path, prefix)

        train, val = self.load_or_generate_fewshot(cfg, self.dataset_dir, train, val)
        train, val, test = self.subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    def split_path_prefix(self) -> str:
        """Folder the split file's paths are relative to: `image_dir`, or `dataset_dir` without one."""
        return self.image_dir if self.image_subdir is not None else self.dataset_dir

    def generate_split(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """(train, val, test) built from the raw files; called only when the split file is missing."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot generate {self.split_path}; download CoOp's {self.split_file}. "
            f"See {self.docs_ref()}."
        )

    def read_raw_lines(self, filename: str) -> list[str]:
        """Stripped non-blank lines of the raw file `dataset_dir/filename`, read to generate the split."""
        path = os.path.join(self.dataset_dir, filename)
        return self.read_lines(
            path,
            f"{type(self).__name__}: neither {self.split_path} nor {path} (needed to generate it) exists. "
            f"Download CoOp's {self.split_file} into {self.dataset_dir}.",
        )


def build_dataset(cfg) -> DatasetBase:
    """Instantiate `DATASET_REGISTRY[cfg.DATASET.NAME](cfg)`."""
    name = cfg.DATASET.NAME
    if name not in DATASET_REGISTRY:
        known = DATASET_REGISTRY.registered_names()
        hint = "" if known else " No dataset is registered: import the `datasets` package first."
        try:
            DATASET_REGISTRY.get(name)
        except UnknownNameError as exc:
            raise UnknownNameError(
                f"DATASET.NAME={name!r}: {exc}{hint} DATASET.NAME is the class name that "
                f"configs/datasets/<name>.yaml sets (e.g. Caltech101 in caltech101.yaml)."
            ) from None
    if cfg.VERBOSE:
        logger.info("Loading dataset: %s", name)
    return DATASET_REGISTRY.get(name)(cfg)
