"""Accuracy of fast mode (TRAIN.FAST_MODE) against exact mode on the demo world, for every method.

    python -m benchmarks.fast_mode_accuracy [--trainer NAME [NAME ...] | --trainer all]
                                            [--seeds 1 2 3] [--root DIR] [--json out.json]

Each method trains with its own demo recipe (configs/trainers/<Trainer>/demo.yaml, the demo CLIP,
fp32) on DemoShapes, once per seed in exact mode and once in fast mode (bf16 autocast on CPU, fp16
on CUDA), and is tested on the classes it trained on. The default is CoOp (base classes, 16 shots).
The prompt and fine-tuning methods use base classes with 16 shots, as their demo runs (the scripts'
demo mode and tests/demo); DePT runs over CoOp (ExtrasLinearProbeCoOp/demo.yaml, as
scripts/dept's demo run); DyT runs its demo ViT on all 48 classes with 8 shots (tests/demo/test_demo_dyt.py
and README's DyT demo), scored by its last epoch's accuracy.

It prints one table: each mode's accuracy as mean ± sample std over the seeds, fast minus exact,
and two verdicts. "seed spread" is the issue's criterion: |fast mean - exact mean| <= the exact
runs' sample std. "pooled" is a fairer one when the exact std is 0 or tiny: |difference| <= the
pooled std sqrt((s_exact² + s_fast²) / 2), with Welch's two-sample t-test p-value next to it (a
small p says the modes differ). A run that fails is reported with its error and the others go on;
the exit status is then 1. With --json the records are rewritten after every method, so an
interrupted run keeps what it finished. A run takes seconds to a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import statistics
import sys
import tempfile
import traceback
import warnings
from dataclasses import asdict, dataclass

from scipy import stats

from engine.errors import ConfigValueError, run_cli
from engine.utils import write_json

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET_CONFIG = os.path.join(REPO_ROOT, "configs", "datasets", "demo_shapes.yaml")
MODES = ("exact", "fast")
ALL = "all"


@dataclass(frozen=True)
class DemoRecipe:
    """How one method's demo run is launched: its trainer, config and data settings."""

    method: str  # the name given to --trainer
    trainer: str  # the registered trainer train.py runs
    config: str  # under configs/trainers/
    shots: int
    subsample: str  # DATASET.SUBSAMPLE_CLASSES
    note: str = ""

    @property
    def config_path(self) -> str:
        return os.path.join(REPO_ROOT, "configs", "trainers", *self.config.split("/"))


def _base16(method: str, trainer: str = "", note: str = "") -> DemoRecipe:
    trainer = trainer or method
    return DemoRecipe(method, trainer, f"{trainer}/demo.yaml", 16, "base", note)


# Every method with a fast mode (ZeroshotCLIP does not train); `all` runs them in this order.
RECIPES: dict[str, DemoRecipe] = {r.method: r for r in (
    _base16("CoOp"),
    _base16("KgCoOp"),
    _base16("CoCoOp"),
    _base16("MaPLe"),
    _base16("PromptSRC"),
    _base16("FinetuneCLIP"),
    _base16("SkipTuning"),
    _base16("TaskRes"),
    _base16("CLIP_Adapter"),
    _base16("DePT", "ExtrasLinearProbeCoOp", "over CoOp"),
    DemoRecipe("DyT", "DyT", "DyT/demo.yaml", 8, "all", "demo ViT, 48 classes, 8 shots"),
)}


@dataclass(frozen=True)
class ModeSummary:
    """One mode's accuracies (%) by seed, with their mean and sample standard deviation."""

    mode: str
    seeds: list[int]
    accuracies: list[float]
    mean: float
    std: float  # sample std (n - 1); 0 for a single seed


