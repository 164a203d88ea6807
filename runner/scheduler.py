"""Running jobs on slots: explicit dependencies, retries, failure isolation, resume from the ledger.

A slot is one place a job can run: ``gpu<i>#<k>`` (the k-th job on GPU i, with
``CUDA_VISIBLE_DEVICES=i``), ``cpu#<k>`` (no GPU visible, a share of the CPU threads) or
``slurm#<k>``. The loop is single-threaded: it starts a job on the first free slot its task may
use as soon as the job's own dependencies are done, polls running jobs, retries a failed job up
to the configured count (never after a usage error, exit status 2: the same command cannot
succeed), and marks everything that depends on a job that failed for good as skipped. Each
finished job logs a progress line with an estimate of the time left. Children are started from
this thread with a parent-death signal, so killing the runner takes its training processes with
it; Ctrl-C / SIGTERM stop them with SIGTERM first (train.py keeps its last finished epoch) and
leave them marked interrupted, so the next run resumes them.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

from runner.config import REPO_ROOT
from runner.ledger import DONE, FAILED, INTERRUPTED, PENDING, RUNNING, SKIPPED, Ledger
from runner.tasks import Job

logger = logging.getLogger(__name__)

OUTPUT_NAME = "job_output.txt"  # the job's stdout + stderr (train.py's own log is log.txt)
RESULTS_NAME = "results.json"


@dataclass
class Slot:
    name: str
    env: dict[str, str]
    busy: bool = False


def make_slots(gpu_ids: Iterable[int], jobs_per_gpu: int = 1, cpu_workers: int = 0, slurm_parallel: int = 0) -> list[Slot]:
    """GPU slots for each id (jobs_per_gpu each), CPU worker slots, or SLURM submission slots."""
    slots: list[Slot] = []
    for g in sorted(set(gpu_ids)):
        slots += [Slot(f"gpu{g}#{k}", {"CUDA_VISIBLE_DEVICES": str(g)}) for k in range(max(1, jobs_per_gpu))]
    if cpu_workers:
        threads = max(1, (os.cpu_count() or 1) // cpu_workers)
        env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        slots += [Slot(f"cpu#{k}", dict(env)) for k in range(cpu_workers)]
    slots += [Slot(f"slurm#{k}", {}) for k in range(slurm_parallel)]
    return slots


class Handle(Protocol):
    external_id: str
    command: str  # the exact command line it runs, to copy and paste

    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class Launcher(Protocol):
    def start(self, job: Job, slot: Slot, attempt: int, argv: list[str]) -> Handle: ...


# The environment a slot sets that decides what a run does (threads only change its speed).
COMMAND_ENV = ("CUDA_VISIBLE_DEVICES",)


def shell_command(python: str, argv: list[str], env: dict[str, str]) -> str:
    """`CUDA_VISIBLE_DEVICES=0 /path/to/python train.py ...`, shell-quoted: what a job runs, in the repository root."""
    prefix = [f"{k}={shlex.quote(env[k])}" for k in COMMAND_ENV if k in env]
    return " ".join([*prefix, shlex.join([python, *argv])])


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the runner dies (Linux), so no orphan keeps writing."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class _PopenHandle:
    def __init__(self, proc: subprocess.Popen, log_file, command: str):
        self.proc = proc
        self.log_file = log_file
        self.command = command
        self.external_id = str(proc.pid)

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None and not self.log_file.closed:
            self.log_file.close()
        return rc

    def terminate(self) -> None:
        """SIGTERM: train.py stops after writing nothing new (its last finished epoch is on disk)."""
        if self.proc.poll() is None:
            self.proc.terminate()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


def open_job_output(job: Job, slot: Slot, attempt: int, command: str):
    os.makedirs(job.output_dir, exist_ok=True)
    f = open(os.path.join(job.output_dir, OUTPUT_NAME), "a", buffering=1)
    f.write(f"\n===== runner: attempt {attempt} on {slot.name} at {time.strftime('%Y-%m-%d %H:%M:%S')}, "
            f"in {REPO_ROOT}\n===== {command}\n")
    f.flush()
    return f


class LocalLauncher:
    """`python <argv>` as a child process in the repository root, output appended to job_output.txt."""

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable

    def start(self, job: Job, slot: Slot, attempt: int, argv: list[str]) -> Handle:
        command = shell_command(self.python, argv, slot.env)
        log = open_job_output(job, slot, attempt, command)
        env = {**os.environ, **slot.env, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [self.python, *argv], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        return _PopenHandle(proc, log, command)


def results_path(job: Job) -> str:
    return os.path.join(job.output_dir, RESULTS_NAME)


def output_tail(job: Job, lines: int = 20) -> str:
    """The last lines of the job's captured output (the traceback of a crash is there)."""
    path = os.path.join(job.output_dir, OUTPUT_NAME)
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return f"(no output captured at {path})"


