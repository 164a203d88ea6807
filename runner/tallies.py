"""Accuracy and cost tables from each run's results.json (never from scraping logs).

Accuracy CSVs keep the originals' columns and dataset order and add standard deviations over
seeds (sample std, ddof=1; empty with one seed). H of an average is the harmonic mean of the
averaged base and new accuracies (`harmonic_mean`), never the mean of per-dataset H. A missing
result is left empty (the originals wrote 0) and makes the averages empty, so a hole is visible.
"""
from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import pandas as pd

from runner.tasks import GridPoint, Job

logger = logging.getLogger(__name__)

# The originals' row order; datasets outside it (e.g. the demo world) follow in configured order.
B2N_ORDER = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
             "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
XD_ORDER = B2N_ORDER + ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]


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


def read_results(job: Job) -> dict | None:
    path = os.path.join(job.output_dir, "results.json")
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


def _std(values: list[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.std(arr, ddof=1)) if len(arr) > 1 else math.nan


def _collect(jobs: list[Job]) -> dict[tuple[str, str, int], dict | None]:
    missing = []
    out = {}
    for j in jobs:
        rec = read_results(j)
        if rec is None:
            missing.append(j.output_dir)
        out[j.role, j.dataset, j.seed] = rec
    if missing:
        logger.warning("%d run(s) have no results.json; their cells stay empty: %s", len(missing), missing[:5])
    return out


def accuracy_table(mode: str, jobs: list[Job], seeds: list[int], data: dict) -> pd.DataFrame:
    """The accuracy table of one grid point (see the module docstring for the rules)."""
    res = _collect(jobs)
    s_cols = [f"seed{s}" for s in seeds]
    if mode == "b2n":
        datasets = ordered(list(dict.fromkeys(j.dataset for j in jobs)), B2N_ORDER)
        rows = []
        for ds in datasets:
            base = [_value(res.get(("train_base", ds, s)), "accuracy") for s in seeds]
            new = [_value(res.get(("test_new", ds, s)), "accuracy") for s in seeds]
            rows.append({"dataset": ds, **{f"base_acc_{c}": b for c, b in zip(s_cols, base)},
                         **{f"new_acc_{c}": n for c, n in zip(s_cols, new)}})
        df = pd.DataFrame(rows)
        avg = {"dataset": "average", **df.drop(columns="dataset").mean(skipna=False).to_dict()}
        df = pd.concat([df, pd.DataFrame([avg])], ignore_index=True)
        base_cols = [f"base_acc_{c}" for c in s_cols]
        new_cols = [f"new_acc_{c}" for c in s_cols]
        # Every H, per seed and overall, average row included, is the HM of that row's base and new.
        for c in s_cols:
            df[f"H_{c}"] = harmonic_mean(df[f"base_acc_{c}"], df[f"new_acc_{c}"])
        df["base_acc"] = df[base_cols].mean(axis=1, skipna=False)
        df["new_acc"] = df[new_cols].mean(axis=1, skipna=False)
        df["H"] = harmonic_mean(df["base_acc"], df["new_acc"])
        df["base_acc_std"] = [_std(r) for r in df[base_cols].to_numpy()]
        df["new_acc_std"] = [_std(r) for r in df[new_cols].to_numpy()]
        df["H_std"] = [_std(r) for r in df[[f"H_{c}" for c in s_cols]].to_numpy()]
        return df.round(2)

    if mode == "xd":
        source = data["xd_source"]
        dg = set(data["dg_datasets"])
        targets = ordered([j.dataset for j in jobs if j.role == "xd_target"], XD_ORDER)
        targets = list(dict.fromkeys(targets))
        datasets = [source] + [d for d in targets if d != source]
        roles = {source: "xd_source"}
    else:
        datasets = ordered(list(dict.fromkeys(j.dataset for j in jobs)), B2N_ORDER)
        roles = {}
    rows = []
    for ds in datasets:
        role = roles.get(ds, "xd_target" if mode == "xd" else "all")
        accs = [_value(res.get((role, ds, s)), "accuracy") for s in seeds]
        rows.append({"dataset": ds, **{f"acc_{c}": a for c, a in zip(s_cols, accs)}})
    df = pd.DataFrame(rows)
    seed_cols = [f"acc_{c}" for c in s_cols]
    if mode == "xd":
        xd_rows = df[df.dataset.isin([d for d in datasets[1:] if d not in dg])]
        dg_rows = df[df.dataset.isin([d for d in datasets[1:] if d in dg])]
        extra = [{"dataset": "average_xd", **xd_rows[seed_cols].mean(skipna=False).to_dict()},
                 {"dataset": "average_dg", **dg_rows[seed_cols].mean(skipna=False).to_dict()}]
    else:
        extra = [{"dataset": "average", **df[seed_cols].mean(skipna=False).to_dict()}]
    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    df["acc"] = df[seed_cols].mean(axis=1, skipna=False)
    df["acc_std"] = [_std(r) for r in df[seed_cols].to_numpy()]
    return df.round(2)


def cost_table(mode: str, jobs: list[Job], seeds: list[int], data: dict) -> pd.DataFrame:
    """Training time (s), test time (s), measured peak memory (MB) and trainable parameters, per
    seed and mean, with `average` and `total` rows. In b2n, training time, memory and parameters
    come from the training run, and the test times from its closing test (base) and the new-class eval."""
    res = _collect(jobs)
    s_cols = [f"seed{s}" for s in seeds]
    if mode == "b2n":
        datasets = ordered(list(dict.fromkeys(j.dataset for j in jobs)), B2N_ORDER)
        fields = [("training_time", "train_base", "train_time_s"), ("base_test_time", "train_base", "test_time_s"),
                  ("new_test_time", "test_new", "test_time_s"), ("peak_memory_mb", "train_base", "peak_memory_mb"),
                  ("parameter", "train_base", "trainable_params")]
        role_of = lambda ds, default: default  # noqa: E731
    else:
        if mode == "xd":
            source = data["xd_source"]
            targets = list(dict.fromkeys(ordered([j.dataset for j in jobs if j.role == "xd_target"], XD_ORDER)))
            datasets = [source] + [d for d in targets if d != source]
        else:
            datasets = ordered(list(dict.fromkeys(j.dataset for j in jobs)), B2N_ORDER)
        fields = [("training_time", None, "train_time_s"), ("test_time", None, "test_time_s"),
                  ("peak_memory_mb", None, "peak_memory_mb"), ("parameter", None, "trainable_params")]
        default_role = "all" if mode == "all" else "xd_target"
        role_of = lambda ds, _: ("xd_source" if mode == "xd" and ds == data["xd_source"] else default_role)  # noqa: E731
    rows = []
    for ds in datasets:
        row: dict = {"dataset": ds}
        for name, role, key in fields:
            for s, c in zip(seeds, s_cols):
                rec = res.get((role_of(ds, role), ds, s))
                v = _value(rec, key)
                # An eval-only run trains for 0 s (results.json says null).
                row[f"{name}_{c}"] = 0.0 if (key == "train_time_s" and rec is not None and math.isnan(v)) else v
        rows.append(row)
    df = pd.DataFrame(rows)
    for name, _, _ in fields:
        df[name] = df[[f"{name}_{c}" for c in s_cols]].mean(axis=1, skipna=False)
    numeric = df.drop(columns="dataset")
    avg = {"dataset": "average", **numeric.mean(skipna=False).to_dict()}
    tot = {"dataset": "total", **numeric.sum(skipna=False).to_dict()}
    out = pd.concat([df, pd.DataFrame([avg, tot])], ignore_index=True).round(2)
    for col in [c for c in out.columns if c.startswith("parameter")]:
        if (out[col].dropna() % 1 == 0).all():  # counts print as integers (a missing one stays empty)
            out[col] = out[col].astype("Int64")
    return out


def write_point_tables(mode: str, point: GridPoint, seeds: list[int], data: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the accuracy and cost CSVs of one grid point (rounded to 2 decimals, no index)."""
    acc = accuracy_table(mode, point.jobs, seeds, data)
    cost = cost_table(mode, point.jobs, seeds, data)
    for df, path in ((acc, point.acc_csv), (cost, point.cost_csv)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    return acc, cost


def headline(mode: str, acc: pd.DataFrame) -> tuple[str, float]:
    """The one number a method is compared by: average H (b2n), average_xd (xd), average acc (all)."""
    row, col = {"b2n": ("average", "H"), "xd": ("average_xd", "acc"), "all": ("average", "acc")}[mode]
    sel = acc.loc[acc.dataset == row, col]
    return f"{row} {col}", float(sel.iloc[0]) if len(sel) else math.nan
