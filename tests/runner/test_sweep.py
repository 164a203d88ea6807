"""A whole sweep in-process with the stand-in train.py: CSVs, plots, failure summary and mail."""
from __future__ import annotations

import email
import json
import re
import shlex
import subprocess
from email import policy
from pathlib import Path

import pandas as pd

import parallel_runner
from runner.config import REPO_ROOT
from runner.scheduler import Progress, format_duration
from runner.tasks import expand_task
from tests.runner.conftest import build, ledger_rows, run_runner, sweep_base, write_sweep
from tests.runner.test_mail import smtp_server  # noqa: F401  (fixture)


def test_sweep_isolates_a_failure_and_mails_the_summary(tmp_path, fake_env, monkeypatch, smtp_server,  # noqa: F811
                                                        capsys):
    monkeypatch.setenv("FAKE_TRAIN_FAIL", "eurosat/shots16/vit_b16/seed1")
    monkeypatch.setenv("TEST_PW", "s3cret")
    smtp_server.password = "s3cret"
    base = sweep_base(tmp_path, mail={"host": "127.0.0.1", "port": smtp_server.server_address[1], "security": "none",
                                      "username": "me", "password_env": "TEST_PW", "to": "you@example.org"})
    tasks = {
        "coop_b2n": {"train": {"trainer": "CoOp", "cfg": "vit_b16", "seeds": [1, 2], "opts": ["OPTIM.MAX_EPOCH", "2"]},
                     "data": {"datasets_base_to_new": ["dtd", "eurosat"]}},
        "zs_all": {"train": {"mode": "all", "trainer": "ZeroshotCLIP", "cfg": "CoOp/vit_b16", "eval_only": True,
                             "seeds": [1]}, "data": {"datasets_all": ["dtd"]},
                   "grid_search": {"params": [{"name": "DATASET.NUM_SHOTS", "alias": "shot", "values": [1, 2]}]}},
    }
    sweep = write_sweep(tmp_path / "sweep.py", base, tasks,
                        [dict(gpu_ids=[], tasks=["coop_b2n"]), dict(gpu_ids=[], tasks=["zs_all"])])
    rc = parallel_runner.main(["--configs", str(sweep), "--poll", "0.05"])
    assert rc == 1  # a job failed

    ledger = tmp_path / "outputs" / "runner_ledger.sqlite"
    status = dict(ledger_rows(ledger, "SELECT output_dir, status FROM jobs"))
    failed = [d for d, s in status.items() if s == "failed"]
    skipped = [d for d, s in status.items() if s == "skipped"]
    assert len(failed) == 1 and failed[0].endswith("train_base/CoOp/eurosat/shots16/vit_b16/seed1")
    assert len(skipped) == 1 and skipped[0].endswith("test_new/CoOp/eurosat/shots16/vit_b16/seed1")
    assert sum(s == "done" for s in status.values()) == 6 + 2

    # The failed task writes no tables (they would have holes) and says so; the other task's are written.
    acc_csv = tmp_path / "results/acc/coop_b2n/b2n-CoOp-vit_b16.csv"
    assert not acc_csv.exists() and not (tmp_path / "results/cost/coop_b2n").exists()
    assert not (tmp_path / "results/acc/b2n-accuracy_vs_training_time.png").exists()
    for shot in (1, 2):
        assert (tmp_path / f"results/acc/zs_all/all-ZeroshotCLIP-vit_b16-shot={shot}.csv").is_file()
    assert (tmp_path / "results/acc/zs_all/all-ZeroshotCLIP-vit_b16-shot.png").is_file()
    out = capsys.readouterr().err
    assert "coop_b2n: 1 job(s) failed, 1 skipped: no tables written" in out
    assert "run the same command again: it resumes" in out
    assert f"FAILED {failed[0]}" in out

    subjects = {}
    for raw in smtp_server.messages:
        msg = email.message_from_bytes(raw, policy=policy.default)
        subjects[msg["Subject"]] = msg
    assert set(subjects) == {"[coop_b2n] Training Tasks FAILED!", "[zs_all] Training Tasks FINISHED!"}
    body = subjects["[coop_b2n] Training Tasks FAILED!"].get_body(("plain",)).get_content()
    assert "RuntimeError: fake failure" in body and "exit code 3" in body
    zs = subjects["[zs_all] Training Tasks FINISHED!"]
    assert any(p.get_content_type() == "image/png" for p in zs.walk())

    # A rerun (the failure fixed) runs only the failed job and its skipped dependent.
    monkeypatch.delenv("FAKE_TRAIN_FAIL")
    assert parallel_runner.main(["--configs", str(sweep), "--poll", "0.05", "--no-mail"]) == 0
    launches = dict(ledger_rows(ledger, "SELECT j.output_dir, COUNT(a.id) FROM jobs j JOIN attempts a ON a.key=j.key GROUP BY j.key"))
    assert launches[failed[0]] == 2 and launches[skipped[0]] == 1
    assert sum(launches.values()) == 9 + 2  # 9 launches, then the failed job and its dependent
    acc = pd.read_csv(acc_csv).set_index("dataset")
    assert acc[["base_acc_pct_seed1", "base_acc_pct_seed2", "H_pct"]].notna().all().all()
    assert (tmp_path / "results/cost/coop_b2n/b2n-CoOp-vit_b16.csv").is_file()
    assert (tmp_path / "results/acc/b2n-accuracy_vs_training_time.png").is_file()