USAGE_ERROR_EXIT = 2  # train.py's exit status for a user mistake: the same command can never succeed
STOP_GRACE_S = 10.0  # after SIGTERM, how long stopped jobs may take to exit before SIGKILL


@dataclass
class JobFailure:
    """A job that failed for good (after its retries), or could not start."""

    job: Job
    reason: str  # e.g. "exit code 3"
    output_tail: str = ""  # the end of its captured output (a crash's traceback is there)
    command: str = ""  # the command it ran last ("" when it never started)

    @property
    def message(self) -> str:
        return f"{self.reason}\n{self.output_tail}" if self.output_tail else self.reason


@dataclass
class SweepResult:
    status: dict[str, str]  # key -> done | failed | skipped
    failures: list[JobFailure] = field(default_factory=list)
    reused: int = 0  # jobs finished in an earlier run of the sweep
    launched: int = 0

    def count(self, status: str) -> int:
        return sum(1 for s in self.status.values() if s == status)


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM. Raised again by `run_jobs` once it has stopped its jobs, with what it stopped."""

    def __init__(self, signum: int = signal.SIGINT, stopped: list[Job] | None = None, waiting: int = 0):
        super().__init__(signum)
        self.signum = int(signum)
        self.stopped = list(stopped or [])  # jobs that were running: they resume on the next run
        self.waiting = waiting  # jobs not started yet


def format_duration(seconds: float) -> str:
    """4.2s, 45s, 3m20s, 2h05m."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Jobs settled out of the total, and the time left estimated from the durations of the jobs
    that finished in this run (training and evaluation jobs separately), shared by the slots."""

    def __init__(self, jobs: list[Job], parallel: int):
        self.total = len(jobs)
        self.parallel = max(1, parallel)
        self.unsettled = {j.key: j for j in jobs}
        self.counts = {DONE: 0, FAILED: 0, SKIPPED: 0}
        self.durations: dict[bool, list[float]] = {True: [], False: []}  # by Job.trains

    def settle(self, job: Job, status: str, duration_s: float | None = None) -> None:
        self.unsettled.pop(job.key, None)
        self.counts[status] = self.counts.get(status, 0) + 1
        if status == DONE and duration_s is not None:
            self.durations[job.trains].append(duration_s)

    def _expected(self, job: Job) -> float | None:
        same = self.durations[job.trains]
        every = same or self.durations[not job.trains]
        return sum(every) / len(every) if every else None

    def eta_s(self, elapsed: dict[str, float]) -> float | None:
        """Seconds left: the expected duration of every unsettled job, less what the running ones have
        already run, spread over the slots. None before any job finished in this run."""
        if not self.unsettled:
            return 0.0
        work = 0.0
        for key, job in self.unsettled.items():
            expected = self._expected(job)
            if expected is None:
                return None
            work += max(0.0, expected - elapsed.get(key, 0.0))
        return work / min(self.parallel, len(self.unsettled))

    def line(self, elapsed: dict[str, float] | None = None) -> str:
        """`[5/16 done, 1 failed] ETA 3m20s`"""
        parts = [f"{self.counts[DONE]}/{self.total} done"]
        parts += [f"{self.counts[s]} {s}" for s in (FAILED, SKIPPED) if self.counts[s]]
        if not self.unsettled:
            return f"[{', '.join(parts)}]"
        eta = self.eta_s(elapsed or {})
        return f"[{', '.join(parts)}] ETA {format_duration(eta) if eta is not None else '? (no job finished yet)'}"


def classify(jobs: list[Job], ledger: Ledger) -> dict[str, str]:
    """Bring the ledger in line with the disk before a run: returns key -> done or pending.

    Finished = ledger done + results.json present. A job the ledger still shows as running (the
    runner was killed) whose results.json was written after that attempt started did finish: it is
    recorded as done, not run again. Anything else runs (a training run resumes from its checkpoint).
    """
    state: dict[str, str] = {}
    for job in jobs:
        ledger.register(job.key, job.task, job.output_dir, job.argv)
        rec = ledger.get(job.key)
        assert rec is not None
        has_results = os.path.isfile(results_path(job))
        if rec.status == DONE and has_results:
            state[job.key] = DONE
            continue
        if rec.status in (RUNNING, INTERRUPTED):
            last = ledger.last_attempt(job.key)
            if last and has_results and os.path.getmtime(results_path(job)) >= last[1] and last[2] == RUNNING:
                ledger.finish(last[0], job.key, DONE, 0, message="finished while the runner was down")
                logger.info("Recovered %s: it finished while the runner was down", job.output_dir)
                state[job.key] = DONE
                continue
            if last and last[2] == RUNNING:
                ledger.finish_attempt(last[0], INTERRUPTED, None)
            logger.info("Will resume interrupted job %s", job.output_dir)
        elif rec.status == DONE:
            logger.warning("Ledger says done but %s is missing: running %s again", RESULTS_NAME, job.output_dir)
        ledger.reset_attempts(job.key)
        ledger.set_status(job.key, PENDING)
        state[job.key] = PENDING
    return state


def stop_jobs(handles: list[Handle], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every running job (train.py exits cleanly, its last finished epoch on disk), wait up to
    `grace_s` for them, then SIGKILL what is left. A second Ctrl-C ends the wait at once."""
    for h in handles:
        h.terminate()
    deadline = time.time() + grace_s
    try:
        while time.time() < deadline and any(h.poll() is None for h in handles):
            time.sleep(0.05)
    except KeyboardInterrupt:
        logger.warning("Second interrupt: killing the jobs now")
    for h in handles:
        if h.poll() is None:
            h.kill()


