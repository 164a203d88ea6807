"""PNG plots with matplotlib (Agg): grid-search curves and accuracy against cost across tasks.

Every point is a mean over seeds with its std as an error bar; axes name their units. The memory
plot shows the memory a method adds to train (`train_step_memory_mb`: the training step's peak
over the model's resident size), not the whole process, where every method sits near the same
resident model.
"""
from __future__ import annotations

import glob
import logging
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

logger = logging.getLogger(__name__)

METRIC_LABELS = {"base_acc_pct": "base", "new_acc_pct": "new", "H_pct": "H", "acc_pct": "accuracy"}
# (cost column, x-axis label, file tag) of the accuracy-vs-cost plots.
COST_AXES = [
    ("train_time_s", "training time per run (s), mean over datasets", "training_time"),
    ("train_step_memory_mb", "memory added by training (MB): training-step peak minus resident model",
     "training_memory"),
]


def _numeric(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def save_figure(fig, path: str) -> str:
    """Save as PNG atomically (temp file + rename) and close the figure."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _cell(df: pd.DataFrame, dataset: str, column: str) -> float:
    sel = df.loc[df.dataset == dataset, column] if column in df else pd.Series(dtype=float)
    return float(sel.iloc[0]) if len(sel) and pd.notna(sel.iloc[0]) else math.nan


def plot_grid_search(mode: str, points: list[tuple[str, pd.DataFrame]], aliases: list[str], save_path: str,
                     names: list[str] | None = None) -> str:
    """One facet per dataset row (averages included): the grid variable on x, accuracy (%) on y with
    std-over-seeds error bars; base / new / H for b2n, accuracy otherwise. `points` = [(suffix, accuracy table)];
    `names`: the config keys the aliases stand for (shown on the x axis)."""
    metrics = ["base_acc_pct", "new_acc_pct", "H_pct"] if mode == "b2n" else ["acc_pct"]
    if len(aliases) == 1:
        xs = [_numeric(s.split("=", 1)[1]) for s, _ in points]
        xlabel = f"{aliases[0]} ({names[0]})" if names else aliases[0]
    else:
        xs = [s for s, _ in points]
        xlabel = "_".join(aliases)
    categorical = any(isinstance(x, str) for x in xs)
    pos = list(range(len(xs))) if categorical else xs
    datasets = list(points[0][1].dataset)
    n = len(datasets)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.0 * rows), squeeze=False)
    for i, ds in enumerate(datasets):
        ax = axes[i // cols][i % cols]
        for m in metrics:
            ys = [_cell(df, ds, m) for _, df in points]
            errs = [_cell(df, ds, f"{m}_std") for _, df in points]
            errs = [0.0 if math.isnan(e) else e for e in errs]  # one seed: no spread to show
            ax.errorbar(pos, ys, yerr=errs, marker="o", markersize=4, capsize=3, label=METRIC_LABELS[m])
        if categorical:
            ax.set_xticks(pos, [str(x) for x in xs], rotation=30, fontsize=7)
        else:
            if min(xs) > 0 and max(xs) / min(xs) >= 10:  # e.g. shots 1..16: evenly spaced on a log axis
                ax.set_xscale("log")
                ax.minorticks_off()
            ax.set_xticks(xs, [f"{x:g}" for x in xs], fontsize=7)
        ax.set_title(ds, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{mode}: accuracy over the grid (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, save_path)


def collect_methods(result_root: str, cost_root: str, mode: str) -> pd.DataFrame:
    """One row per task from the non-grid CSVs under the result roots: task, headline accuracy and its
    std, and the average row's training time and training memory with their stds."""
    from runner.tallies import headline

    rows = []
    for acc_path in sorted(glob.glob(os.path.join(result_root, "*", f"{mode}-*.csv"))):
        task = os.path.basename(os.path.dirname(acc_path))
        name = os.path.basename(acc_path)
        if "=" in name:  # a grid point, not a method
            continue
        cost_path = os.path.join(cost_root, task, name)
        if not os.path.isfile(cost_path):
            continue
        cost = pd.read_csv(cost_path)
        if not (cost.dataset == "average").any():
            continue
        head = headline(mode, pd.read_csv(acc_path))
        row = {"task": task, "metric": head.label, "accuracy": head.value, "accuracy_std": head.std}
        for column, _, _ in COST_AXES:
            row[column] = _cell(cost, "average", column)
            row[f"{column}_std"] = _cell(cost, "average", f"{column}_std")
        rows.append(row)
    return pd.DataFrame(rows)


def plot_accuracy_vs_cost(result_root: str, cost_root: str, mode: str) -> list[str]:
    """Accuracy against training time and against the memory training adds, one point per task
    (error bars: std over seeds); a task that does not train (zero-shot) is a dashed line. PNGs in result_root."""
    df = collect_methods(result_root, cost_root, mode)
    if df.empty or df["accuracy"].isna().all():
        return []
    paths = []
    metric = df["metric"].iloc[0]
    for column, xlabel, tag in COST_AXES:
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        trained = df[df[column].notna() & df["accuracy"].notna()]
        ax.errorbar(trained[column], trained["accuracy"], xerr=trained[f"{column}_std"].fillna(0.0),
                    yerr=trained["accuracy_std"].fillna(0.0), fmt="o", capsize=3)
        for _, r in trained.iterrows():
            ax.annotate(r["task"], (r[column], r["accuracy"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        for _, r in df[df[column].isna() & df["accuracy"].notna()].iterrows():
            ax.axhline(r["accuracy"], linestyle="--", linewidth=1, color="gray")
            ax.annotate(f"{r['task']} (no training)", (0.01, r["accuracy"]), xycoords=("axes fraction", "data"),
                        fontsize=8, color="gray", xytext=(0, 3), textcoords="offset points")
        right = (trained[column] + trained[f"{column}_std"].fillna(0.0)).max()
        # From 0: a cost's ratio between methods is what counts; room on the right for the labels.
        ax.set_xlim(0, 1.2 * right if right > 0 else 1.0)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(f"{metric} (%)", fontsize=9)
        ax.set_title(f"{mode}: accuracy vs {tag.replace('_', ' ')} (error bars: std over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(save_figure(fig, os.path.join(result_root, f"{mode}-accuracy_vs_{tag}.png")))
    return paths
