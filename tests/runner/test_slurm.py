"""`--launcher slurm` through submitit's local executor: same jobs, same ledger, same tallies."""
from __future__ import annotations

import pandas as pd
import pytest

import parallel_runner
from tests.runner.conftest import ledger_rows, sweep_base, write_sweep

TASK = {"train": {"trainer": "CoOp", "cfg": "vit_b16", "seeds": [1], "opts": ["OPTIM.MAX_EPOCH", "2"]},
        "data": {"datasets_base_to_new": ["dtd"]}}


@pytest.mark.slow
def test_submitit_local_executor_runs_the_sweep(tmp_path, fake_env):
    pytest.importorskip("submitit")
    local = tmp_path / "local"
    slurm = tmp_path / "slurm"
    local.mkdir()
    slurm.mkdir()
    s_local = write_sweep(local / "s.py", sweep_base(local), {"t": TASK})
    s_slurm = write_sweep(slurm / "s.py", sweep_base(slurm, runner={"slurm": {"cluster": "local", "timeout_min": 5,
                                                                              "cpus_per_task": 1, "gpus_per_node": 0}}),
                          {"t": TASK})
    assert parallel_runner.main(["--configs", str(s_local), "--no-mail", "--poll", "0.05"]) == 0
    assert parallel_runner.main(["--configs", str(s_slurm), "--no-mail", "--poll", "0.1", "--launcher", "slurm"]) == 0

    ledger = slurm / "outputs" / "runner_ledger.sqlite"
    rows = ledger_rows(ledger, "SELECT slot, external_id, status FROM attempts")
    assert len(rows) == 2 and all(r[0].startswith("slurm#") and r[1] and r[2] == "done" for r in rows)
    assert list((slurm / "outputs" / "slurm_logs").iterdir())  # submitit's own job folder
    name = "t/b2n-CoOp-vit_b16.csv"
    pd.testing.assert_frame_equal(pd.read_csv(local / "results/acc" / name), pd.read_csv(slurm / "results/acc" / name))
