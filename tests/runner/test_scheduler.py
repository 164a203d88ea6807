"""Scheduling on fake slots, failure isolation and retries, with an in-process fake launcher."""
from __future__ import annotations

import json
import os

from runner.ledger import Ledger
from runner.scheduler import make_slots, run_jobs
from runner.tasks import expand_task
from tests.runner.conftest import build, sweep_base


class FakeLauncher:
    """Each job 'runs' for `ticks` polls, then writes results.json and, if it trains, a checkpoint (or
    fails with exit code `fail_code` when its dir matches `fail`)."""

    def __init__(self, ticks=3, fail=(), fail_times=99, fail_code=1):
        self.ticks, self.fail, self.fail_times, self.fail_code = ticks, fail, fail_times, fail_code
        self.running: dict = {}
        self.events: list = []  # (event, output_dir, slot name, env)
        self.max_running = 0
        self.fail_count: dict = {}

    def start(self, job, slot, attempt, argv):
        launcher = self
        launcher.events.append(("start", job.output_dir, slot.name, dict(slot.env)))
        launcher.argvs = getattr(launcher, "argvs", []) + [argv]

        class H:
            external_id = f"fake-{len(launcher.events)}"
            command = " ".join(argv)
            left = launcher.ticks

            def poll(self):
                self.left -= 1
                if self.left > 0:
                    return None
                launcher.running.pop(job.key, None)
                launcher.events.append(("end", job.output_dir, slot.name, None))
                if any(f in job.output_dir for f in launcher.fail):
                    n = launcher.fail_count[job.key] = launcher.fail_count.get(job.key, 0) + 1
                    if n <= launcher.fail_times:
                        os.makedirs(job.output_dir, exist_ok=True)
                        with open(os.path.join(job.output_dir, "job_output.txt"), "a") as f:
                            f.write("Traceback\nRuntimeError: boom\n")
                        return launcher.fail_code
                os.makedirs(os.path.join(job.output_dir, "model"), exist_ok=True)
                if job.trains:
                    open(os.path.join(job.output_dir, "model", "model.pth.tar-3"), "w").close()
                with open(os.path.join(job.output_dir, "results.json"), "w") as f:
                    json.dump({"accuracy": 50.0}, f)
                return 0

            def terminate(self):
                pass

            def kill(self):
                pass

        self.running[job.key] = True
        self.max_running = max(self.max_running, len(self.running))
        return H()


def make_plan(tmp_path, seeds=(1, 2), datasets=("dtd", "caltech101")):
    (task,) = build(sweep_base(tmp_path), {"t": {"train": {"trainer": "CoOp", "cfg": "vit_b16", "seeds": list(seeds)},
                                                 "data": {"datasets_base_to_new": list(datasets)}}})
    return expand_task(task)


def run(tmp_path, plan, launcher, slots, retries=0):
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    names = {s.name for s in slots}
    try:
        return run_jobs(plan.jobs, ledger, launcher, slots, lambda j: names, retries=retries, poll_s=0, progress=False), ledger
    finally:
        pass


def test_gpu_slots_cap_concurrency_and_set_cuda_visible_devices(tmp_path):
    plan = make_plan(tmp_path)
    launcher = FakeLauncher()
    slots = make_slots([0, 1], jobs_per_gpu=1)
    result, _ = run(tmp_path, plan, launcher, slots)
    assert result.count("done") == 8 and not result.failures
    assert launcher.max_running == 2
    starts = [e for e in launcher.events if e[0] == "start"]
    assert {e[3]["CUDA_VISIBLE_DEVICES"] for e in starts} == {"0", "1"}
    assert make_slots([0], jobs_per_gpu=3)[2].name == "gpu0#2"
    cpu = make_slots([], cpu_workers=2)
    assert [s.name for s in cpu] == ["cpu#0", "cpu#1"] and cpu[0].env["CUDA_VISIBLE_DEVICES"] == ""


def test_eval_waits_for_its_own_training_only(tmp_path):
    plan = make_plan(tmp_path, seeds=(1,), datasets=("dtd", "caltech101", "eurosat"))
    # Make the first training job slow: other evals must not wait for it.
    launcher = FakeLauncher(ticks=2)
    slow_dir = plan.jobs[0].output_dir
    orig_start = launcher.start

    def start(job, slot, attempt, argv):
        h = orig_start(job, slot, attempt, argv)
        if job.output_dir == slow_dir:
            h.left = 40
        return h

    launcher.start = start
    result, _ = run(tmp_path, plan, launcher, make_slots([], cpu_workers=2))
    order = [(e[0], e[1]) for e in launcher.events]
    slow_end = order.index(("end", slow_dir))
    eval_other = order.index(("start", plan.jobs[4].output_dir))  # caltech101 new
    eval_own = order.index(("start", plan.jobs[3].output_dir))  # dtd new
    assert eval_other < slow_end < eval_own
    assert result.count("done") == 6


def test_failure_is_isolated_retried_and_reported(tmp_path):
    plan = make_plan(tmp_path)
    bad_train = plan.jobs[0].output_dir  # dtd seed1 training
    launcher = FakeLauncher(fail=[bad_train])
    result, ledger = run(tmp_path, plan, launcher, make_slots([], cpu_workers=2), retries=2)
    assert result.count("failed") == 1 and result.count("skipped") == 1 and result.count("done") == 6
    (failure,) = result.failures
    assert failure.job.output_dir == bad_train and "exit code 1" in failure.message
    assert "RuntimeError: boom" in failure.message
    job = failure.job
    assert [a[1] for a in ledger.attempts_of(job.key)] == ["failed"] * 3  # 1 + 2 retries
    dependent = plan.jobs[4]
    assert ledger.get(dependent.key).status == "skipped" and ledger.attempts_of(dependent.key) == []


def test_retry_recovers_a_flaky_job(tmp_path):
    plan = make_plan(tmp_path, seeds=(1,), datasets=("dtd",))
    launcher = FakeLauncher(fail=[plan.jobs[0].output_dir], fail_times=1)
    result, ledger = run(tmp_path, plan, launcher, make_slots([], cpu_workers=1), retries=1)
    assert result.count("done") == 2 and not result.failures
    assert [a[1] for a in ledger.attempts_of(plan.jobs[0].key)] == ["failed", "done"]


def test_restart_skips_finished_jobs(tmp_path):
    plan = make_plan(tmp_path)
    run(tmp_path, plan, FakeLauncher(), make_slots([], cpu_workers=2))
    os.remove(os.path.join(plan.jobs[1].output_dir, "results.json"))  # a finished job lost its results
    launcher = FakeLauncher()
    result, _ = run(tmp_path, plan, launcher, make_slots([], cpu_workers=2))
    assert [e[1] for e in launcher.events if e[0] == "start"] == [plan.jobs[1].output_dir]
    assert result.reused == 7 and result.count("done") == 8


def test_a_usage_error_is_not_retried(tmp_path):
    plan = make_plan(tmp_path, seeds=(1,), datasets=("dtd",))
    launcher = FakeLauncher(fail=[plan.jobs[0].output_dir], fail_code=2)  # train.py's status for a user mistake
    result, ledger = run(tmp_path, plan, launcher, make_slots([], cpu_workers=1), retries=3)
    assert [a[1] for a in ledger.attempts_of(plan.jobs[0].key)] == ["failed"]  # one attempt, not 1 + 3
    (failure,) = result.failures
    assert "exit code 2 (a usage error: not retried" in failure.reason
    assert result.count("skipped") == 1
