"""PNG plots with matplotlib (Agg): grid-search curves and accuracy against cost across tasks."""
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


def _numeric(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def plot_grid_search(mode: str, points: list[tuple[str, pd.DataFrame]], aliases: list[str], save_path: str) -> str:
    """One facet per dataset row (average included): the grid variable on x, accuracy on y;
    lines base_acc / new_acc / H for b2n, acc otherwise. `points` = [(suffix, accuracy table)]."""
    metrics = ["base_acc", "new_acc", "H"] if mode == "b2n" else ["acc"]
    if len(aliases) == 1:
        xs = [_numeric(s.split("=", 1)[1]) for s, _ in points]
        xlabel = aliases[0]
    else:
        xs = [s for s, _ in points]
        xlabel = "_".join(aliases)
    categorical = any(isinstance(x, str) for x in xs)
    datasets = list(points[0][1].dataset)
    n = len(datasets)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for i, ds in enumerate(datasets):
        ax = axes[i // cols][i % cols]
        for m in metrics:
            ys = [float(df.loc[df.dataset == ds, m].iloc[0]) if (df.dataset == ds).any() else math.nan for _, df in points]
            pos = list(range(len(xs))) if categorical else xs
            ax.plot(pos, ys, marker="o", label=m)
            if categorical:
                ax.set_xticks(pos, [str(x) for x in xs], rotation=30, fontsize=7)
        ax.set_title(ds, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(save_path), exist_ok=True)
    fig.savefig(save_path, dpi=100)
    plt.close(fig)
    return save_path


def collect_methods(result_root: str, cost_root: str, mode: str) -> pd.DataFrame:
    """One row per task from the non-grid CSVs under the result roots: task, accuracy, training time, peak memory."""
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
        acc = pd.read_csv(acc_path)
        cost = pd.read_csv(cost_path)
        label, value = headline(mode, acc)
        avg = cost.loc[cost.dataset == "average"]
        if avg.empty:
            continue
        rows.append({"task": task, "metric": label, "accuracy": value,
                     "training_time": float(avg["training_time"].iloc[0]),
                     "peak_memory_mb": float(avg["peak_memory_mb"].iloc[0])})
    return pd.DataFrame(rows)


def plot_accuracy_vs_cost(result_root: str, cost_root: str, mode: str) -> list[str]:
    """Accuracy against training time and against peak memory, one point per task; PNGs in result_root."""
    df = collect_methods(result_root, cost_root, mode)
    if df.empty or df["accuracy"].isna().all():
        return []
    paths = []
    for col, xlabel, tag in (("training_time", "training time per run (s, mean over datasets)", "training_time"),
                             ("peak_memory_mb", "peak memory (MB, mean over datasets)", "peak_memory")):
        fig, ax = plt.subplots(figsize=(5.5, 4))  # a task whose average is empty (a hole) has no point
        ax.scatter(df[col], df["accuracy"])
        for _, r in df.iterrows():
            ax.annotate(r["task"], (r[col], r["accuracy"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{df['metric'].iloc[0]} (%)")
        ax.set_title(f"{mode}: accuracy vs {tag.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(result_root, f"{mode}-accuracy_vs_{tag}.png")
        os.makedirs(result_root, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
