"""The dataset doctor: check prepared datasets before a run wastes hours on a broken folder.

Usage::

    python -m datasets.doctor --root $DATA                       # every known dataset found under $DATA
    python -m datasets.doctor --root $DATA --dataset Caltech101 --dataset vtab_cifar
    python -m datasets.doctor --root $DATA --custom-dir my_data  # your own data (DATASET.CUSTOM.DIR)
    python -m datasets.doctor --list                             # every name --dataset accepts

A dataset is named by its class (`Caltech101`) or its config name (`caltech101`, the stem of
configs/datasets/<name>.yaml), in any case.

Per dataset it checks the folder layout (`required_paths`), the split file, then builds the dataset
with its own class (so the doctor and training agree): every listed image must exist, no split may
be empty, per-split image/class counts are compared with `official_counts` (a difference is only a
warning: subsets are common), a seeded sample of images per split must decode, and the class's
`extra_checks` must pass. Non-image files that were skipped and classes whose prompts would be
identical are warnings. It prints one line per dataset, ``OK <name> (counts)`` or
``ERROR <name>: <problem> (see DATASETS.md#<anchor>)``, plus ``WARN`` lines, and exits with status 1
when any error was found. A mistake on the command line (no such --root folder, an unknown dataset
name) is one ``error: ...`` line on stderr and exit status 2.

The doctor never writes into the data folder. If building a dataset would write there (a missing
split file that training generates, a cache), the build is stopped before the write and a WARN line
says the file will be created on the first training run; the layout checks still apply.
"""
from __future__ import annotations

import argparse
import builtins
import os
import random
import re
import sys
import tempfile
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence, TextIO

import yaml
from tabulate import tabulate

import datasets  # noqa: F401  (registers every dataset class)
from engine.data import DATASET_REGISTRY, DatasetBase
from engine.data.checks import describe_identical_prompts, describe_ignored_files, find_identical_prompts
from engine.errors import ConfigValueError, MissingFileError, UserError, run_cli
from engine.registry import UnknownNameError, closest_matches

__all__ = [
    "DatasetReport",
    "check_dataset",
    "run_doctor",
    "main",
    "find_dataset_dir",
    "resolve_dataset_name",
    "dataset_config_names",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "datasets"
CUSTOM = "Custom"

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
        self.path = _target_of(path)


def _target_of(path: str) -> str:
    """The file a write is for: `engine.utils.atomic_open` first writes `.<name>.<random>.tmp` next to it."""
    folder, name = os.path.split(path)
    match = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name)
    return os.path.join(folder, match.group(1)) if match else path


@contextmanager
def _no_writes_under(*roots: str) -> Iterator[None]:
    """Refuse any file creation or write-mode open inside any of `roots` while the block runs."""
    real_roots = [os.path.realpath(root) for root in roots]

    def inside(path) -> bool:
        try:
            real = os.path.realpath(os.fspath(path))
        except TypeError:  # file descriptors and other non-paths
            return False
        return any(real == r or real.startswith(r + os.sep) for r in real_roots)

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
        # os.makedirs(existing, exist_ok=True) calls mkdir and expects FileExistsError: not a write.
        if inside(path) and not os.path.exists(path):
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


def dataset_config_names() -> dict[str, str]:
    """Config name (stem of configs/datasets/<stem>.yaml) -> the registered DATASET.NAME it sets."""
    names = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
        name = (config.get("DATASET") or {}).get("NAME")
        if name in DATASET_REGISTRY:
            names[path.stem] = name
    return names


def resolve_dataset_name(name: str) -> str:
    """The registered name for `name`: a registered or config name, in any case.

    An unknown name raises `UnknownNameError` with the closest names and how to list them all.
    """
    if name in DATASET_REGISTRY:
        return name
    config_names = dataset_config_names()
    aliases = {stem.lower(): target for stem, target in config_names.items()}
    aliases.update({registered.lower(): registered for registered in DATASET_REGISTRY})
    found = aliases.get(name.strip().lower())
    if found is not None:
        return found
    # Suggest each name once: a class name that only differs from its config name in case is left out.
    candidates = [*config_names, *(n for n in DATASET_REGISTRY if n.lower() not in config_names)]
    matches = closest_matches(name, candidates)
    hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
    raise UnknownNameError(
        f"unknown dataset {name!r}.{hint} `python -m datasets.doctor --list` lists every name "
        f"(the class names and the configs/datasets/*.yaml names)."
    )


