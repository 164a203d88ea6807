"""Our numbers for registry rows, from the runs' results.json files, and the comparison table.

A run's results.json says what it measured: its trainer, backbone, shots, seed, dataset, the class
subset (base / new / all) and, in its provenance card, which dataset the evaluated model was
trained on. That decides the measure: ``base`` and ``new`` (base-to-new), ``xd`` (a model trained
on another dataset: cross-dataset and domain generalisation targets) or ``acc`` (trained and tested
on the same dataset: few-shot, the cross-dataset source, zero-shot).
"""
from __future__ import annotations

import glob
import json
import math
import os
import statistics
from dataclasses import dataclass, field

import yaml

from reproduce.registry import Row

__all__ = ["Measurement", "Ours", "Comparison", "collect", "ours_for", "compare_rows", "format_table",
           "dataset_config_names"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dataset_config_names() -> dict[str, str]:
    """DATASET.NAME -> the configs/datasets/<name>.yaml stem that sets it (the registry's names)."""
    names: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "datasets", "*.yaml"))):
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        name = (loaded.get("DATASET") or {}).get("NAME")
        if name:
            names.setdefault(name, os.path.splitext(os.path.basename(path))[0])
    return names


@dataclass(frozen=True)
class MeasureKey:
    trainer: str
    backbone: str
    shots: int
    measure: str  # base | new | xd | acc
    dataset: str  # configs/datasets name
    seed: int


@dataclass
class Measurement:
    key: MeasureKey
    accuracy: float
    path: str


def measure_of(record: dict) -> str:
    subsample = record.get("subsample")
    if subsample in ("base", "new"):
        return str(subsample)
    trained_on = ((record.get("provenance") or {}).get("checkpoint") or {}).get("trained_on")
    return "xd" if trained_on and trained_on != record.get("dataset") else "acc"


