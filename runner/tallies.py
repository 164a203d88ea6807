"""Accuracy and cost tables from each run's results.json (never from scraping logs).

Every column name carries its unit: accuracies in percent (`_pct`), times in seconds (`_s`),
memory in MB (`_mb`), parameter counts (`_params`). Per seed `<quantity>_seed<s>`, the mean over
seeds `<quantity>`, the sample std over seeds `<quantity>_std` (ddof=1; empty with one seed).

Accuracy CSVs keep the originals' columns (renamed with their unit) and dataset order. H of an
average is the harmonic mean of the averaged base and new accuracies (`harmonic_mean`), never the
mean of per-dataset H. A missing result is left empty (the originals wrote 0) and makes the
averages empty, so a hole is visible. A method that tests every epoch (DyT) also records the best test
accuracy over epochs (`best_epoch_accuracy`, what VTAB papers report): in `all` mode its column
`best_acc_pct` follows the last-epoch `acc_pct`. `data.groups` (label -> datasets) adds one row per
group (the mean over its datasets) before `average` (the mean over all datasets) and, after it,
`average_groups`, the mean of the group means (VTAB's Natural / Specialized / Structured convention;
`average` is then the 19-task mean). When the ledger holds finished zero-shot runs
(`ZERO_SHOT_TRAINERS`) with the same dataset, classes, shots, seed and backbone, their accuracy
follows as the reference (`zs_*`).

Cost CSVs: each quantity's seeds, mean and std side by side; blank where it does not apply (the
training time of an eval-only run; in xd the training cost is the source row's alone, the one
training run every target is evaluated from). The `average` row averages each quantity over the
rows it applies to; the `total (times only)` row adds up times only (a sum of memory peaks or of
parameter counts means nothing).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from runner.tasks import GridPoint, Job

logger = logging.getLogger(__name__)

# The originals' row order; datasets outside it (e.g. the demo world) follow in configured order.
B2N_ORDER = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
             "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
XD_ORDER = B2N_ORDER + ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
# Trainers whose runs serve as the zero-shot reference of the other methods' accuracy tables.
ZERO_SHOT_TRAINERS = ("ZeroshotCLIP", "ZeroshotCLIP2")
TOTAL_ROW = "total (times only)"
GROUPS_ROW = "average_groups"  # the mean of the data.groups rows
BEST_KEY = "best_epoch_accuracy"  # results.json: the best test accuracy over the tested epochs


def harmonic_mean(base, new):
    """H = 2 / (1/base + 1/new); works on scalars, arrays and Series. 0 when either is 0, NaN when either is NaN."""
    b = np.asarray(base, dtype=float)
    n = np.asarray(new, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where((b == 0) | (n == 0), 0.0, 2.0 * b * n / (b + n))
    h = np.where(np.isnan(b) | np.isnan(n), np.nan, h)
    if isinstance(base, pd.Series):
        return pd.Series(h, index=base.index)
    return float(h) if h.ndim == 0 else h


def read_results(output_dir: str) -> dict | None:
    path = os.path.join(output_dir, "results.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ordered(datasets: list[str], order: list[str]) -> list[str]:
    known = [d for d in order if d in datasets]
    return known + [d for d in datasets if d not in known]


def _value(rec: dict | None, key: str) -> float:
    if rec is None or rec.get(key) is None:
        return math.nan
    return float(rec[key])


def _std(values) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.std(arr, ddof=1)) if len(arr) > 1 else math.nan


def _collect(jobs: list[Job]) -> dict[tuple[str, str, int], dict | None]:
    missing = []
    out = {}
    for j in jobs:
        rec = read_results(j.output_dir)
        if rec is None:
            missing.append(j.output_dir)
        out[j.role, j.dataset, j.seed] = rec
    if missing:
        logger.warning("%d run(s) have no results.json; their cells stay empty: %s", len(missing), missing[:5])
    return out


# ----------------------------------------------------------------------------- zero-shot reference
@dataclass(frozen=True)
class RunKey:
    """What makes two runs' accuracies comparable: the same test classes of the same data and model."""

    dataset: str
    subsample: str
    shots: int
    seed: int
    backbone: str

    @classmethod
    def of(cls, rec: dict | None) -> RunKey | None:
        if rec is None:
            return None
        try:
            return cls(str(rec["dataset"]), str(rec.get("subsample")), int(rec.get("shots")), int(rec["seed"]),
                       str(rec.get("backbone")))
        except (KeyError, TypeError, ValueError):
            return None