def _doctor_cfg(name: str, root: str, overrides: Mapping[str, str] | None = None):
    from engine.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = os.path.abspath(os.path.expanduser(root))
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = -1  # all images: no few-shot cache is read or written
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    cfg.SEED = 1
    cfg.VERBOSE = False
    for key, value in (overrides or {}).items():  # set as given: a folder named "2024" stays a string
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return cfg


def _write_guarded_folders(cls: type, cfg, dataset_dir: str) -> list[str]:
    """Folders the build must not write into: the dataset folder, and where the data really lies
    when the class says (`Custom` may point outside --root)."""
    folders = [dataset_dir]
    source_folder = getattr(cls, "source_folder", None)
    if source_folder is not None:
        folders.append(source_folder(cfg))
    return folders


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


def check_dataset(
    name: str, root: str, sample: int = 20, overrides: Mapping[str, str] | None = None
) -> DatasetReport:
    """Run every check for the registered dataset `name` under the data root `root`.

    `overrides` are config values (dotted key -> value) for building it: Custom's DATASET.CUSTOM.DIR or CSV.
    """
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

    dataset = _build(cls, _doctor_cfg(name, root, overrides), dataset_dir, report)
    if dataset is not None:
        report.built = True
        _check_built(dataset, report, sample)
    return report


def _build(cls: type, cfg, dataset_dir: str, report: DatasetReport) -> DatasetBase | None:
    """Build the dataset without writing into its folders; None (with the finding in `report`) if
    it cannot be built or would write."""
    # Created apart from __init__ so that what the build found before it stopped (the non-image
    # files `Custom` skipped) can still be reported.
    dataset = cls.__new__(cls)
    try:
        # Caches a dataset may write (ImageNet's item lists) go to a throw-away folder instead.
        with tempfile.TemporaryDirectory(prefix="doctor-") as scratch, _no_writes_under(
            *_write_guarded_folders(cls, cfg, dataset_dir)
        ):
            cfg.DATASET.FEWSHOT_CACHE_DIR = scratch
            dataset.__init__(cfg)
        return dataset
    except _WriteAttempt as attempt:
        report.warnings.extend(_ignored_files_warnings(dataset))
        report.warnings.append(
            f"building it would write {attempt.path} (a generated file); it will be created on the first "
            f"training run, so the split was not checked now"
        )
    except UserError as exc:  # the dataset's own errors already say what is wrong and how to fix it
        report.warnings.extend(_ignored_files_warnings(dataset))
        report.errors.append(str(exc))
    except Exception as exc:  # a bug, not a data problem: keep its traceback for the report
        traceback.print_exc(file=sys.stderr)
        report.errors.append(f"building it failed unexpectedly ({type(exc).__name__}: {exc}); traceback on stderr")
    return None


def _check_built(dataset: DatasetBase, report: DatasetReport, sample: int) -> None:
    """Findings about a built dataset: skipped files, class names, counts, empty splits, decoding."""
    report.warnings.extend(_ignored_files_warnings(dataset))
    identical = find_identical_prompts(dataset.lab2cname)
    if identical:
        report.warnings.append(describe_identical_prompts(identical))
    official = dict(type(dataset).official_counts)
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


def _ignored_files_warnings(dataset: DatasetBase) -> list[str]:
    return [describe_ignored_files(dataset.ignored_files)] if dataset.ignored_files else []


def _custom_overrides(custom_dir: str, custom_csv: str) -> dict[str, str]:
    """The DATASET.CUSTOM.* values for --custom-dir / --custom-csv."""
    if custom_dir and custom_csv:
        raise ConfigValueError("give only one of --custom-dir and --custom-csv (one Custom dataset at a time)")
    if custom_dir:
        return {"DATASET.CUSTOM.DIR": custom_dir}
    if custom_csv:
        return {"DATASET.CUSTOM.CSV": custom_csv}
    return {}