def test_the_logged_command_is_the_one_that_ran_and_can_be_pasted(tmp_path, fake_env):
    task = {"train": {"trainer": "CoOp", "cfg": "vit_b16", "seeds": [1], "opts": ["OPTIM.MAX_EPOCH", "2"]},
            "data": {"datasets_base_to_new": ["dtd"]}}
    sweep = write_sweep(tmp_path / "sweep.py", sweep_base(tmp_path), {"t": task})
    out = run_runner(sweep)
    assert out.returncode == 0, out.stderr[-3000:]
    starts = dict(re.findall(r"Start (\S+) on cpu#\d \(attempt 1\): (.*)", out.stderr))
    _, evaluate = expand_task(build(sweep_base(tmp_path), {"t": task})[0]).jobs
    logged = starts[evaluate.output_dir]
    assert "--load-epoch 2" in logged and "last" not in logged  # the epoch its training run saved
    ran = json.loads((Path(evaluate.output_dir) / "argv.jsonl").read_text().splitlines()[-1])
    assert shlex.split(logged) == ["CUDA_VISIBLE_DEVICES=", *ran]
    assert logged in (Path(evaluate.output_dir) / "job_output.txt").read_text()
    # Pasted into a shell in the repository root, it runs the same thing again.
    assert subprocess.run(["bash", "-c", logged], cwd=REPO_ROOT, capture_output=True).returncode == 0
    assert json.loads((Path(evaluate.output_dir) / "argv.jsonl").read_text().splitlines()[-1]) == ran
    # Progress on a non-TTY stderr: a line per finished job, with the time left once one job is done.
    assert re.search(r"Done \S+ in [\d.]+s \[1/2 done\] ETA \S+", out.stderr)
    assert re.search(r"Done \S+ in [\d.]+s \[2/2 done\]\n", out.stderr)


def test_progress_estimates_the_time_left_from_finished_jobs(tmp_path):
    plan = expand_task(build(sweep_base(tmp_path), {"t": {"train": {"trainer": "CoOp", "cfg": "vit_b16",
                                                                    "seeds": [1, 2]},
                                                          "data": {"datasets_base_to_new": ["dtd", "eurosat"]}}})[0])
    trains = [j for j in plan.jobs if j.trains]
    evals = [j for j in plan.jobs if not j.trains]
    progress = Progress(plan.jobs, parallel=2)
    assert progress.line() == "[0/8 done] ETA ? (no job finished yet)"
    progress.settle(trains[0], "done", 100.0)
    # Left: 3 trainings of 100 s and 4 evaluations (none finished yet: 100 s each), on 2 slots.
    assert progress.eta_s({}) == (3 * 100 + 4 * 100) / 2
    progress.settle(evals[0], "done", 10.0)
    progress.settle(trains[1], "failed")
    # 2 trainings (one running for 30 s already) and 3 evaluations of 10 s.
    assert progress.eta_s({trains[2].key: 30.0}) == (100 + 70 + 3 * 10) / 2
    assert progress.line({trains[2].key: 30.0}) == f"[2/8 done, 1 failed] ETA {format_duration(100.0)}"
    assert [format_duration(s) for s in (4.24, 45, 200, 7500)] == ["4.2s", "45s", "3m20s", "2h05m"]