def is_zero_shot(argv: list[str]) -> bool:
    """The command line runs one of ZERO_SHOT_TRAINERS."""
    return "--trainer" in argv and argv[argv.index("--trainer") + 1] in ZERO_SHOT_TRAINERS


class ZeroShotReference:
    """Zero-shot accuracies of finished runs, looked up by the RunKey of a method's run."""

    def __init__(self, accuracies: dict[RunKey, float] | None = None):
        self.accuracies = dict(accuracies or {})

    @classmethod
    def from_runs(cls, output_dirs: list[str]) -> ZeroShotReference:
        """From the results.json of finished zero-shot runs (e.g. the ledger's done rows)."""
        found: dict[RunKey, float] = {}
        for d in output_dirs:
            rec = read_results(d)
            key = RunKey.of(rec)
            if key is not None and rec.get("accuracy") is not None:
                found[key] = float(rec["accuracy"])
        return cls(found)

    def accuracy(self, rec: dict | None) -> float:
        key = RunKey.of(rec)
        return self.accuracies.get(key, math.nan) if key is not None else math.nan

    def __bool__(self) -> bool:
        return bool(self.accuracies)


# ----------------------------------------------------------------------------- accuracy
def _summary_rows(df: pd.DataFrame, groups: list[tuple[str, list[str]]], columns: list[str]) -> pd.DataFrame:
    """`df` plus one row per (label, datasets): the mean of `columns` over those datasets (a hole stays a hole)."""
    extra = [{"dataset": label, **df.loc[df.dataset.isin(members), columns].mean(skipna=False).to_dict()}
             for label, members in groups]
    return pd.concat([df, pd.DataFrame(extra)], ignore_index=True)


def _mean_over(df: pd.DataFrame, cols: list[str]) -> pd.Series:
    return df[cols].mean(axis=1, skipna=False)


def _std_over(df: pd.DataFrame, cols: list[str]) -> list[float]:
    return [_std(r) for r in df[cols].to_numpy()]


