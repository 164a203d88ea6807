"""Run a sweep of `train.py` jobs from configs.py: GPU or CPU slots, a ledger that survives crashes,
accuracy and cost CSVs, plots and an optional summary mail.

    python parallel_runner.py                       # the whole `pipeline` of configs.py
    python parallel_runner.py --cfg skip_tuning     # one task (on the demo world if no data root is set)
    python parallel_runner.py --cfg coop --dry-run  # list its jobs and their state, and check them
    python parallel_runner.py --configs my_sweep.py --gpus 0 1 --launcher slurm

Every job is checked (train.py --check-commands) before the first one starts. Ctrl-C stops the
running jobs (their last finished epoch is on disk); restarting the same command runs only what
is missing and resumes what was stopped. Nothing is deleted unless asked (--fresh).
Exit status: 0 all done, 1 some job failed, 2 a usage or check error, 130/143 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from collections import Counter

from runner.config import ConfigError, build_pipeline, check_gpu_ids, load_sweep_module
from runner.scheduler import Interrupted, SweepResult
from runner.sweep import (SweepOptions, TaskOutcome, check_sweep, dry_run, ledger_path, plan_sweep, run_sweep,
                          warn_demo)

logger = logging.getLogger("parallel_runner")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--cfg", nargs="+", metavar="TASK", help="task name(s) in the sweep file (default: its pipeline)")
    p.add_argument("--configs", metavar="PATH", help="a sweep file with configs.py's schema (default: configs.py)")
    p.add_argument("--gpus", nargs="*", type=int, metavar="ID",
                   help="GPU ids for every task (overrides gpu_ids; must exist here); --gpus alone: CPU slots")
    p.add_argument("--cpu-workers", type=int, help="CPU slots when no GPU is used (default: runner.cpu_workers)")
    p.add_argument("--launcher", choices=["local", "slurm"], help="default: runner.launcher")
    p.add_argument("--retries", type=int, help="retries of a failed job (default: runner.retries)")
    p.add_argument("--dry-run", action="store_true", help="print the job list, check the jobs and exit")
    p.add_argument("--fresh", action="store_true", help="delete the tasks' output trees and ledger rows first")
    p.add_argument("--no-mail", action="store_true", help="do not send the summary mail")
    p.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--stop-grace", type=float, default=None, help=argparse.SUPPRESS)  # seconds before SIGKILL
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


def _raise_interrupted(signum: int, _frame) -> None:
    raise Interrupted(signum)


def rerun_command(argv: list[str] | None) -> str:
    """The command to run again to resume: this one without --fresh (which would delete the work)."""
    script = sys.argv[0] if argv is None else "parallel_runner.py"
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--fresh"]
    return shlex.join(["python", script, *args])


def interrupted_message(e: KeyboardInterrupt, argv: list[str] | None) -> str:
    """One line: what was stopped and the command that resumes it."""
    signum = getattr(e, "signum", signal.SIGINT)
    stopped = getattr(e, "stopped", [])
    what = "nothing was running"
    if stopped:
        per_task = Counter(j.task for j in stopped)
        what = (f"stopped {len(stopped)} running job(s) ({', '.join(f'{t}: {n}' for t, n in per_task.items())}; "
                "each keeps its last finished epoch)")
    waiting = getattr(e, "waiting", 0)
    if waiting:
        what += f", {waiting} not started"
    return (f"Interrupted by {signal.Signals(signum).name}: {what}; finished jobs are kept. "
            f"To resume, run the same command again: {rerun_command(argv)}")


def summary(result: SweepResult, outcomes: list[TaskOutcome]) -> str:
    """The end of a sweep: counts, each task's headline or why it has no tables, files, failures."""
    lines = [f"Sweep: {result.count('done')} done ({result.reused} from earlier runs, {result.launched} launched now), "
             f"{result.count('failed')} failed, {result.count('skipped')} skipped"]
    for o in outcomes:
        lines += [f"  {h}" for h in o.headline]
    files = dict.fromkeys(f for o in outcomes for f in o.files)  # the cross-task plots come with every task
    lines += [f"  wrote {f}" for f in files]
    for f in result.failures:
        lines.append(f"FAILED {f.job.output_dir}\n  {f.command or f.job.command()}\n  " + f.message.replace("\n", "\n  "))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(None)
    handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _main(args, argv)
    except ConfigError as e:  # includes the jobs' check: nothing was launched
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        for job in getattr(e, "stopped", []):
            logger.info("Interrupted %s", job.output_dir)
        logger.warning(interrupted_message(e, argv))
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def _main(args: argparse.Namespace, argv: list[str] | None) -> int:
    module = load_sweep_module(args.configs)
    source = args.configs or "configs.py"
    tasks = build_pipeline(module, args.cfg, args.gpus, source)
    use_cuda = check_gpu_ids(tasks, explicit=bool(args.gpus))
    plans = plan_sweep(tasks)
    warn_demo(tasks)
    if args.dry_run:
        dry_run(plans, use_cuda)
        return 0
    check_sweep(plans, use_cuda)  # before anything is written or started
    setup_logging(os.path.join(os.path.dirname(ledger_path(tasks[0])), "runner_log.txt"))
    options = SweepOptions(use_cuda=use_cuda, cpu_workers=args.cpu_workers, launcher=args.launcher,
                           retries=args.retries, fresh=args.fresh, mail=not args.no_mail, poll_s=args.poll)
    if args.stop_grace is not None:
        options.stop_grace_s = args.stop_grace
    result, outcomes = run_sweep(plans, options)
    logger.info(summary(result, outcomes))
    return 1 if result.failures or result.count("skipped") else 0


if __name__ == "__main__":
    sys.exit(main())