@dataclass(frozen=True)
class Comparison:
    """Fast against exact mode for one method, with both verdicts."""

    method: str
    trainer: str
    note: str
    exact: ModeSummary
    fast: ModeSummary
    difference: float  # fast mean - exact mean, in points
    within_seed_spread: bool  # the criterion: |difference| <= exact std
    pooled_std: float  # sqrt((s_exact² + s_fast²) / 2)
    within_pooled_spread: bool  # |difference| <= pooled std
    welch_p: float | None  # Welch's t-test p-value; None when it is undefined (both stds 0, or one seed)


@dataclass(frozen=True)
class Failure:
    """A method whose run raised: which run, and the error."""

    method: str
    trainer: str
    mode: str
    seed: int
    error: str


def summarise(mode: str, seeds: list[int], accuracies: list[float]) -> ModeSummary:
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    return ModeSummary(mode, list(seeds), list(accuracies), statistics.mean(accuracies), std)


def within_seed_spread(exact: ModeSummary, fast: ModeSummary) -> bool:
    """Fast mode's mean lies within one sample std of the exact runs' mean (the issue's criterion:
    within fp32's seed-to-seed spread)."""
    return abs(fast.mean - exact.mean) <= exact.std


def pooled_std(exact: ModeSummary, fast: ModeSummary) -> float:
    """Both modes' seed-to-seed spread (equal seed counts): the root of their mean sample variance."""
    return math.sqrt((exact.std ** 2 + fast.std ** 2) / 2)


def welch_p_value(exact: ModeSummary, fast: ModeSummary) -> float | None:
    """Welch's two-sample t-test p-value of the modes' accuracies; None where the test is undefined."""
    if min(len(exact.accuracies), len(fast.accuracies)) < 2 or exact.std == fast.std == 0.0:
        return None
    with warnings.catch_warnings():
        # One mode's seeds may agree exactly (std 0): scipy warns of cancellation, yet the test stays defined.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(fast.accuracies, exact.accuracies, equal_var=False).pvalue)


def compare(recipe: DemoRecipe, exact: ModeSummary, fast: ModeSummary) -> Comparison:
    difference = fast.mean - exact.mean
    pooled = pooled_std(exact, fast)
    return Comparison(recipe.method, recipe.trainer, recipe.note, exact, fast, difference,
                      within_seed_spread(exact, fast), pooled, abs(difference) <= pooled, welch_p_value(exact, fast))


def _verdict(ok: bool) -> str:
    return "within" if ok else "outside"


def report(exact: ModeSummary, fast: ModeSummary) -> str:
    """One method's modes, seed by seed, and the issue's verdict."""
    lines = [f"{s.mode:<5}  {s.mean:6.2f} ± {s.std:.2f}  (seeds {s.seeds}: {', '.join(f'{a:.2f}' for a in s.accuracies)})"
             for s in (exact, fast)]
    lines.append(f"fast - exact: {fast.mean - exact.mean:+.2f} points, {_verdict(within_seed_spread(exact, fast))} "
                 f"the exact runs' seed-to-seed spread ({exact.std:.2f})")
    return "\n".join(lines)


TABLE_HEADER = ("| method | exact (mean ± std) | fast (mean ± std) | fast - exact | seed spread (exact std) "
                "| pooled spread (pooled std) | Welch p |")


def table_row(c: Comparison) -> str:
    name = f"{c.method} ({c.note})" if c.note else c.method
    p = "n/a" if c.welch_p is None else f"{c.welch_p:.2f}"
    return (f"| {name} | {c.exact.mean:.2f} ± {c.exact.std:.2f} | {c.fast.mean:.2f} ± {c.fast.std:.2f} "
            f"| {c.difference:+.2f} | {_verdict(c.within_seed_spread)} ({c.exact.std:.2f}) "
            f"| {_verdict(c.within_pooled_spread)} ({c.pooled_std:.2f}) | {p} |")


def failure_row(f: Failure) -> str:
    return f"| {f.method} | failed: {f.mode} mode, seed {f.seed}: {f.error} | | | | | |"


