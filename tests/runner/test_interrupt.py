"""Ctrl-C / SIGTERM on the runner: its jobs get SIGTERM (SIGKILL after a grace period), the runner
says in one line what it stopped and how to resume, exits 128+signum without a traceback, and the
printed command resumes the stopped jobs where they were."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from runner.config import REPO_ROOT
from tests.runner.conftest import ledger_rows, runner_cmd, sweep_base, write_sweep
from tests.runner.test_resume import alive, wait_for

EPOCHS = 30
TASK = {"train": {"mode": "all", "trainer": "CoOp", "cfg": "vit_b16", "seeds": [1, 2],
                  "opts": ["OPTIM.MAX_EPOCH", str(EPOCHS)]}, "data": {"datasets_all": ["dtd"]}}


def start(sweep: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(runner_cmd(sweep, *extra), cwd=REPO_ROOT, env={**os.environ, **(env or {})},
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_dirs(ledger: Path) -> list[Path]:
    return [Path(r[0]) for r in ledger_rows(ledger, "SELECT output_dir FROM jobs ORDER BY output_dir")]


def both_training(ledger: Path) -> bool:
    dirs = [Path(r[0]) for r in ledger_rows(ledger, "SELECT output_dir FROM jobs WHERE status='running'")]
    return len(dirs) == 2 and all((d / "epochs.txt").exists() for d in dirs)


def test_ctrl_c_stops_the_jobs_and_the_printed_command_resumes_them(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.1")
    sweep = write_sweep(tmp_path / "sweep.py", sweep_base(tmp_path), {"t": TASK})
    ledger = tmp_path / "outputs" / "runner_ledger.sqlite"
    proc = start(sweep)
    wait_for(lambda: both_training(ledger))
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if "Interrupted by SIGINT" in ln]
    assert "stopped 2 running job(s) (t: 2; each keeps its last finished epoch)" in line
    # The jobs got SIGTERM (a clean stop), and the ledger marks them interrupted.
    for d in run_dirs(ledger):
        assert (d / "signals.txt").read_text() == "SIGTERM\n"
        assert not (d / "results.json").exists()
    assert ledger_rows(ledger, "SELECT DISTINCT status FROM jobs") == [("interrupted",)]
    assert not (tmp_path / "results").exists()

    # Run the printed command: it resumes each job after its last saved epoch and finishes the sweep.
    command = shlex.split(line.split("To resume, run the same command again: ", 1)[1])
    assert command[0] == "python"
    rerun = subprocess.run([sys.executable, *command[1:]], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for d in run_dirs(ledger):
        epochs = [int(e) for e in (d / "epochs.txt").read_text().split()]
        assert epochs == list(range(1, EPOCHS + 1))  # each epoch trained once: resumed, not restarted
        assert (d / "results.json").exists()
    statuses = [r[0] for r in ledger_rows(ledger, "SELECT status FROM attempts ORDER BY id")]
    assert statuses == ["interrupted", "interrupted", "done", "done"]
    assert (tmp_path / "results/acc/t/all-CoOp-vit_b16.csv").is_file()


def test_sigterm_kills_a_job_that_ignores_it_after_the_grace_period(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.1")
    sweep = write_sweep(tmp_path / "sweep.py", sweep_base(tmp_path), {"t": TASK})
    ledger = tmp_path / "outputs" / "runner_ledger.sqlite"
    proc = start(sweep, "--stop-grace", "0.5", env={"FAKE_TRAIN_IGNORE_TERM": "1"})
    wait_for(lambda: both_training(ledger))
    children = [int(r[0]) for r in ledger_rows(ledger, "SELECT external_id FROM attempts")]
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "Interrupted by SIGTERM: stopped 2 running job(s)" in err
    assert not any(alive(pid) for pid in children)  # SIGKILLed once the grace period was over
    for d in run_dirs(ledger):
        assert (d / "signals.txt").read_text() == "SIGTERM\n"  # but they were asked first
    assert ledger_rows(ledger, "SELECT DISTINCT status FROM attempts") == [("interrupted",)]
