"""Running jobs on slots: explicit dependencies, retries, failure isolation, resume from the ledger.

A slot is one place a job can run: ``gpu<i>#<k>`` (the k-th job on GPU i, with
``CUDA_VISIBLE_DEVICES=i``), ``cpu#<k>`` (no GPU visible, a share of the CPU threads) or
``slurm#<k>``. The loop is single-threaded: it starts a job on the first free slot its task may
use as soon as the job's own dependencies are done, polls running jobs, retries a failed job up
to the configured count, and marks everything that depends on a job that failed for good as
skipped. Children are started from this thread with a parent-death signal, so killing the
runner takes its training processes with it.
"""
from __future__ import annotations

import ctypes
import logging
import os
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

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...


class Launcher(Protocol):
    def start(self, job: Job, slot: Slot, attempt: int) -> Handle: ...


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the runner dies (Linux), so no orphan keeps writing."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class _PopenHandle:
    def __init__(self, proc: subprocess.Popen, log_file):
        self.proc = proc
        self.log_file = log_file
        self.external_id = str(proc.pid)

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None and not self.log_file.closed:
            self.log_file.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def open_job_output(job: Job, slot: Slot, attempt: int):
    os.makedirs(job.output_dir, exist_ok=True)
    f = open(os.path.join(job.output_dir, OUTPUT_NAME), "a", buffering=1)
    f.write(f"\n===== runner: attempt {attempt} on {slot.name} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            f"===== {job.command()}\n")
    f.flush()
    return f


class LocalLauncher:
    """`python <argv>` as a child process in the repository root, output appended to job_output.txt."""

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable

    def start(self, job: Job, slot: Slot, attempt: int) -> Handle:
        argv = job.launch_argv()
        log = open_job_output(job, slot, attempt)
        env = {**os.environ, **slot.env, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [self.python, *argv], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        return _PopenHandle(proc, log)


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


@dataclass
class SweepResult:
    status: dict[str, str]  # key -> done | failed | skipped | interrupted
    failures: list[tuple[Job, str]] = field(default_factory=list)  # (job, message with log tail)
    reused: int = 0  # jobs finished in an earlier run of the sweep
    launched: int = 0

    def count(self, status: str) -> int:
        return sum(1 for s in self.status.values() if s == status)


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


def run_jobs(
    jobs: list[Job],
    ledger: Ledger,
    launcher: Launcher,
    slots: list[Slot],
    allowed: Callable[[Job], set[str]],
    retries: int = 1,
    poll_s: float = 0.2,
    on_job_end: Callable[[Job, str, str], None] | None = None,
    progress: bool | None = None,
) -> SweepResult:
    """Run every job not finished yet; never stops early because one job failed."""
    from tqdm import tqdm

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
    bar = tqdm(total=len(jobs), initial=result.reused, unit="job", dynamic_ncols=True,
               disable=(not sys.stderr.isatty()) if progress is None else not progress)

    def settle(key: str, status: str, message: str = "", count: bool = True) -> None:
        result.status[key] = status
        if count:
            bar.update(1)
        if on_job_end is not None:
            on_job_end(by_key[key], status, message)

    def skip_dependents(key: str, reason: str) -> None:
        for d in dependents[key]:
            if d not in result.status:
                ledger.set_status(d, SKIPPED, message=reason)
                queue[:] = [j for j in queue if j.key != d]
                settle(d, SKIPPED, reason)
                skip_dependents(d, reason)

    for k, s in state.items():
        if s == DONE:
            settle(k, DONE, "finished in an earlier run", count=False)

    def refresh() -> None:
        bar.set_postfix_str(
            f"done {result.count(DONE)} failed {result.count(FAILED)} skipped {result.count(SKIPPED)} running {len(running)}"
        )

    try:
        while queue or running:
            for key, (handle, slot, attempt_id, started) in list(running.items()):
                rc = handle.poll()
                if rc is None:
                    continue
                job = by_key[key]
                slot.busy = False
                del running[key]
                duration = time.time() - started
                res = results_path(job)
                ok = rc == 0 and os.path.isfile(res) and os.path.getmtime(res) >= started - 1
                if ok:
                    ledger.finish(attempt_id, key, DONE, rc, duration)
                    logger.info("Done %s (%.1fs)", job.output_dir, duration)
                    settle(key, DONE)
                    continue
                why = f"exit code {rc}" if rc != 0 else f"exit code 0 but no {RESULTS_NAME} was written"
                ledger.finish_attempt(attempt_id, FAILED, rc)
                if tries[key] <= retries:
                    logger.warning("Failed %s (%s): retry %d of %d", job.output_dir, why, tries[key], retries)
                    ledger.set_status(key, PENDING, rc, duration, message=why)
                    queue.append(job)
                    continue
                tail = output_tail(job)
                ledger.set_status(key, FAILED, rc, duration, message=why)
                logger.error("Failed %s (%s) after %d attempt(s)", job.output_dir, why, tries[key])
                result.failures.append((job, f"{why}\n{tail}"))
                settle(key, FAILED, f"{why}\n{tail}")
                skip_dependents(key, f"dependency {job.output_dir} failed")
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
                    handle = launcher.start(job, free, n)
                except (OSError, ValueError) as e:  # e.g. no checkpoint to evaluate: retrying cannot help
                    why = f"could not start: {e}"
                    ledger.finish_attempt(attempt_id, FAILED, None)
                    ledger.set_status(job.key, FAILED, None, 0.0, message=why)
                    logger.error("Failed %s (%s)", job.output_dir, why)
                    result.failures.append((job, why))
                    settle(job.key, FAILED, why)
                    skip_dependents(job.key, f"dependency {job.output_dir} failed")
                    continue
                ledger.set_external_id(attempt_id, handle.external_id)
                free.busy = True
                running[job.key] = (handle, free, attempt_id, time.time())
                result.launched += 1
                logger.info("Start %s on %s (attempt %d): %s", job.output_dir, free.name, n, job.command())
            refresh()
            if queue and not running and not any(s for s in slots if not s.busy):
                raise RuntimeError("No slots to run on: check gpu_ids / --cpu-workers.")
            if queue and not running:
                blocked = [j for j in queue if not any(s.name in allowed(j) for s in slots)]
                if blocked:
                    raise RuntimeError(f"No slot may run job {blocked[0].output_dir}: its task has no GPU or CPU slot.")
            time.sleep(poll_s)
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): stop the children and leave the jobs resumable.
        for key, (handle, slot, attempt_id, _) in running.items():
            handle.kill()
            ledger.finish_attempt(attempt_id, INTERRUPTED, None)
            ledger.set_status(key, INTERRUPTED)
        raise
    finally:
        bar.close()
    return result
