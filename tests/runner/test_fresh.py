"""Nothing is deleted unless asked: --fresh removes a task's tree and its ledger rows, then reruns."""
from __future__ import annotations

import parallel_runner
from tests.runner.conftest import ledger_rows, sweep_base, write_sweep


def test_fresh_reruns_from_scratch_and_plain_restart_does_not(tmp_path, fake_env):
    task = {"train": {"mode": "all", "trainer": "CoOp", "cfg": "vit_b16", "seeds": [1], "opts": ["OPTIM.MAX_EPOCH", "1"]},
            "data": {"datasets_all": ["dtd"]}}
    sweep = write_sweep(tmp_path / "s.py", sweep_base(tmp_path), {"t": task})
    args = ["--configs", str(sweep), "--no-mail", "--poll", "0.05"]
    keep = tmp_path / "outputs" / "t" / "user_notes.txt"
    assert parallel_runner.main(args) == 0
    keep.write_text("mine")
    assert parallel_runner.main(args) == 0  # nothing to run, nothing removed
    ledger = tmp_path / "outputs" / "runner_ledger.sqlite"
    assert ledger_rows(ledger, "SELECT COUNT(*) FROM attempts") == [(1,)]
    assert keep.exists()
    assert parallel_runner.main(args + ["--fresh"]) == 0
    assert not keep.exists()
    assert ledger_rows(ledger, "SELECT COUNT(*) FROM attempts") == [(1,)]  # old rows dropped, one new launch
    (run_dir,) = [p.parent for p in (tmp_path / "outputs" / "t").rglob("results.json")]
    assert (run_dir / "completions.txt").read_text().count("\n") == 1
