"""Ctrl-C on a sweep of the real train.py (CoOp few-shot on the demo world), then the same command
again: the stopped training job continues from its resume point and ends bit-identical to an
uninterrupted run. (SIGKILL-and-restart of the runner is tested with the stand-in trainer in
test_resume.py; train.py's own resume in tests/engine and tests/trainers.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from runner.config import REPO_ROOT
from runner.scheduler import make_slots
from runner.tasks import expand_task
from tests.runner.conftest import build, ledger_rows, run_runner, runner_cmd, sweep_base, write_sweep
from tests.runner.test_resume import wait_for

EPOCHS = 4
WORKERS = 1


@pytest.fixture(scope="module")
def demo_shapes_root(tmp_path_factory) -> Path:
    from demo.make_data import DEMO_DATASETS, write_dataset

    root = tmp_path_factory.mktemp("demo_data")
    write_dataset(DEMO_DATASETS["demo_shapes"], str(root))
    return root


def coop_demo_task() -> dict:
    # The few-shot protocol (one job, no separate eval process), kept small: the 24 base classes only
    # (a later SUBSAMPLE_CLASSES wins over the job's `all`; 480 test images instead of 960) and
    # 4 shots, i.e. three steps of 32 images per epoch.
    return {"train": {"mode": "all", "trainer": "CoOp", "cfg": "CoOp/demo", "seeds": [1], "shots": 4,
                      "opts": ["MODEL.BACKBONE.NAME", "demo", "DATALOADER.NUM_WORKERS", "0",
                               "OPTIM.MAX_EPOCH", str(EPOCHS), "DATASET.SUBSAMPLE_CLASSES", "base"]},
            "data": {"datasets_all": ["demo_shapes"]}}


def prompt_learner(run_dir: Path) -> dict:
    ckpt = torch.load(run_dir / "prompt_learner" / f"model.pth.tar-{EPOCHS}", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


@pytest.mark.slow
def test_ctrl_c_then_rerun_resumes_real_training_bit_identically(tmp_path, demo_shapes_root, monkeypatch):
    monkeypatch.delenv("DATA", raising=False)
    base = sweep_base(tmp_path, data_root=str(demo_shapes_root), runner={"script": "train.py", "cpu_workers": WORKERS})
    tasks = {"coop": coop_demo_task()}
    sweep = write_sweep(tmp_path / "sweep.py", base, tasks)
    train_job = expand_task(build(base, tasks)[0]).jobs[0]
    train_dir = Path(train_job.output_dir)

    # The uninterrupted reference: the same command into another folder, with the slot's environment
    # (the thread count changes float sums), alongside the sweep.
    argv = list(train_job.argv)
    argv[argv.index("--output-dir") + 1] = str(tmp_path / "reference")
    slot_env = make_slots([], cpu_workers=WORKERS)[0].env
    reference = subprocess.Popen([sys.executable, *argv], cwd=REPO_ROOT, env={**os.environ, **slot_env},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    proc = subprocess.Popen(runner_cmd(sweep), cwd=REPO_ROOT, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # Stop it mid-training: after the first epoch's resume point, before the last checkpoint.
    wait_for(lambda: (train_dir / "resume.pth.tar").exists(), timeout=240)
    assert not (train_dir / "prompt_learner" / f"model.pth.tar-{EPOCHS}").exists()
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert "Interrupted by SIGINT: stopped 1 running job(s) (coop: 1; each keeps its last finished epoch)" in err
    assert "To resume, run the same command again: python " in err
    ledger = tmp_path / "outputs" / "runner_ledger.sqlite"
    assert ("interrupted",) in ledger_rows(ledger, "SELECT status FROM jobs")
    assert "Stopped by SIGTERM" in (train_dir / "job_output.txt").read_text()  # train.py's clean stop

    rerun = run_runner(sweep, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (train_dir / "log.txt").read_text()
    assert "Resumed from" in log and "Previous epoch" in log, log[-2000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
    ours, theirs = prompt_learner(train_dir), prompt_learner(tmp_path / "reference")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    acc = pd.read_csv(tmp_path / "results/acc/coop/all-CoOp-demo.csv").set_index("dataset")
    assert acc.loc["demo_shapes", "acc_pct"] > 0
