"""Reproduce published numbers: the registry (reproduce/published.csv), runs, checks and run diffs.

    python -m reproduce list [--method M] [--protocol P]      # rows, and which were reproduced here
    python -m reproduce run ROW... --root DATA [--gpus 0 1]   # run the rows' recipes, compare
    python -m reproduce check RESULTS [--rows ROW...]         # compare results that already exist
    python -m reproduce diff RUN_A RUN_B                      # why two runs differ (provenance cards)

ROW is a row id or a shell-style pattern ('coop-b2n-*-skiptuning'). Exit status: 0 every compared
row is within its tolerance, 1 some row is not (or could not be run), 2 a usage error.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from engine.errors import ConfigValueError, MissingFileError, run_cli
from reproduce.compare import Comparison, DataLists, collect, compare_rows, format_table
from reproduce.record import DEFAULT_RECORD, read_record, update_record
from reproduce.registry import PROTOCOLS, REGISTRY_PATH, filter_rows, load_registry, select_rows

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", default=REGISTRY_PATH, help="the registry CSV (default: reproduce/published.csv)")
    p.add_argument("--record", default=DEFAULT_RECORD,
                   help="where reproduced rows are recorded (default: results/reproduce/reproduced.csv)")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="print the rows and which were reproduced here")
    ls.add_argument("--method", help="method or trainer name (e.g. CoOp, KgCoOp+DePT)")
    ls.add_argument("--protocol", choices=PROTOCOLS)

    run = sub.add_parser("run", help="run the rows' recipes through the runner and compare")
    run.add_argument("rows", nargs="+", metavar="ROW")
    run.add_argument("--root", help="data root (published rows need it; demo rows default to the demo data folder)")
    run.add_argument("--output", default=os.path.join("outputs", "reproduce"),
                     help="runs go to OUTPUT/outputs, tables to OUTPUT/results (default: outputs/reproduce); "
                     "the same OUTPUT resumes")
    run.add_argument("--gpus", nargs="*", type=int, metavar="ID", help="GPU ids (default: configs.py's pipeline)")
    run.add_argument("--launcher", choices=["local", "slurm"], help="default: configs.py's runner.launcher")
    run.add_argument("--cpu-workers", type=int, help="CPU slots when no GPU is used")
    run.add_argument("--configs", metavar="PATH", help="the recipes: a sweep file (default: configs.py)")

    check = sub.add_parser("check", help="compare results that already exist with the registry")
    check.add_argument("results", nargs="+", metavar="RESULTS", help="folders (searched for results.json) or files")
    check.add_argument("--rows", nargs="+", metavar="ROW", help="only these rows (default: every row with results)")
    check.add_argument("--configs", metavar="PATH", help="where the dataset lists of averages come from")

    diff = sub.add_parser("diff", help="explain why two runs differ")
    diff.add_argument("run_a", metavar="RUN_A")
    diff.add_argument("run_b", metavar="RUN_B")
    return p


def _verdict(comparisons: list[Comparison]) -> int:
    return 0 if comparisons and all(c.within for c in comparisons) else 1


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    rows = filter_rows(load_registry(args.registry), args.method, args.protocol)
    done = read_record(args.record)
    table = []
    for r in rows:
        rec = done.get(r.id)
        # Judged against the registry as it is now (a corrected published value changes the verdict).
        within = rec is not None and abs(rec.ours - r.value) <= r.tolerance + 1e-9
        ours = "" if rec is None else f"{rec.ours:.2f} ({'within' if within else 'OUTSIDE'} ±{r.tolerance:g}, {rec.date})"
        table.append([r.id, r.protocol, r.dataset, r.metric, f"{r.value:.2f}", r.source + (" [demo]" if r.kind == "demo" else ""), ours])
    print(tabulate(table, headers=["row", "protocol", "dataset", "metric", "published", "source", "reproduced here"],
                   tablefmt="simple", disable_numparse=True))
    print(f"{len(rows)} row(s); {sum(r.id in done for r in rows)} reproduced here ({args.record}).")
    return 0


def _load_recipes(path: str | None):
    from runner.config import ConfigError, load_sweep_module

    try:
        return load_sweep_module(path)
    except ConfigError as e:
        raise ConfigValueError(str(e)) from None


def _raise_interrupted(signum: int, _frame) -> None:
    from runner.scheduler import Interrupted

    raise Interrupted(signum)


def cmd_run(args: argparse.Namespace) -> int:
    from reproduce.sweep import RunOptions, run_rows
    from runner.config import ConfigError

    rows = select_rows(load_registry(args.registry), args.rows)
    if args.root and not os.path.isdir(os.path.expanduser(args.root)):
        raise MissingFileError(f"--root {args.root}: no such folder. Pass the folder that holds the datasets (DATASETS.md).")
    module = _load_recipes(args.configs)
    options = RunOptions(args.root, os.path.abspath(args.output), args.gpus, args.launcher, args.cpu_workers)
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)  # a cluster stopping us: like Ctrl-C
    try:
        comparisons = run_rows(rows, module, options)
    except ConfigError as e:
        raise ConfigValueError(str(e)) from None
    except KeyboardInterrupt as e:  # the runner has stopped its jobs; each keeps its last finished epoch
        print(f"Interrupted; finished jobs are kept. Run the same command again to resume (--output {args.output}).",
              file=sys.stderr)
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_table(comparisons))
    added = update_record(comparisons, os.path.join(options.output, "outputs"), args.record)
    if added:
        print(f"Recorded {added} row(s) in {args.record}.")
    return _verdict(comparisons)


def cmd_check(args: argparse.Namespace) -> int:
    for path in args.results:
        if not os.path.exists(path):
            raise MissingFileError(f"{path}: no such file or folder (pass run folders or results.json files).")
    rows = load_registry(args.registry)
    found = collect(args.results)
    if not found:
        raise MissingFileError(f"No results.json under {', '.join(args.results)}.")
    base = _load_recipes(args.configs).base
    lists, demo_lists = DataLists.from_data(base["data"]), DataLists.from_data(base["demo"])
    if args.rows:
        rows = select_rows(rows, args.rows)
    else:  # rows that the results could speak to: same trainer, backbone and shots
        present = {(k.trainer, k.backbone, k.shots) for k in found}
        rows = [r for r in rows if (r.trainer, r.backbone, r.shots) in present]
    comparisons = [c for r in rows for c in compare_rows([r], found, demo_lists if r.kind == "demo" else lists)]
    if not args.rows:  # without named rows, show only those the results cover completely
        comparisons = [c for c in comparisons if c.ours is not None]
    if not comparisons:
        print("No registry row is covered by these results (trainer, backbone, shots, datasets and seeds must match).")
        return 1
    print(format_table(comparisons))
    update_record(comparisons, os.path.abspath(args.results[0]), args.record)
    return _verdict(comparisons)


def cmd_diff(args: argparse.Namespace) -> int:
    from reproduce.diff import card_differences, format_differences, load_run

    a, b = load_run(args.run_a), load_run(args.run_b)
    print(format_differences(args.run_a, args.run_b, a, b, card_differences(a, b)))
    return 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "check": cmd_check, "diff": cmd_diff}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    return run_cli(lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
