"""A sweep: tasks -> jobs -> slots -> results.json -> CSVs, plots and mail."""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

from runner.config import Task
from runner.ledger import FAILED, LEDGER_NAME, Ledger
from runner.mail import mail_enabled, send_mail
from runner.scheduler import LocalLauncher, SweepResult, make_slots, run_jobs
from runner.tasks import Job, TaskPlan, expand_task

logger = logging.getLogger(__name__)


@dataclass
class SweepOptions:
    dry_run: bool = False
    use_cuda: bool = False
    cpu_workers: int | None = None  # None: the sweep file's runner.cpu_workers
    launcher: str | None = None  # None: the sweep file's runner.launcher
    retries: int | None = None
    fresh: bool = False  # delete the tasks' output trees first (like output.remove_dirs=['root'])
    mail: bool = True
    progress: bool | None = None
    poll_s: float = 0.5


@dataclass
class TaskOutcome:
    plan: TaskPlan
    files: list[str] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)


def ledger_path(task: Task) -> str:
    return os.path.join(os.path.abspath(task.cfg["output"]["root"]), LEDGER_NAME)


def describe(plans: list[TaskPlan], ledger: Ledger | None) -> str:
    """The job list (`--dry-run`), with each job's state in the ledger."""
    lines = []
    for plan in plans:
        t = plan.task
        lines.append(f"# task {t.name} (mode {t.mode}{', demo world' if t.demo else ''}): {len(plan.jobs)} jobs")
        for job in plan.jobs:
            rec = ledger.get(job.key) if ledger is not None else None
            state = rec.status if rec else "new"
            deps = f" after {','.join(d[:8] for d in job.deps)}" if job.deps else ""
            lines.append(f"[{job.key[:8]} {state}{deps}] {job.command()}")
    return "\n".join(lines)


def _remove(task: Task, ledger: Ledger, names: list[str]) -> None:
    out = task.cfg["output"]
    for name in names:
        path = os.path.join(os.path.abspath(out[name]), task.name)
        if os.path.exists(path):
            logger.warning("Removing %s (output.remove_dirs / --fresh)", path)
            shutil.rmtree(path)
    if "root" in names:
        ledger.forget_task(task.name)


def tally_task(plan: TaskPlan, elapsed_s: float, failures: list[tuple[Job, str]], mail: bool) -> TaskOutcome:
    """Write the task's CSVs and plots, then mail the summary (if configured)."""
    from runner.plots import plot_accuracy_vs_cost, plot_grid_search  # matplotlib and pandas: only when tallying
    from runner.tallies import headline, write_point_tables

    task = plan.task
    cfg = task.cfg
    mode, seeds = task.mode, cfg["train"]["seeds"]
    outcome = TaskOutcome(plan, failed=failures)
    tables = []
    for point in plan.points:
        acc, _ = write_point_tables(mode, point, seeds, cfg["data"])
        tables.append((point.suffix, acc))
        outcome.files.append(point.acc_csv)
        label, value = headline(mode, acc)
        outcome.headline.append(f"{task.name}{'/' + point.suffix if point.suffix else ''}: {label} = {value:.2f}")
        logger.info("Wrote %s and %s", point.acc_csv, point.cost_csv)
    aliases = [p["alias"] for p in cfg["grid_search"]["params"]]
    if aliases:
        png = os.path.join(plan.result_dir, f"{plan.prefix}-{'_'.join(aliases)}.png")
        outcome.files.append(plot_grid_search(mode, tables, aliases, png))
    result_root = os.path.dirname(plan.result_dir)
    cost_root = os.path.dirname(plan.cost_dir)
    outcome.files += plot_accuracy_vs_cost(result_root, cost_root, mode)
    if mail and mail_enabled(cfg["mail"]):
        status = "FAILED" if failures else "FINISHED"
        paragraphs = [f"Training Tasks {status}! Task {task.name} ({mode}{', demo world' if task.demo else ''}); "
                      f"time: {elapsed_s / 60:.1f} min.", *outcome.headline]
        for job, msg in failures:
            paragraphs.append(f"FAILED {job.output_dir}\n{job.command()}\n{msg}")
        paragraphs.append("Results are following:")
        send_mail(cfg["mail"], f"[{task.name}] Training Tasks {status}!", paragraphs, outcome.files)
    return outcome


