"""The ledger's promise: SIGKILL the runner (alone, or with all its children) at any moment, start it
again, and the sweep ends with the same tallies as an uninterrupted one, no finished job run twice."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from runner.config import REPO_ROOT
from tests.runner.conftest import ledger_rows, run_runner, runner_cmd, sweep_base, write_sweep

TASK = {"train": {"trainer": "CoOp", "cfg": "vit_b16", "seeds": [1, 2], "opts": ["OPTIM.MAX_EPOCH", "4"]},
        "data": {"datasets_base_to_new": ["dtd", "eurosat", "caltech101"]}}


def make_sweep(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    root.mkdir()
    return write_sweep(root / "sweep.py", sweep_base(root), {"b2n_task": TASK})


def wait_for(cond, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if cond():
                return
        except Exception:  # the ledger may not exist yet
            pass
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def counts(ledger: Path) -> dict:
    return dict(ledger_rows(ledger, "SELECT status, COUNT(*) FROM jobs GROUP BY status"))


def running_pids(ledger: Path) -> list[int]:
    return [int(r[0]) for r in ledger_rows(ledger, "SELECT external_id FROM attempts WHERE status='running' AND external_id IS NOT NULL")]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def output_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "outputs").rglob("results.json"))


@pytest.mark.slow
def test_sigkill_and_restart_match_an_uninterrupted_sweep(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.15")
    env = {**os.environ}
    clean = make_sweep(tmp_path, "clean")
    done = run_runner(clean, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    crash = make_sweep(tmp_path, "crash")
    ledger = crash.parent / "outputs" / "runner_ledger.sqlite"

    # 1) SIGKILL the runner process alone while a training job is mid-way: its child must die too.
    proc = subprocess.Popen(runner_cmd(crash), cwd=REPO_ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: counts(ledger).get("done", 0) >= 2 and any(
        (Path(d[0]) / "epochs.txt").exists() and not (Path(d[0]) / "results.json").exists()
        for d in ledger_rows(ledger, "SELECT output_dir FROM jobs WHERE status='running'")))
    children = running_pids(ledger)
    assert children
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not any(alive(p) for p in children), timeout=10)
    assert counts(ledger).get("running", 0) >= 1  # the ledger still says running: a restart must sort it out

    # 2) Restart, then SIGKILL the whole process group (runner and children) later in the sweep.
    proc = subprocess.Popen(runner_cmd(crash), cwd=REPO_ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: counts(ledger).get("done", 0) >= 7)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    # 3) Restart and let it finish.
    final = run_runner(crash, env=env)
    assert final.returncode == 0, final.stderr[-3000:]
    assert counts(ledger) == {"done": 12}

    name = "b2n_task/b2n-CoOp-vit_b16.csv"
    clean_acc = pd.read_csv(clean.parent / "results/acc" / name)
    crash_acc = pd.read_csv(crash.parent / "results/acc" / name)
    pd.testing.assert_frame_equal(clean_acc, crash_acc)
    assert (crash.parent / "results/cost" / name).is_file()

    # No finished job ran twice: one completion per run dir, and no launch after a successful one.
    dirs = output_dirs(crash.parent)
    assert len(dirs) == 12
    for d in dirs:
        assert len((d / "completions.txt").read_text().split()) == 1, d
    attempts = ledger_rows(ledger, "SELECT key, status FROM attempts ORDER BY id")
    by_key: dict = {}
    for key, status in attempts:
        by_key.setdefault(key, []).append(status)
    assert all(s.count("done") == 1 and s[-1] == "done" for s in by_key.values()), by_key
    interrupted = [s for s in by_key.values() if "interrupted" in s]
    assert interrupted  # at least one job was really cut off and run again
    # Interrupted training resumed from its checkpoint: every epoch trained once per run dir, in order.
    for d in dirs:
        if "train_base" in str(d):
            epochs = [int(x) for x in (d / "epochs.txt").read_text().split()]
            assert epochs == [1, 2, 3, 4], (d, epochs)