def read_measurement(path: str, names: dict[str, str]) -> Measurement | None:
    try:
        with open(path) as f:
            record = json.load(f)
        key = MeasureKey(str(record["trainer"]), str(record["backbone"]), int(record["shots"]), measure_of(record),
                         names.get(record["dataset"], str(record["dataset"]).lower()), int(record["seed"]))
        return Measurement(key, float(record["accuracy"]), path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def collect(paths: list[str]) -> dict[MeasureKey, Measurement]:
    """The measurements of the results.json files under `paths` (folders are searched recursively).
    A key found twice keeps the newest file."""
    names = dataset_config_names()
    files: list[str] = []
    for p in paths:
        if os.path.isfile(p):
            files.append(p)
        else:
            files += glob.glob(os.path.join(p, "**", "results.json"), recursive=True)
    found: dict[MeasureKey, Measurement] = {}
    for path in sorted(files, key=os.path.getmtime):
        m = read_measurement(path, names)
        if m is not None:
            found[m.key] = m
    return found


# ----------------------------------------------------------------------------- a row's number
@dataclass
class Ours:
    """Our number for a row: mean and sample std over seeds (std None with one seed)."""

    mean: float
    std: float | None
    seeds: list[int]
    files: list[str] = field(default_factory=list)


@dataclass
class DataLists:
    """The dataset lists an average row averages over (configs.py's base.data)."""

    base_to_new: list[str]
    all: list[str]
    cross_dataset: list[str]
    dg: list[str]
    xd_source: str

    @classmethod
    def from_data(cls, data: dict) -> DataLists:
        return cls(list(data["datasets_base_to_new"]), list(data["datasets_all"]),
                   list(data["datasets_cross_dataset"]), list(data["dg_datasets"]), str(data["xd_source"]))


def datasets_of(row: Row, lists: DataLists) -> list[str]:
    """The datasets whose runs make up the row's number."""
    if row.dataset == "average":
        return lists.base_to_new if row.protocol == "b2n" else lists.all
    if row.dataset == "average_xd":
        return [d for d in lists.cross_dataset if d not in lists.dg]
    if row.dataset == "average_dg":
        return list(lists.dg)
    return [row.dataset]


def _measure_for(row: Row, dataset: str, metric: str, lists: DataLists) -> str:
    if row.protocol == "b2n":
        return metric
    # A cross-dataset target is evaluated from the source's model, except without training (zero-shot: shots 0).
    if row.protocol in ("xd", "dg") and dataset != lists.xd_source and row.shots > 0:
        return "xd"
    return "acc"


def _hm(base: float, new: float) -> float:
    return 0.0 if base == 0 or new == 0 else 2.0 * base * new / (base + new)


def ours_for(row: Row, found: dict[MeasureKey, Measurement], lists: DataLists) -> tuple[Ours | None, list[str]]:
    """(our number, []) when every run the row needs is there, else (None, what is missing)."""
    datasets = datasets_of(row, lists)
    metrics = ["base", "new"] if row.metric == "H" else [row.metric]
    per_seed: dict[str, list[float]] = {m: [] for m in metrics}
    missing: list[str] = []
    files: list[str] = []
    for metric in metrics:
        for seed in row.seeds:
            values = []
            for ds in datasets:
                key = MeasureKey(row.trainer, row.backbone, row.shots, _measure_for(row, ds, metric, lists), ds, seed)
                m = found.get(key)
                if m is None:
                    missing.append(f"{key.measure} {ds} seed {seed}")
                else:
                    values.append(m.accuracy)
                    files.append(m.path)
            if len(values) == len(datasets):
                per_seed[metric].append(sum(values) / len(values))
    if missing:
        return None, missing
    if row.metric == "H":
        seeds_h = [_hm(b, n) for b, n in zip(per_seed["base"], per_seed["new"])]
        mean = _hm(statistics.fmean(per_seed["base"]), statistics.fmean(per_seed["new"]))
        std = statistics.stdev(seeds_h) if len(seeds_h) > 1 else None
    else:
        values = per_seed[row.metric]
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else None
    return Ours(mean, std, list(row.seeds), files), []


# ----------------------------------------------------------------------------- the table
@dataclass
class Comparison:
    row: Row
    ours: Ours | None
    problem: str = ""  # why there is no number (missing data, trainer, runs)

    @property
    def difference(self) -> float | None:
        return None if self.ours is None else self.ours.mean - self.row.value

    @property
    def within(self) -> bool | None:
        d = self.difference
        return None if d is None else abs(d) <= self.row.tolerance + 1e-9


def compare_rows(rows: list[Row], found: dict[MeasureKey, Measurement], lists: DataLists) -> list[Comparison]:
    out = []
    for row in rows:
        ours, missing = ours_for(row, found, lists)
        problem = ""
        if ours is None:
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            problem = f"no results for {shown}"
        out.append(Comparison(row, ours, problem))
    return out


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def format_table(comparisons: list[Comparison]) -> str:
    """published | ours (mean ± std, seeds) | difference | within tolerance, one line per row."""
    from tabulate import tabulate

    lines = []
    problems: dict[str, list[str]] = {}
    for c in comparisons:
        r = c.row
        if c.ours is None:
            problems.setdefault(c.problem, []).append(r.id)
            ours, verdict = "-", f"no number ({len(problems)})"
        else:
            spread = f" ± {c.ours.std:.2f}" if c.ours.std is not None else ""
            ours = f"{c.ours.mean:.2f}{spread} ({len(c.ours.seeds)} seed{'s' if len(c.ours.seeds) > 1 else ''})"
            verdict = "yes" if c.within else "NO"
        lines.append([r.id, f"{r.value:.2f}" + (" (demo)" if r.kind == "demo" else ""), ours,
                      _fmt(c.difference, signed=True), f"±{r.tolerance:g}", verdict])
    text = tabulate(lines, headers=["row", "published", "ours", "difference", "tolerance", "within"],
                    tablefmt="simple", disable_numparse=True)
    notes = [f"({i}) {problem} [{', '.join(ids[:3])}{f' and {len(ids) - 3} more' if len(ids) > 3 else ''}]"
             for i, (problem, ids) in enumerate(problems.items(), 1)]
    return "\n".join([text, *notes])
