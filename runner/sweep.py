"""A sweep: tasks -> jobs -> check -> slots -> results.json -> CSVs, plots and mail."""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runner.config import ConfigError, Task
from runner.ledger import DONE, LEDGER_NAME, SKIPPED, Ledger
from runner.mail import mail_enabled, send_mail
from runner.scheduler import STOP_GRACE_S, JobFailure, LocalLauncher, SweepResult, make_slots, run_jobs
from runner.tasks import Job, TaskPlan, expand_task
from runner.validate import CheckError, check_jobs, format_problems

if TYPE_CHECKING:  # pandas and matplotlib are imported only when tallying
    from runner.tallies import ZeroShotReference

logger = logging.getLogger(__name__)


@dataclass
class SweepOptions:
    use_cuda: bool = False
    cpu_workers: int | None = None  # None: the sweep file's runner.cpu_workers
    launcher: str | None = None  # None: the sweep file's runner.launcher
    retries: int | None = None
    fresh: bool = False  # delete the tasks' output trees first (like output.remove_dirs=['root'])
    mail: bool = True
    progress: bool | None = None
    poll_s: float = 0.5
    stop_grace_s: float = STOP_GRACE_S  # Ctrl-C / SIGTERM: how long jobs get to exit before SIGKILL


@dataclass
class TaskOutcome:
    plan: TaskPlan
    files: list[str] = field(default_factory=list)
    failed: list[JobFailure] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every job finished: the task's tables were written."""
        return not self.failed and not self.skipped


def ledger_path(task: Task) -> str:
    return os.path.join(os.path.abspath(task.cfg["output"]["root"]), LEDGER_NAME)


def plan_sweep(tasks: list[Task]) -> list[TaskPlan]:
    """Every task's jobs; a ConfigError when the tasks cannot share one sweep."""
    if not tasks:
        raise ConfigError("No tasks to run: the pipeline is empty and no --cfg was given.")
    roots = {ledger_path(t) for t in tasks}
    if len(roots) > 1:
        raise ConfigError(f"All tasks of one sweep must share output.root (one ledger); got {sorted(roots)}.")
    try:
        return [expand_task(t) for t in tasks]
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_sweep(plans: list[TaskPlan], use_cuda: bool) -> None:
    """Check every job with the training script's --check-commands before anything starts; a
    CheckError lists each distinct problem with its task and a job's command."""
    jobs = [j for p in plans for j in p.jobs]
    env = {} if use_cuda else {"CUDA_VISIBLE_DEVICES": ""}  # as the CPU slots will run them
    logger.info("Checking %d job(s) with %s --check-commands", len(jobs),
                " and ".join(sorted({j.argv[0] for j in jobs})))
    problems = check_jobs(jobs, env)
    if problems:
        raise CheckError(format_problems(problems))


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


def is_zero_shot_task(plan: TaskPlan) -> bool:
    from runner.tallies import ZERO_SHOT_TRAINERS

    return plan.task.train["trainer"] in ZERO_SHOT_TRAINERS


def zero_shot_reference(plan: TaskPlan, ledger: Ledger) -> ZeroShotReference | None:
    """The zero-shot runs the ledger holds as finished (None for a zero-shot task itself)."""
    from runner.tallies import ZeroShotReference, is_zero_shot

    if is_zero_shot_task(plan):
        return None
    return ZeroShotReference.from_runs([r.output_dir for r in ledger.records(DONE) if is_zero_shot(r.argv)])


