"""The dataset doctor: check prepared datasets before a run wastes hours on a broken folder.

Usage::

    python -m datasets.doctor --root $DATA                       # every known dataset found under $DATA
    python -m datasets.doctor --root $DATA --dataset Caltech101 --dataset VTAB_cifar

Per dataset it checks the folder layout (`required_paths`), the split file, then builds the dataset
with its own class (so the doctor and training agree): every listed image must exist, no split may
be empty, per-split image/class counts are compared with `official_counts` (a difference is only a
warning: subsets are common), a seeded sample of images per split must decode, and the class's
`extra_checks` must pass. It prints one line per dataset, ``OK <name> (counts)`` or
``ERROR <name>: <problem> (see DATASETS.md#<anchor>)``, plus ``WARN`` lines, and exits with status 1
when any error was found.

The doctor never writes into the data folder. If building a dataset would write there (a missing
split file that training generates, a cache), the build is stopped before the write and a WARN line
says the file will be created on the first training run; the layout checks still apply.
"""
from __future__ import annotations

import argparse
import builtins
import os
import random
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence, TextIO

import datasets  # noqa: F401  (registers every dataset class)
from engine.data import DATASET_REGISTRY

__all__ = ["DatasetReport", "check_dataset", "run_doctor", "main", "find_dataset_dir"]

SPLIT_ATTRS = (("train", "train_x"), ("val", "val"), ("test", "test"))


@dataclass
class DatasetReport:
    """What the doctor found for one dataset."""

    name: str
    anchor: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int | None] = field(default_factory=dict)
    built: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        """The report lines: WARN lines first, then the OK or ERROR line."""
        out = [f"WARN {self.name}: {w}" for w in self.warnings]
        if self.errors:
            ref = f"see {self.anchor}"
            detail = "; ".join(self.errors)
            suffix = "" if self.anchor in detail else f" ({ref})"
            out.append(f"ERROR {self.name}: {detail}{suffix}")
        elif self.built:
            out.append(f"OK {self.name} ({_format_counts(self.counts)})")
        else:
            out.append(f"OK {self.name} (layout only: the dataset was not built, see the WARN above)")
        return out


def _format_counts(counts: dict[str, int | None]) -> str:
    return " ".join(f"{k}={'none' if v is None else f'{v:,}'}" for k, v in counts.items())