def table(comparisons: list[Comparison], failures: list[Failure]) -> str:
    """The markdown table, with a legend saying which verdict is which."""
    rows = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    rows += [table_row(c) for c in comparisons] + [failure_row(f) for f in failures]
    legend = ("seed spread: the issue's criterion, |fast - exact| <= the exact runs' sample std. "
              "pooled spread: |fast - exact| <= sqrt((s_exact² + s_fast²) / 2). "
              "Welch p: two-sample t-test of the seeds' accuracies (n/a: both stds 0).")
    return "\n".join(rows + ["", legend])


def resolve_methods(names: list[str]) -> list[DemoRecipe]:
    """The recipes --trainer names, in the order given (`all`: every method); an unknown name is a user error."""
    if ALL in names:
        return list(RECIPES.values())
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ConfigValueError(f"--trainer {' '.join(unknown)}: not a method with a fast mode; "
                               f"choose from {', '.join(RECIPES)} or {ALL}.")
    return [RECIPES[n] for n in dict.fromkeys(names)]


def run_argv(recipe: DemoRecipe, mode: str, seed: int, out_dir: str, root: str) -> list[str]:
    """train.py's arguments for one demo run of `recipe` in `mode`."""
    return [
        *(["--root", root] if root else []), "--seed", str(seed), "--trainer", recipe.trainer,
        "--dataset-config-file", DATASET_CONFIG, "--config-file", recipe.config_path, "--output-dir", out_dir,
        "DATASET.NUM_SHOTS", str(recipe.shots), "DATASET.SUBSAMPLE_CLASSES", recipe.subsample,
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


def measure(recipe: DemoRecipe, seeds: list[int], root: str, tmp: str) -> Comparison | Failure:
    """Both modes of one method over the seeds; the first run that raises ends it as a Failure."""
    summaries = {}
    for mode in MODES:
        accuracies = []
        for seed in seeds:
            out_dir = os.path.join(tmp, recipe.method, f"{mode}_seed{seed}")
            try:
                accuracies.append(train_accuracy(run_argv(recipe, mode, seed, out_dir, root)))
            except Exception as e:  # a broken mode is a finding: record it and measure the other methods
                traceback.print_exc(file=sys.stderr)
                return Failure(recipe.method, recipe.trainer, mode, seed, f"{type(e).__name__}: {e}")
        summaries[mode] = summarise(mode, seeds, accuracies)
    return compare(recipe, summaries["exact"], summaries["fast"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", nargs="+", default=["CoOp"], metavar="NAME",
                        help=f"methods to measure ({', '.join(RECIPES)}) or {ALL} (default: CoOp)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--root", default="", help="data root (default: the demo world's own folder)")
    parser.add_argument("--json", default="", help="write every method's records here")
    return parser


def to_json(comparisons: list[Comparison], failures: list[Failure]) -> dict:
    return {"criteria": {"within_seed_spread": "|fast mean - exact mean| <= exact sample std (the issue's)",
                         "within_pooled_spread": "|fast mean - exact mean| <= sqrt((s_exact^2 + s_fast^2) / 2)",
                         "welch_p": "Welch's two-sample t-test p-value (null when undefined)"},
            "methods": {c.method: asdict(c) for c in comparisons},
            "failures": {f.method: asdict(f) for f in failures}}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigValueError(f"--seeds {args.seeds}: give each seed once.")
    recipes = resolve_methods(args.trainer)
    comparisons: list[Comparison] = []
    failures: list[Failure] = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in recipes:
            result = measure(recipe, args.seeds, args.root, tmp)
            if isinstance(result, Failure):
                failures.append(result)
                print(f"{recipe.method}: failed in {result.mode} mode, seed {result.seed}: {result.error}", flush=True)
            else:
                comparisons.append(result)
                print(f"{recipe.method}\n{report(result.exact, result.fast)}", flush=True)
            if args.json:
                write_json(to_json(comparisons, failures), args.json)
    print(f"\nseeds {args.seeds}\n{table(comparisons, failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