def write_task_tables(plan: TaskPlan, reference: ZeroShotReference | None) -> tuple[list[str], list[str]]:
    """The task's CSVs, its grid-search plot and its mode's accuracy-vs-cost plots; returns (files, headlines)."""
    from runner.plots import plot_accuracy_vs_cost, plot_grid_search  # matplotlib and pandas: only when tallying
    from runner.tallies import headline, write_point_tables

    task = plan.task
    cfg = task.cfg
    mode, seeds = task.mode, cfg["train"]["seeds"]
    files, headlines, tables = [], [], []
    for point in plan.points:
        acc, _ = write_point_tables(mode, point, seeds, cfg["data"], reference)
        tables.append((point.suffix, acc))
        files += [point.acc_csv, point.cost_csv]
        headlines.append(f"{task.name}{'/' + point.suffix if point.suffix else ''}: {headline(mode, acc).text()}")
    params = cfg["grid_search"]["params"]
    if params:
        aliases = [p["alias"] for p in params]
        png = os.path.join(plan.result_dir, f"{plan.prefix}-{'_'.join(aliases)}.png")
        files.append(plot_grid_search(mode, tables, aliases, png, [p["name"] for p in params]))
    files += plot_accuracy_vs_cost(os.path.dirname(plan.result_dir), os.path.dirname(plan.cost_dir), mode)
    return files, headlines


def tally_task(plan: TaskPlan, elapsed_s: float, failures: list[JobFailure], skipped: list[Job], mail: bool,
               reference: ZeroShotReference | None = None) -> TaskOutcome:
    """Write the task's CSVs and plots (only when every job finished), then mail the summary (if configured)."""
    task = plan.task
    cfg = task.cfg
    outcome = TaskOutcome(plan, failed=failures, skipped=skipped)
    if outcome.complete:
        outcome.files, outcome.headline = write_task_tables(plan, reference)
        logger.info("Task %s: wrote %s", task.name, ", ".join(outcome.files))
    else:
        outcome.headline.append(
            f"{task.name}: {len(failures)} job(s) failed, {len(skipped)} skipped: no tables written (they would have "
            "holes). Fix the cause and run the same command again: it resumes (finished jobs are kept, the failed and "
            "skipped ones run) and writes the tables.")
        logger.warning(outcome.headline[-1])
    if mail and mail_enabled(cfg["mail"]):
        status = "FINISHED" if outcome.complete else "FAILED"
        paragraphs = [f"Training Tasks {status}! Task {task.name} ({task.mode}{', demo world' if task.demo else ''}); "
                      f"time: {elapsed_s / 60:.1f} min.", *outcome.headline]
        for f in failures:
            paragraphs.append(f"FAILED {f.job.output_dir}\n{f.command or f.job.command()}\n{f.message}")
        if outcome.files:
            paragraphs.append("Results are following:")
        send_mail(cfg["mail"], f"[{task.name}] Training Tasks {status}!", paragraphs, outcome.files)
    return outcome


def warn_demo(tasks: list[Task]) -> None:
    """Say loudly which tasks run on the generated demo world (no data root configured)."""
    for t in tasks:
        if t.demo:
            d = t.cfg["data"]
            logger.warning(
                "Task %s: no data root configured (data.root is None and $DATA is unset): running on the DEMO WORLD "
                "(datasets %s); results go to %s.", t.name,
                {"b2n": d["datasets_base_to_new"], "xd": [d["xd_source"], *d["datasets_cross_dataset"]],
                 "all": d["datasets_all"]}[t.mode], os.path.abspath(t.cfg["output"]["root"]))


def dry_run(plans: list[TaskPlan], use_cuda: bool) -> None:
    """Print every job with its state in the ledger, then check them all (a CheckError if any would not start)."""
    path = ledger_path(plans[0].task)
    ledger = Ledger(path) if os.path.exists(path) else None
    try:
        print(describe(plans, ledger))
    finally:
        if ledger is not None:
            ledger.close()
    print(f"# {sum(len(p.jobs) for p in plans)} jobs in {len(plans)} task(s)")
    check_sweep(plans, use_cuda)


def run_sweep(plans: list[TaskPlan], options: SweepOptions) -> tuple[SweepResult, list[TaskOutcome]]:
    """Run every task's jobs (checked beforehand with `check_sweep`); returns the scheduler's result
    and the per-task outcomes. Raises scheduler.Interrupted on Ctrl-C / SIGTERM, after stopping the jobs."""
    tasks = [p.task for p in plans]
    path = ledger_path(tasks[0])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock_file = open(path + ".lock", "w")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock_file.close()
        raise ConfigError(f"Another runner is using {path} (lock {path}.lock held). Wait for it or stop it first.")
    ledger = Ledger(path)
    try:
        return _run_locked(plans, ledger, options)
    finally:
        ledger.close()
        lock_file.close()