def run_jobs(
    jobs: list[Job],
    ledger: Ledger,
    launcher: Launcher,
    slots: list[Slot],
    allowed: Callable[[Job], set[str]],
    retries: int = 1,
    poll_s: float = 0.2,
    on_job_end: Callable[[Job, str, JobFailure | None], None] | None = None,
    progress: bool | None = None,
    stop_grace_s: float = STOP_GRACE_S,
) -> SweepResult:
    """Run every job not finished yet; never stops early because one job failed.

    Ctrl-C / SIGTERM (a KeyboardInterrupt): the running jobs get SIGTERM (SIGKILL after
    `stop_grace_s`), are marked interrupted in the ledger (the next run resumes them), and an
    `Interrupted` naming them is raised."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    by_key = {j.key: j for j in jobs}
    state = classify(jobs, ledger)
    result = SweepResult(status={})
    result.reused = sum(1 for s in state.values() if s == DONE)
    dependents: dict[str, list[str]] = {k: [] for k in by_key}
    for j in jobs:
        for d in j.deps:
            if d in dependents:
                dependents[d].append(j.key)
    # Launch order: round-robin across pipelines by position, so concurrent pipelines share CPU slots fairly.
    queue = sorted((j for j in jobs if state[j.key] == PENDING), key=lambda j: (j.order, j.pipeline))
    running: dict[str, tuple[Handle, Slot, int, float]] = {}
    tries: dict[str, int] = {}
    tracker = Progress(jobs, len(slots))
    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(jobs), initial=result.reused, unit="job", dynamic_ncols=True, disable=not show_bar)

    def settle(key: str, status: str, failure: JobFailure | None = None, count: bool = True,
               duration_s: float | None = None, announce: Callable[[str], None] | None = None) -> None:
        """Record a job's final state; `announce` logs it with the progress line, before the task's tallies."""
        result.status[key] = status
        tracker.settle(by_key[key], status, duration_s)
        if count:
            bar.update(1)
        if announce is not None:
            announce(tracker.line(elapsed()))
        if on_job_end is not None:
            on_job_end(by_key[key], status, failure)

    def skip_dependents(key: str, reason: str) -> None:
        for d in dependents[key]:
            if d not in result.status:
                ledger.set_status(d, SKIPPED, message=reason)
                queue[:] = [j for j in queue if j.key != d]
                settle(d, SKIPPED)
                skip_dependents(d, reason)

    def fail(job: Job, failure: JobFailure, announce: Callable[[str], None]) -> None:
        result.failures.append(failure)
        settle(job.key, FAILED, failure, announce=announce)
        skip_dependents(job.key, f"dependency {job.output_dir} failed")

    def elapsed() -> dict[str, float]:
        now = time.time()
        return {k: now - started for k, (_, _, _, started) in running.items()}

    for k, s in state.items():
        if s == DONE:
            settle(k, DONE, count=False)

    def poll_running() -> None:
        for key, (handle, slot, attempt_id, started) in list(running.items()):
            rc = handle.poll()
            if rc is None:
                continue
            job = by_key[key]
            slot.busy = False
            del running[key]
            duration = time.time() - started
            if rc == 0 and has_fresh_results(job, started):
                ledger.finish(attempt_id, key, DONE, rc, duration)
                settle(key, DONE, duration_s=duration, announce=lambda progress: logger.info(
                    "Done %s in %s %s", job.output_dir, format_duration(duration), progress))
                continue
            why = f"exit code {rc}" if rc != 0 else f"exit code 0 but no {RESULTS_NAME} was written"
            if rc == USAGE_ERROR_EXIT:
                why += " (a usage error: not retried, the same command cannot succeed; see its output)"
            ledger.finish_attempt(attempt_id, FAILED, rc)
            if rc != USAGE_ERROR_EXIT and tries[key] <= retries:
                logger.warning("Failed %s (%s): retry %d of %d", job.output_dir, why, tries[key], retries)
                ledger.set_status(key, PENDING, rc, duration, message=why)
                queue.append(job)
                continue
            ledger.set_status(key, FAILED, rc, duration, message=why)
            fail(job, JobFailure(job, why, output_tail(job), handle.command), lambda progress: logger.error(
                "Failed %s (%s) after %d attempt(s) %s", job.output_dir, why, tries[key], progress))

    def start_ready() -> None:
        for job in list(queue):
            if any(result.status.get(d) != DONE for d in job.deps if d in by_key):
                continue
            free = next((s for s in slots if not s.busy and s.name in allowed(job)), None)
            if free is None:
                continue
            attempt_id, n = ledger.start_attempt(job.key, free.name)
            tries[job.key] = tries.get(job.key, 0) + 1
            queue.remove(job)
            try:
                handle = launcher.start(job, free, n, job.launch_argv())
            except (OSError, ValueError) as e:  # e.g. no checkpoint to evaluate: retrying cannot help
                why = f"could not start: {e}"
                ledger.finish_attempt(attempt_id, FAILED, None)
                ledger.set_status(job.key, FAILED, None, 0.0, message=why)
                fail(job, JobFailure(job, why), lambda progress: logger.error(
                    "Failed %s (%s) %s", job.output_dir, why, progress))
                continue
            ledger.set_external_id(attempt_id, handle.external_id)
            free.busy = True
            running[job.key] = (handle, free, attempt_id, time.time())
            result.launched += 1
            logger.info("Start %s on %s (attempt %d): %s", job.output_dir, free.name, n, handle.command)

    try:
        with logging_redirect_tqdm() if show_bar else contextlib.nullcontext():
            while queue or running:
                poll_running()
                start_ready()
                bar.set_postfix_str(f"done {result.count(DONE)} failed {result.count(FAILED)} "
                                    f"skipped {result.count(SKIPPED)} running {len(running)}")
                if queue and not running and not any(s for s in slots if not s.busy):
                    raise RuntimeError("No slots to run on: check gpu_ids / --cpu-workers.")
                if queue and not running:
                    blocked = [j for j in queue if not any(s.name in allowed(j) for s in slots)]
                    if blocked:
                        raise RuntimeError(f"No slot may run job {blocked[0].output_dir}: its task has no GPU or CPU slot.")
                time.sleep(poll_s)
    except BaseException as e:
        # Ctrl-C, SIGTERM or a bug: stop the children and leave their jobs resumable.
        stopped = _stop_and_record(running, by_key, ledger, stop_grace_s)
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted(getattr(e, "signum", signal.SIGINT), stopped, len(queue)) from None
        raise
    finally:
        bar.close()
    return result


def has_fresh_results(job: Job, started: float) -> bool:
    """results.json exists and was written by the attempt that started at `started`."""
    res = results_path(job)
    return os.path.isfile(res) and os.path.getmtime(res) >= started - 1


def _stop_and_record(running: dict[str, tuple[Handle, Slot, int, float]], by_key: dict[str, Job], ledger: Ledger,
                     grace_s: float) -> list[Job]:
    """Stop the running jobs; a job that finished meanwhile is done, the others are interrupted."""
    if not running:
        return []
    logger.info("Stopping %d running job(s) (SIGTERM, SIGKILL after %s)", len(running), format_duration(grace_s))
    stop_jobs([h for h, _, _, _ in running.values()], grace_s)
    stopped = []
    for key, (handle, _, attempt_id, started) in running.items():
        rc = handle.poll()
        if rc == 0 and has_fresh_results(by_key[key], started):
            ledger.finish(attempt_id, key, DONE, rc, time.time() - started)
            continue
        ledger.finish(attempt_id, key, INTERRUPTED, rc)
        stopped.append(by_key[key])
    return stopped
