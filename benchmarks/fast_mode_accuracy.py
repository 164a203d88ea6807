"""Accuracy of fast mode (TRAIN.FAST_MODE) against exact mode on the demo world.

    python -m benchmarks.fast_mode_accuracy [--seeds 1 2 3] [--root DIR] [--json out.json]

CoOp with its demo recipe (configs/trainers/CoOp/demo.yaml: the demo CLIP, fp32) trains on
DemoShapes' base classes with 16 shots, once per seed in exact mode and once in fast mode (bf16
autocast on CPU, fp16 on CUDA), and is tested on the base classes. It prints each mode's base
accuracy as mean ± sample std over the seeds and whether the modes' means differ by no more than
the exact runs' seed-to-seed spread (their sample std). Each run takes about a minute on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass

from engine.errors import ConfigValueError, run_cli
from engine.utils import write_json

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO_ROOT, "configs", "trainers", "CoOp", "demo.yaml")
DATASET_CONFIG = os.path.join(REPO_ROOT, "configs", "datasets", "demo_shapes.yaml")
SHOTS = 16
MODES = ("exact", "fast")


@dataclass(frozen=True)
class ModeSummary:
    """One mode's base accuracies (%) by seed, with their mean and sample standard deviation."""

    mode: str
    seeds: list[int]
    accuracies: list[float]
    mean: float
    std: float  # sample std (n - 1); 0 for a single seed


def summarise(mode: str, seeds: list[int], accuracies: list[float]) -> ModeSummary:
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    return ModeSummary(mode, list(seeds), list(accuracies), statistics.mean(accuracies), std)


def within_seed_spread(exact: ModeSummary, fast: ModeSummary) -> bool:
    """Fast mode's mean lies within one sample std of the exact runs' mean (the issue's criterion:
    within fp32's seed-to-seed spread)."""
    return abs(fast.mean - exact.mean) <= exact.std


def report(exact: ModeSummary, fast: ModeSummary) -> str:
    lines = [f"{s.mode:<5}  {s.mean:6.2f} ± {s.std:.2f}  (seeds {s.seeds}: {', '.join(f'{a:.2f}' for a in s.accuracies)})"
             for s in (exact, fast)]
    verdict = "within" if within_seed_spread(exact, fast) else "outside"
    lines.append(f"fast - exact: {fast.mean - exact.mean:+.2f} points, {verdict} the exact runs' seed-to-seed "
                 f"spread ({exact.std:.2f})")
    return "\n".join(lines)


def run_argv(mode: str, seed: int, out_dir: str, root: str) -> list[str]:
    """train.py's arguments for one demo CoOp run on the base classes."""
    return [
        *(["--root", root] if root else []), "--seed", str(seed), "--trainer", "CoOp",
        "--dataset-config-file", DATASET_CONFIG, "--config-file", DEMO_CONFIG, "--output-dir", out_dir,
        "DATASET.NUM_SHOTS", str(SHOTS), "DATASET.SUBSAMPLE_CLASSES", "base",
        "TRAIN.FAST_MODE", str(mode == "fast"),
    ]


def train_accuracy(argv: list[str]) -> float:
    """One train.py run in this process (its console on stderr); the accuracy of its results.json."""
    import train

    print(f"[fast_mode_accuracy] train.py {' '.join(argv)}", file=sys.stderr, flush=True)
    root_logger = logging.getLogger()
    before = list(root_logger.handlers)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            results = train.main(train.build_parser().parse_args(argv))
    finally:
        for handler in [h for h in root_logger.handlers if h not in before]:
            root_logger.removeHandler(handler)
            handler.close()
    return float(results["accuracy"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--root", default="", help="data root (default: the demo world's own folder)")
    parser.add_argument("--json", default="", help="write both summaries here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, ModeSummary]:
    args = build_parser().parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigValueError(f"--seeds {args.seeds}: give each seed once.")
    summaries = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            accuracies = [train_accuracy(run_argv(mode, seed, os.path.join(tmp, f"{mode}_seed{seed}"), args.root))
                          for seed in args.seeds]
            summaries[mode] = summarise(mode, args.seeds, accuracies)
    print(report(summaries["exact"], summaries["fast"]))
    if args.json:
        write_json({mode: asdict(s) for mode, s in summaries.items()}, args.json)
    return summaries


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main() and None))