def _found_datasets(root: str, out: TextIO) -> list[str]:
    """The registered datasets whose folder exists under `root` (printed); none found is a user error."""
    known = [n for n in sorted(DATASET_REGISTRY.registered_names()) if DATASET_REGISTRY.get(n).dataset_dir]
    selected = [n for n in known if os.path.isdir(find_dataset_dir(DATASET_REGISTRY.get(n), root))]
    if not selected:
        raise MissingFileError(
            f"no known dataset folder under --root {root}. Point --root at the folder holding the datasets "
            f"(DATASET.ROOT), or name one with --dataset to see what it is missing; DATASETS.md shows the "
            f"expected folders."
        )
    missing = [n for n in known if n not in selected]
    out.write(f"Found {len(selected)} known dataset folder(s) under {root}: {', '.join(selected)}\n")
    if missing:
        out.write(f"Not found (skipped; name them with --dataset to check): {', '.join(missing)}\n")
    return selected


def run_doctor(
    root: str,
    names: Sequence[str] | None = None,
    sample: int = 20,
    out: TextIO | None = None,
    custom_dir: str = "",
    custom_csv: str = "",
) -> int:
    """Check `names` (default: every registered dataset whose folder exists under `root`); 0 if all OK,
    1 if a dataset has an error.

    `custom_dir` / `custom_csv` (DATASET.CUSTOM.DIR / CSV) check the `Custom` dataset too. Mistakes in
    the request (no such `root`, an unknown name, Custom without its source) raise a `UserError`
    before anything is checked.
    """
    out = out or sys.stdout
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise MissingFileError(
            f"--root {root} is not a folder; point it at the folder holding the datasets (DATASET.ROOT)"
        )
    custom = _custom_overrides(custom_dir, custom_csv)
    selected = list(dict.fromkeys(resolve_dataset_name(n) for n in names or ()))
    if custom and CUSTOM not in selected:
        selected.append(CUSTOM)
    if CUSTOM in selected and not custom:
        raise ConfigValueError(
            f"the Custom dataset needs --custom-dir DIR (an image-folder tree) or --custom-csv FILE (a CSV), "
            f"as DATASET.CUSTOM.DIR / CSV in training; see {DATASET_REGISTRY.get(CUSTOM).docs_ref()}"
        )
    if not selected:
        selected = _found_datasets(root, out)
    status = 0
    for name in selected:
        report = check_dataset(name, root, sample=sample, overrides=custom if name == CUSTOM else None)
        for line in report.lines():
            out.write(line + "\n")
        out.flush()
        if not report.ok:
            status = 1
    return status


def list_names(out: TextIO | None = None) -> None:
    """Print every dataset --dataset accepts: class name, config name(s), folder under --root."""
    out = out or sys.stdout
    by_class: dict[str, list[str]] = {}
    for stem, name in dataset_config_names().items():
        by_class.setdefault(name, []).append(stem)
    rows = [
        [name, ", ".join(by_class.get(name, [])) or "-", DATASET_REGISTRY.get(name).dataset_dir or "(--custom-dir/csv)"]
        for name in sorted(DATASET_REGISTRY.registered_names(), key=str.lower)
    ]
    out.write(tabulate(rows, headers=["dataset", "config name", "folder under --root"]) + "\n")
    out.write("--dataset takes either name, in any case.\n")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 (decode none) or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.doctor", description="Check prepared datasets under a data root."
    )
    parser.add_argument("--root", help="the data root (DATASET.ROOT); required unless --list")
    parser.add_argument(
        "--dataset", action="extend", nargs="+", default=[], metavar="NAME",
        help="dataset name(s): class (Caltech101) or config name (caltech101), any case; the flag may "
        "repeat. Default: every known dataset found under --root",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--custom-dir", default="", metavar="DIR",
                        help="check the Custom dataset in this image-folder tree (DATASET.CUSTOM.DIR)")
    source.add_argument("--custom-csv", default="", metavar="FILE",
                        help="check the Custom dataset listed in this CSV (DATASET.CUSTOM.CSV)")
    parser.add_argument("--sample", type=_non_negative_int, default=20, help="images decoded per split (default 20)")
    parser.add_argument("--list", action="store_true", help="list every dataset name --dataset accepts, then exit")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        list_names()
        return 0
    if not args.root:
        parser.error("--root is required: the folder holding the datasets (DATASET.ROOT)")
    return run_doctor(
        args.root, args.dataset or None, sample=args.sample, custom_dir=args.custom_dir, custom_csv=args.custom_csv
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: exit status 0 (all OK), 1 (a dataset has an error) or 2 (a usage mistake)."""
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
