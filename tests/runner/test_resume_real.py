"""SIGKILL-and-restart with the real train.py: CoOp base-to-new on a tiny random CLIP and a tiny
Caltech101 tree. The resumed sweep must give the very same accuracy table as an uninterrupted one."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from runner.config import REPO_ROOT
from tests.runner.conftest import ledger_rows, run_runner, runner_cmd, sweep_base, write_sweep
from tests.runner.test_resume import counts, wait_for


def coop_task(clip_path: Path) -> dict:
    opts = ["MODEL.BACKBONE.NAME", str(clip_path), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "8", "TRAINER.COOP.N_CTX", "4",
            "TRAINER.COOP.PREC", "fp32", "OPTIM.MAX_EPOCH", "4", "TRAIN.CHECKPOINT_FREQ", "1"]
    return {"train": {"trainer": "CoOp", "cfg": "vit_b16_ep50", "seeds": [1], "opts": opts},
            "data": {"datasets_base_to_new": ["caltech101"]}}


@pytest.mark.slow
def test_real_train_py_sweep_survives_sigkill(tmp_path, tiny_clip_path, caltech_root, monkeypatch):
    monkeypatch.delenv("DATA", raising=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweeps = {}
    for name in ("clean", "crash"):
        (tmp_path / name).mkdir()
        base = sweep_base(tmp_path / name, data_root=str(caltech_root), runner={"script": "train.py"})
        sweeps[name] = write_sweep(tmp_path / name / "sweep.py", base, {"coop_b2n": coop_task(tiny_clip_path)})
    done = run_runner(sweeps["clean"], env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ledger = tmp_path / "crash" / "outputs" / "runner_ledger.sqlite"
    proc = subprocess.Popen(runner_cmd(sweeps["crash"]), cwd=REPO_ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def mid_training() -> bool:
        dirs = [Path(r[0]) for r in ledger_rows(ledger, "SELECT output_dir FROM jobs WHERE status='running'")]
        return any((d / "prompt_learner" / "model.pth.tar-1").exists() and not (d / "results.json").exists() for d in dirs)

    wait_for(mid_training, timeout=240)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert counts(ledger).get("running", 0) >= 1
    final = run_runner(sweeps["crash"], env=env, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert counts(ledger) == {"done": 2}

    name = "coop_b2n/b2n-CoOp-vit_b16_ep50.csv"
    clean = pd.read_csv(tmp_path / "clean/results/acc" / name)
    crash = pd.read_csv(tmp_path / "crash/results/acc" / name)
    pd.testing.assert_frame_equal(clean, crash)
    assert clean.loc[clean.dataset == "caltech101", "H"].notna().all()
    # The interrupted training job resumed (its log says so) rather than starting over.
    statuses = [r[0] for r in ledger_rows(ledger, "SELECT status FROM attempts ORDER BY id")]
    assert "interrupted" in statuses and statuses.count("done") == 2
    resumed = [Path(r[0]) for r in ledger_rows(
        ledger, "SELECT j.output_dir FROM jobs j JOIN attempts a ON a.key=j.key WHERE a.status='interrupted'")]
    logs = "".join(p.read_text() for d in resumed for p in d.glob("log.txt*"))
    assert "resum" in logs.lower(), logs[-2000:]