def _prepare(tasks: list[Task], ledger: Ledger, fresh: bool) -> None:
    for t in tasks:
        names = list(t.cfg["output"]["remove_dirs"]) + (["root"] if fresh else [])
        if names:
            _remove(t, ledger, sorted(set(names)))
        load_from = t.cfg["train"]["load_from"]
        if load_from:
            src = os.path.join(load_from, t.train["trainer"])
            dst = os.path.join(os.path.abspath(t.cfg["output"]["root"]), t.name, t.train["trainer"])
            if not os.path.isdir(dst):
                logger.info("Copying %s to %s (train.load_from)", src, dst)
                shutil.copytree(src, dst)


def _run_locked(plans: list[TaskPlan], ledger: Ledger, options: SweepOptions):
    tasks = [p.task for p in plans]
    runner_cfg = tasks[0].cfg["runner"]
    _prepare(tasks, ledger, options.fresh)
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
            ignored = sorted({g for t in tasks for g in t.gpu_ids}) if not options.use_cuda else []
            logger.info("Running %s on %d CPU worker slot(s)%s", [t.name for t in tasks if t.name not in gpu_tasks],
                        workers, f" (no CUDA on this machine: gpu_ids {ignored} not used)" if ignored else "")
    else:
        raise ConfigError(f"runner.launcher / --launcher is {launcher_name!r}; expected 'local' or 'slurm'.")

    start = time.time()
    task_keys = {p.task.name: {j.key for j in p.jobs} for p in plans}
    plan_of = {p.task.name: p for p in plans}
    settled: dict[str, str] = {}
    failures: dict[str, JobFailure] = {}
    outcomes: dict[str, TaskOutcome] = {}
    tallied: list[str] = []  # task names in the order their outcome was settled

    def on_job_end(job: Job, status: str, failure: JobFailure | None) -> None:
        # A task is tallied (CSVs, plots, mail) as soon as its own jobs are all settled.
        settled[job.key] = status
        if failure is not None:
            failures[job.key] = failure
        name = job.task
        if name in outcomes or not task_keys[name] <= settled.keys():
            return
        plan = plan_of[name]
        fails = [failures[j.key] for j in plan.jobs if j.key in failures]
        skipped = [j for j in plan.jobs if settled[j.key] == SKIPPED]
        outcomes[name] = tally_task(plan, time.time() - start, fails, skipped, options.mail,
                                    zero_shot_reference(plan, ledger))
        tallied.append(name)

    jobs = [j for p in plans for j in p.jobs]
    result = run_jobs(jobs, ledger, launcher, slots, allowed, retries=int(retries), poll_s=options.poll_s,
                      progress=options.progress, on_job_end=on_job_end, stop_grace_s=options.stop_grace_s)
    _refresh_zero_shot_columns(tallied, plan_of, outcomes, ledger)
    return result, [outcomes[p.task.name] for p in plans if p.task.name in outcomes]


def _refresh_zero_shot_columns(tallied: list[str], plan_of: dict[str, TaskPlan], outcomes: dict[str, TaskOutcome],
                               ledger: Ledger) -> None:
    """Tasks tallied before a zero-shot task of this sweep finished: write their tables again, now
    with the zero-shot reference columns."""
    zs = [i for i, name in enumerate(tallied) if is_zero_shot_task(plan_of[name]) and outcomes[name].complete]
    if not zs:
        return
    for name in tallied[:max(zs)]:
        plan = plan_of[name]
        if outcomes[name].complete and not is_zero_shot_task(plan):
            write_task_tables(plan, zero_shot_reference(plan, ledger))
            logger.info("Task %s: tables written again with the zero-shot reference", name)