def test_usage_error_fails_at_once_and_other_failures_are_retried(tmp_path, fake_env):
    task = {"train": {"mode": "all", "trainer": "CoOp", "cfg": "vit_b16", "seeds": [1], "opts": ["OPTIM.MAX_EPOCH", "1"]},
            "data": {"datasets_all": ["dtd", "eurosat"]}}
    sweep = write_sweep(tmp_path / "sweep.py", sweep_base(tmp_path, runner={"retries": 2}), {"t": task})
    out = run_runner(sweep, env={"FAKE_TRAIN_FAIL": "/dtd/", "FAKE_TRAIN_FAIL_CODE": "2"})
    assert out.returncode == 1
    ledger = tmp_path / "outputs/runner_ledger.sqlite"
    attempts = dict(ledger_rows(ledger, "SELECT j.output_dir, COUNT(a.id) FROM jobs j JOIN attempts a ON a.key=j.key "
                                        "GROUP BY j.key"))
    assert sorted(attempts.values()) == [1, 1]  # the usage error once; eurosat succeeded
    assert "a usage error: not retried" in out.stderr
    assert not (tmp_path / "results").exists()  # the task has a failed job: no tables
    out = run_runner(sweep, "--fresh", env={"FAKE_TRAIN_FAIL": "/dtd/", "FAKE_TRAIN_FAIL_CODE": "3"})
    attempts = dict(ledger_rows(ledger, "SELECT j.output_dir, COUNT(a.id) FROM jobs j JOIN attempts a ON a.key=j.key "
                                        "GROUP BY j.key"))
    assert sorted(attempts.values()) == [1, 3]  # any other failure: 1 + 2 retries


def test_zero_shot_reference_columns_come_from_the_ledger(tmp_path, fake_env):
    data = {"datasets_base_to_new": ["dtd", "eurosat"]}
    tasks = {"coop": {"train": {"trainer": "CoOp", "cfg": "vit_b16", "seeds": [1, 2], "opts": ["OPTIM.MAX_EPOCH", "2"]},
                      "data": data},
             "zs": {"train": {"trainer": "ZeroshotCLIP", "cfg": "CoOp/vit_b16", "eval_only": True, "seeds": [1, 2]},
                    "data": data}}
    sweep = write_sweep(tmp_path / "sweep.py", sweep_base(tmp_path), tasks)
    assert run_runner(sweep, "--cfg", "coop").returncode == 0
    coop_csv = tmp_path / "results/acc/coop/b2n-CoOp-vit_b16.csv"
    assert not any(c.startswith("zs_") for c in pd.read_csv(coop_csv).columns)  # no zero-shot run yet
    # The whole sweep: coop's tables are written at once (its jobs are done), then again once zs finished.
    out = run_runner(sweep)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Task coop: tables written again with the zero-shot reference" in out.stderr
    coop = pd.read_csv(coop_csv).set_index("dataset")
    zs = pd.read_csv(tmp_path / "results/acc/zs/b2n-ZeroshotCLIP-vit_b16.csv").set_index("dataset")
    assert list(coop.columns[-3:]) == ["zs_base_acc_pct", "zs_new_acc_pct", "zs_H_pct"]
    for column in ("base_acc_pct", "new_acc_pct", "H_pct"):
        pd.testing.assert_series_equal(coop[f"zs_{column}"], zs[column], check_names=False)
    assert not any(c.startswith("zs_") for c in zs.columns)  # zero-shot is not its own reference