class _WriteAttempt(BaseException):
    """Raised by the write guard; a BaseException so that `except Exception` in dataset code lets it through."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


@contextmanager
def _no_writes_under(root: str) -> Iterator[None]:
    """Refuse any file creation or write-mode open inside `root` while the block runs."""
    real_root = os.path.realpath(root)

    def inside(path) -> bool:
        try:
            real = os.path.realpath(os.fspath(path))
        except TypeError:  # file descriptors and other non-paths
            return False
        return real == real_root or real.startswith(real_root + os.sep)

    orig_open, orig_os_open, orig_mkdir, orig_makedirs = builtins.open, os.open, os.mkdir, os.makedirs
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(file):
            raise _WriteAttempt(os.fspath(file))
        return orig_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags and inside(path):
            raise _WriteAttempt(os.fspath(path))
        return orig_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if inside(path):
            raise _WriteAttempt(os.fspath(path))
        return orig_mkdir(path, *args, **kwargs)

    def guarded_makedirs(name, *args, **kwargs):
        if inside(name) and not os.path.isdir(name):
            raise _WriteAttempt(os.fspath(name))
        return orig_makedirs(name, *args, **kwargs)

    builtins.open, os.open, os.mkdir, os.makedirs = guarded_open, guarded_os_open, guarded_mkdir, guarded_makedirs
    try:
        yield
    finally:
        builtins.open, os.open, os.mkdir, os.makedirs = orig_open, orig_os_open, orig_mkdir, orig_makedirs


def find_dataset_dir(cls: type, root: str) -> str:
    """The folder a dataset class reads under `root` (VTAB tasks also accept folder aliases)."""
    finder = getattr(cls, "find_dataset_dir", None)
    if finder is not None:
        return finder(root)
    return os.path.join(os.path.abspath(os.path.expanduser(root)), cls.dataset_dir)


def _doctor_cfg(name: str, root: str):
    from engine.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = os.path.abspath(os.path.expanduser(root))
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = -1  # all images: no few-shot cache is read or written
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    cfg.SEED = 1
    cfg.VERBOSE = False
    return cfg


def _unreadable(paths: Sequence[str], sample: int, rng: random.Random) -> list[str]:
    """Decode a seeded sample of `paths`; return the problems found (path and reason)."""
    from PIL import Image

    chosen = paths if len(paths) <= sample else rng.sample(list(paths), sample)
    problems = []
    for path in chosen:
        try:
            with Image.open(path) as img:
                img.convert("RGB")  # forces the full decode
        except Exception as exc:  # PIL raises several types for broken files
            problems.append(f"unreadable image {path} ({type(exc).__name__}: {exc}); re-extract or replace it")
    return problems


def check_dataset(name: str, root: str, sample: int = 20) -> DatasetReport:
    """Run every check for the registered dataset `name` under the data root `root`."""
    cls = DATASET_REGISTRY.get(name)
    report = DatasetReport(name=name, anchor=cls.docs_ref())
    dataset_dir = find_dataset_dir(cls, root)
    if not os.path.isdir(dataset_dir):
        report.errors.append(
            f"dataset folder {dataset_dir} not found under --root {root}; download and unpack it there"
        )
        return report

    for rel in cls.required_paths:
        path = os.path.join(dataset_dir, rel)
        if not os.path.exists(path):
            report.errors.append(f"missing {path}")
    skip_build = False
    if cls.split_file:
        split_path = os.path.join(dataset_dir, cls.split_file)
        if not os.path.exists(split_path):
            if cls.generates_split:
                report.warnings.append(f"split file missing: it will be generated on first run ({split_path})")
                skip_build = True
            else:
                report.errors.append(f"split file missing: {split_path}")
    try:
        report.errors.extend(cls.extra_checks(dataset_dir))
    except Exception as exc:  # a crashing check is itself a finding
        report.errors.append(f"extra checks failed: {type(exc).__name__}: {exc}")
    if report.errors or skip_build:
        return report

    try:
        # Caches a dataset may write (ImageNet's item lists) go to a throw-away folder instead.
        with tempfile.TemporaryDirectory(prefix="doctor-") as scratch, _no_writes_under(dataset_dir):
            cfg = _doctor_cfg(name, root)
            cfg.DATASET.FEWSHOT_CACHE_DIR = scratch
            dataset = cls(cfg)
    except _WriteAttempt as attempt:
        report.warnings.append(
            f"building it would write {attempt.path} (a generated file); it will be created on the first "
            f"training run, so the split was not checked now"
        )
        return report
    except Exception as exc:  # the dataset's own errors already say what is wrong and how to fix it
        report.errors.append(str(exc))
        return report

    report.built = True
    official = dict(cls.official_counts)
    report.counts["classes"] = dataset.num_classes
    if "classes" in official and dataset.num_classes != official["classes"]:
        report.warnings.append(
            f"{dataset.num_classes} classes, the official count is {official['classes']} (fine for a subset)"
        )
    rng = random.Random(0)
    for split, attr in SPLIT_ATTRS:
        items = getattr(dataset, attr)
        if items is None:
            report.counts[split] = None
            continue
        report.counts[split] = len(items)
        if len(items) == 0:
            report.errors.append(f"the {split} split is empty; check the split file and image folders")
            continue
        if split in official and len(items) != official[split]:
            report.warnings.append(
                f"{split} has {len(items):,} images, the official count is {official[split]:,} (fine for a subset)"
            )
        n_cls = len({item.label for item in items})
        if n_cls != dataset.num_classes:
            report.warnings.append(f"{split} covers {n_cls} of the {dataset.num_classes} classes")
        report.errors.extend(_unreadable([item.impath for item in items], sample, rng))
    return report


def run_doctor(root: str, names: Sequence[str] | None = None, sample: int = 20, out: TextIO | None = None) -> int:
    """Check `names` (default: every registered dataset whose folder exists under `root`); 0 if all OK."""
    out = out or sys.stdout
    root = os.path.abspath(os.path.expanduser(root))
    status = 0
    if not os.path.isdir(root):
        out.write(f"ERROR --root {root} is not a folder; point it at the folder holding the datasets (DATASET.ROOT)\n")
        return 1
    if names:
        selected = []
        for name in names:
            if name in DATASET_REGISTRY:
                selected.append(name)
            else:
                try:
                    DATASET_REGISTRY.get(name)
                except KeyError as exc:
                    out.write(f"ERROR {name}: not a registered dataset. {exc.args[0]}\n")
                status = 1
    else:
        known = [n for n in sorted(DATASET_REGISTRY.registered_names()) if DATASET_REGISTRY.get(n).dataset_dir]
        selected = [n for n in known if os.path.isdir(find_dataset_dir(DATASET_REGISTRY.get(n), root))]
        missing = [n for n in known if n not in selected]
        out.write(f"Found {len(selected)} known dataset folder(s) under {root}: {', '.join(selected) or '-'}\n")
        if missing:
            out.write(f"Not found (skipped; name them with --dataset to check): {', '.join(missing)}\n")
        if not selected:
            out.write(f"ERROR no known dataset folder under {root}; see DATASETS.md for the expected layouts\n")
            return 1
    for name in selected:
        report = check_dataset(name, root, sample=sample)
        for line in report.lines():
            out.write(line + "\n")
        out.flush()
        if not report.ok:
            status = 1
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.doctor", description="Check prepared datasets under a data root."
    )
    parser.add_argument("--root", required=True, help="the data root (DATASET.ROOT)")
    parser.add_argument(
        "--dataset", action="extend", nargs="+", default=[], metavar="NAME",
        help="registered dataset name(s) (the flag may repeat); default: every known dataset found under --root",
    )
    parser.add_argument("--sample", type=int, default=20, help="images decoded per split (default 20)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_doctor(args.root, args.dataset or None, sample=args.sample)


if __name__ == "__main__":
    sys.exit(main())