def run_sweep(tasks: list[Task], options: SweepOptions) -> tuple[SweepResult | None, list[TaskOutcome]]:
    """Run (or with dry_run, list) every task's jobs; returns the scheduler's result and the per-task outcomes."""
    if not tasks:
        raise ValueError("No tasks to run: the pipeline is empty and no --cfg was given.")
    roots = {ledger_path(t) for t in tasks}
    if len(roots) > 1:
        raise ValueError(f"All tasks of one sweep must share output.root (one ledger); got {sorted(roots)}.")
    for t in tasks:
        if t.demo:
            d = t.cfg["data"]
            logger.warning(
                "Task %s: no data root configured (data.root is None and $DATA is unset): running on the DEMO WORLD "
                "(datasets %s); results go to %s.", t.name,
                {"b2n": d["datasets_base_to_new"], "xd": [d["xd_source"], *d["datasets_cross_dataset"]],
                 "all": d["datasets_all"]}[t.mode], os.path.abspath(t.cfg["output"]["root"]))
    path = next(iter(roots))
    plans = [expand_task(t) for t in tasks]
    if options.dry_run:
        ledger = Ledger(path) if os.path.exists(path) else None
        print(describe(plans, ledger))
        print(f"# {sum(len(p.jobs) for p in plans)} jobs in {len(plans)} task(s)")
        return None, []

    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock_file = open(path + ".lock", "w")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise RuntimeError(f"Another runner is using {path} (lock {path}.lock held). Wait for it or stop it first.")
    ledger = Ledger(path)
    try:
        return _run_locked(tasks, plans, ledger, options)
    finally:
        ledger.close()
        lock_file.close()


def _run_locked(tasks: list[Task], plans: list[TaskPlan], ledger: Ledger, options: SweepOptions):
    runner_cfg = tasks[0].cfg["runner"]
    for t in tasks:
        names = list(t.cfg["output"]["remove_dirs"]) + (["root"] if options.fresh else [])
        if names:
            _remove(t, ledger, sorted(set(names)))
        load_from = t.cfg["train"]["load_from"]
        if load_from:
            src = os.path.join(load_from, t.train["trainer"])
            dst = os.path.join(os.path.abspath(t.cfg["output"]["root"]), t.name, t.train["trainer"])
            if not os.path.isdir(dst):
                logger.info("Copying %s to %s (train.load_from)", src, dst)
                shutil.copytree(src, dst)

    launcher_name = options.launcher or runner_cfg["launcher"]
    retries = runner_cfg["retries"] if options.retries is None else options.retries
    if launcher_name == "slurm":
        from runner.slurm import SlurmLauncher

        scfg = dict(runner_cfg["slurm"])
        cluster = scfg.pop("cluster", None) or "slurm"
        parallel = int(scfg.pop("max_parallel", 32))
        folder = os.path.join(os.path.dirname(ledger.path), "slurm_logs")
        launcher = SlurmLauncher(folder, scfg, cluster=cluster)
        slots = make_slots([], slurm_parallel=parallel)
        allowed = lambda job: {s.name for s in slots}  # noqa: E731
    elif launcher_name == "local":
        launcher = LocalLauncher()
        gpu_tasks = {t.name: t.gpu_ids for t in tasks if options.use_cuda and t.gpu_ids}
        cpu_needed = any(t.name not in gpu_tasks for t in tasks)
        workers = options.cpu_workers or runner_cfg["cpu_workers"] or max(1, min(2, os.cpu_count() or 1))
        slots = make_slots({g for ids in gpu_tasks.values() for g in ids}, int(runner_cfg["jobs_per_gpu"]),
                           cpu_workers=workers if cpu_needed else 0)
        by_task = {t.name: ({f"gpu{g}#" for g in gpu_tasks[t.name]} if t.name in gpu_tasks else {"cpu#"}) for t in tasks}
        names = [s.name for s in slots]
        allowed_sets = {t: {n for n in names if n.split("#")[0] + "#" in pre} for t, pre in by_task.items()}
        allowed = lambda job: allowed_sets[job.task]  # noqa: E731
        if cpu_needed:
            logger.info("Running %s on %d CPU worker slot(s)%s", [t.name for t in tasks if t.name not in gpu_tasks],
                        workers, "" if options.use_cuda else " (no CUDA on this machine)")
    else:
        raise ValueError(f"runner.launcher / --launcher is {launcher_name!r}; expected 'local' or 'slurm'.")

    start = time.time()
    task_keys = {p.task.name: {j.key for j in p.jobs} for p in plans}
    plan_of = {p.task.name: p for p in plans}
    settled: set[str] = set()
    failure_msgs: dict[str, str] = {}
    outcomes: dict[str, TaskOutcome] = {}

    def on_job_end(job: Job, status: str, message: str) -> None:
        # A task is tallied (CSVs, plots, mail) as soon as its own jobs are all settled.
        settled.add(job.key)
        if status == FAILED:
            failure_msgs[job.key] = message
        name = job.task
        if name in outcomes or not task_keys[name] <= settled:
            return
        fails = [(j, failure_msgs[j.key]) for j in plan_of[name].jobs if j.key in failure_msgs]
        outcomes[name] = tally_task(plan_of[name], time.time() - start, fails, options.mail)

    jobs = [j for p in plans for j in p.jobs]
    result = run_jobs(jobs, ledger, launcher, slots, allowed, retries=int(retries), poll_s=options.poll_s,
                      progress=options.progress, on_job_end=on_job_end)
    return result, [outcomes[p.task.name] for p in plans if p.task.name in outcomes]