def _datasets_and_groups(mode: str, jobs: list[Job], data: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Row order and the summary rows of a table: `average`, or `average_xd` / `average_dg` in xd."""
    if mode == "xd":
        source = data["xd_source"]
        dg = set(data["dg_datasets"])
        targets = [d for d in dict.fromkeys(ordered([j.dataset for j in jobs if j.role == "xd_target"], XD_ORDER))
                   if d != source]
        return [source] + targets, [("average_xd", [d for d in targets if d not in dg]),
                                    ("average_dg", [d for d in targets if d in dg])]
    datasets = ordered(list(dict.fromkeys(j.dataset for j in jobs)), B2N_ORDER)
    return datasets, [*_group_rows(data, datasets), ("average", datasets)]


def _group_rows(data: dict, datasets: list[str]) -> list[tuple[str, list[str]]]:
    """data.groups restricted to the datasets in the table; a group with none of them has no row."""
    rows = [(label, [d for d in members if d in datasets]) for label, members in (data.get("groups") or {}).items()]
    return [(label, members) for label, members in rows if members]


def _groups_mean_row(df: pd.DataFrame, labels: list[str], columns: list[str]) -> pd.DataFrame:
    """`df` plus the GROUPS_ROW: the mean of the group rows (each group weighs the same, whatever its size)."""
    row = {"dataset": GROUPS_ROW, **df.loc[df.dataset.isin(labels), columns].mean(skipna=False).to_dict()}
    return pd.concat([df, pd.DataFrame([row])], ignore_index=True)


@dataclass(frozen=True)
class AccuracyPart:
    """One accuracy quantity of a table: its column name, the runs it comes from, its results.json key."""

    name: str
    role: str
    key: str = "accuracy"


def _accuracy_parts(mode: str, res: dict) -> list[AccuracyPart]:
    if mode == "b2n":
        return [AccuracyPart("base_acc_pct", "train_base"), AccuracyPart("new_acc_pct", "test_new")]
    if mode == "xd":
        return [AccuracyPart("acc_pct", "xd_target")]
    parts = [AccuracyPart("acc_pct", "all")]
    if any(rec is not None and rec.get(BEST_KEY) is not None for rec in res.values()):
        parts.append(AccuracyPart("best_acc_pct", "all", BEST_KEY))
    return parts


def accuracy_table(mode: str, jobs: list[Job], seeds: list[int], data: dict,
                   reference: ZeroShotReference | None = None) -> pd.DataFrame:
    """The accuracy table of one grid point (see the module docstring for the rules)."""
    res = _collect(jobs)
    datasets, groups = _datasets_and_groups(mode, jobs, data)
    parts = _accuracy_parts(mode, res)
    rows = []
    for ds in datasets:
        row: dict = {"dataset": ds}
        for part in parts:
            role = "xd_source" if mode == "xd" and ds == data["xd_source"] else part.role
            recs = [res.get((role, ds, s)) for s in seeds]
            row.update({f"{part.name}_seed{s}": _value(r, part.key) for s, r in zip(seeds, recs)})
            if reference and part.key == "accuracy":
                row.update({f"zs_{part.name}_seed{s}": reference.accuracy(r) for s, r in zip(seeds, recs)})
        rows.append(row)
    df = pd.DataFrame(rows)
    value_columns = [c for c in df.columns if c != "dataset"]
    df = _summary_rows(df, groups, value_columns)
    group_labels = [label for label, _ in groups if label in (data.get("groups") or {})]
    if group_labels:
        df = _groups_mean_row(df, group_labels, value_columns)
    names = [part.name for part in parts]
    if mode == "b2n":
        # Every H, per seed and overall, average rows included, is the HM of that row's base and new.
        for s in seeds:
            df[f"H_pct_seed{s}"] = harmonic_mean(df[f"base_acc_pct_seed{s}"], df[f"new_acc_pct_seed{s}"])
        names.append("H_pct")
    for name in names:
        df[name] = _mean_over(df, [f"{name}_seed{s}" for s in seeds])
    if mode == "b2n":
        df["H_pct"] = harmonic_mean(df["base_acc_pct"], df["new_acc_pct"])
    for name in names:
        df[f"{name}_std"] = _std_over(df, [f"{name}_seed{s}" for s in seeds])
    columns = ["dataset", *[f"{n}_seed{s}" for n in names for s in seeds], *names, *[f"{n}_std" for n in names]]
    zs_seed_cols = [c for c in df.columns if c.startswith("zs_")]
    if zs_seed_cols and df[zs_seed_cols].notna().any().any():
        zs_names = [f"zs_{part.name}" for part in parts if part.key == "accuracy"]
        for zs in zs_names:
            df[zs] = _mean_over(df, [f"{zs}_seed{s}" for s in seeds])
        if mode == "b2n":
            df["zs_H_pct"] = harmonic_mean(df["zs_base_acc_pct"], df["zs_new_acc_pct"])
            zs_names.append("zs_H_pct")
        columns += zs_names
    return df[columns].round(2)


# ----------------------------------------------------------------------------- cost
@dataclass(frozen=True)
class CostColumn:
    """One quantity of the cost table: its column name, the results.json key, and whose run it comes from."""

    name: str
    key: str
    role: str | None = None  # b2n: the run it comes from; None: the row's own run

    @property
    def is_time(self) -> bool:
        return self.name.endswith("_s")

    @property
    def is_training(self) -> bool:
        """A cost of training: it belongs to the run that trained, not to runs evaluated from its model."""
        return self.key in ("train_time_s", "train_step_memory_mb", "trainable_params")


_MEMORY = [CostColumn("peak_memory_mb", "peak_memory_mb"), CostColumn("train_step_memory_mb", "train_step_memory_mb"),
           CostColumn("trainable_params", "trainable_params")]
COST_COLUMNS = {
    # b2n: training cost and the base test from the training run, the new test from its eval run.
    "b2n": [CostColumn("train_time_s", "train_time_s", "train_base"),
            CostColumn("base_test_time_s", "test_time_s", "train_base"),
            CostColumn("new_test_time_s", "test_time_s", "test_new"),
            *[CostColumn(c.name, c.key, "train_base") for c in _MEMORY]],
    "xd": [CostColumn("train_time_s", "train_time_s"), CostColumn("test_time_s", "test_time_s"), *_MEMORY],
    "all": [CostColumn("train_time_s", "train_time_s"), CostColumn("test_time_s", "test_time_s"), *_MEMORY],
}
EVAL_ROLES = ("test_new", "xd_target")  # runs that evaluate another run's model


def _row_role(mode: str, dataset: str, data: dict) -> str:
    if mode == "xd":
        return "xd_source" if dataset == data["xd_source"] else "xd_target"
    return "all"


def cost_table(mode: str, jobs: list[Job], seeds: list[int], data: dict) -> pd.DataFrame:
    """Training time, test time(s), peak memory, the memory the training step adds, and trainable
    parameters, per seed with mean and std, plus `average` and `total (times only)` rows."""
    res = _collect(jobs)
    datasets, _ = _datasets_and_groups(mode, jobs, data)
    columns = COST_COLUMNS[mode]
    applies: dict[str, list[str]] = {c.name: [] for c in columns}  # column -> rows it applies to
    rows = []
    for ds in datasets:
        row: dict = {"dataset": ds}
        for col in columns:
            role = col.role or _row_role(mode, ds, data)
            if col.is_training and role in EVAL_ROLES:
                values = [math.nan] * len(seeds)  # counted once, in the row of the run that trained
            else:
                applies[col.name].append(ds)
                values = [_value(res.get((role, ds, s)), col.key) for s in seeds]
            row.update({f"{col.name}_seed{s}": v for s, v in zip(seeds, values)})
        rows.append(row)
    df = pd.DataFrame(rows)
    summary = []
    for label in ("average", TOTAL_ROW):
        row = {"dataset": label}
        for col in columns:
            if label == TOTAL_ROW and not col.is_time:
                continue
            members = df.dataset.isin(applies[col.name])
            for s in seeds:
                values = df.loc[members, f"{col.name}_seed{s}"]
                row[f"{col.name}_seed{s}"] = values.mean(skipna=False) if label == "average" else values.sum(skipna=False)
        summary.append(row)
    df = pd.concat([df, pd.DataFrame(summary)], ignore_index=True)
    ordered_cols = ["dataset"]
    for col in columns:
        seed_cols = [f"{col.name}_seed{s}" for s in seeds]
        df[col.name] = _mean_over(df, seed_cols)
        df[f"{col.name}_std"] = _std_over(df, seed_cols)
        ordered_cols += [*seed_cols, col.name, f"{col.name}_std"]
    out = df[ordered_cols].round(2)
    for name in [c for c in out.columns if c.startswith("trainable_params") and not c.endswith("_std")]:
        if (out[name].dropna() % 1 == 0).all():  # counts print as integers (a blank stays blank)
            out[name] = out[name].astype("Int64")
    return out


def write_csv(df: pd.DataFrame, path: str) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a table."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def write_point_tables(mode: str, point: GridPoint, seeds: list[int], data: dict,
                       reference: ZeroShotReference | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the accuracy and cost CSVs of one grid point (rounded to 2 decimals, no index)."""
    acc = accuracy_table(mode, point.jobs, seeds, data, reference)
    cost = cost_table(mode, point.jobs, seeds, data)
    write_csv(acc, point.acc_csv)
    write_csv(cost, point.cost_csv)
    return acc, cost


@dataclass
class Headline:
    """The one number a method is compared by, with its std over seeds."""

    row: str
    column: str
    value: float
    std: float

    @property
    def label(self) -> str:
        """e.g. `average H`: the row and the quantity, without the unit."""
        return f"{self.row} {self.column.removesuffix('_pct')}"

    def text(self) -> str:
        """e.g. `average H (%) = 71.20 ± 0.85` (no ± with one seed)."""
        std = f" ± {self.std:.2f}" if not math.isnan(self.std) else ""
        return f"{self.label} (%) = {self.value:.2f}{std}"


HEADLINES = {"b2n": ("average", "H_pct"), "xd": ("average_xd", "acc_pct"), "all": ("average", "acc_pct")}


def headline(mode: str, acc: pd.DataFrame) -> Headline:
    """Average H (b2n), average_xd accuracy (xd), average accuracy (all); with data.groups, the mean
    of the group means (the number VTAB papers print)."""
    row, col = HEADLINES[mode]
    if mode != "xd" and (acc.dataset == GROUPS_ROW).any():
        row = GROUPS_ROW
    sel = acc.loc[acc.dataset == row]
    if sel.empty:
        return Headline(row, col, math.nan, math.nan)
    std = sel[f"{col}_std"].iloc[0] if f"{col}_std" in sel else math.nan
    return Headline(row, col, float(sel[col].iloc[0]), float(std))
