"""Run a sweep of `train.py` jobs from configs.py: GPU or CPU slots, a ledger that survives crashes,
accuracy and cost CSVs, plots and an optional summary mail.

    python parallel_runner.py                       # the whole `pipeline` of configs.py
    python parallel_runner.py --cfg skip_tuning     # one task (on the demo world if no data root is set)
    python parallel_runner.py --cfg coop --dry-run  # list its jobs and their state
    python parallel_runner.py --configs my_sweep.py --gpus 0 1 --launcher slurm

Restarting the same command runs only what is missing; nothing is deleted unless asked (--fresh).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from runner.config import ConfigError, build_pipeline, check_gpu_ids, load_sweep_module
from runner.sweep import SweepOptions, ledger_path, run_sweep

logger = logging.getLogger("parallel_runner")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", metavar="TASK", help="task name(s) in the sweep file (default: its pipeline)")
    p.add_argument("--configs", metavar="PATH", help="a sweep file with configs.py's schema (default: configs.py)")
    p.add_argument("--gpus", nargs="*", type=int, metavar="ID", help="GPU ids for every task (overrides gpu_ids; none: CPU)")
    p.add_argument("--cpu-workers", type=int, help="CPU slots when no GPU is used (default: runner.cpu_workers)")
    p.add_argument("--launcher", choices=["local", "slurm"], help="default: runner.launcher")
    p.add_argument("--retries", type=int, help="retries of a failed job (default: runner.retries)")
    p.add_argument("--dry-run", action="store_true", help="print the job list and exit")
    p.add_argument("--fresh", action="store_true", help="delete the tasks' output trees and ledger rows first")
    p.add_argument("--no-mail", action="store_true", help="do not send the summary mail")
    p.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    return p


def setup_logging(log_file: str | None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in [h for h in root.handlers if getattr(h, "_parallel_runner", False)]:  # main() called again
        root.removeHandler(h)
        h.close()
    console = logging.StreamHandler(sys.stderr)
    console._parallel_runner = True
    console.setFormatter(fmt)
    root.addHandler(console)
    if log_file:
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh._parallel_runner = True
        fh.setFormatter(fmt)
        root.addHandler(fh)


def _raise_exit(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s") if args.dry_run else None
    try:
        module = load_sweep_module(args.configs)
        source = args.configs or "configs.py"
        tasks = build_pipeline(module, args.cfg, args.gpus, source)
        use_cuda = check_gpu_ids(tasks)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.dry_run:
        setup_logging(os.path.join(os.path.dirname(ledger_path(tasks[0])), "runner_log.txt"))
        signal.signal(signal.SIGTERM, _raise_exit)  # stop children and keep the ledger resumable
    options = SweepOptions(dry_run=args.dry_run, use_cuda=use_cuda, cpu_workers=args.cpu_workers,
                           launcher=args.launcher, retries=args.retries, fresh=args.fresh, mail=not args.no_mail,
                           poll_s=args.poll)
    result, outcomes = run_sweep(tasks, options)
    if result is None:
        return 0
    lines = [f"Sweep: {result.count('done')} done ({result.reused} from earlier runs, {result.launched} launched now), "
             f"{result.count('failed')} failed, {result.count('skipped')} skipped"]
    for o in outcomes:
        lines += [f"  {h}" for h in o.headline]
        lines += [f"  wrote {f}" for f in o.files]
    for job, msg in result.failures:
        lines.append(f"FAILED {job.output_dir}\n  {job.command()}\n  " + msg.replace("\n", "\n  "))
    logger.info("\n".join(lines))
    return 1 if result.failures or result.count("skipped") else 0


if __name__ == "__main__":
    sys.exit(main())
