"""A whole sweep in-process with the stand-in train.py: CSVs, plots, failure summary and mail."""
from __future__ import annotations

import email
from email import policy

import pandas as pd

import parallel_runner
from tests.runner.conftest import ledger_rows, sweep_base, write_sweep
from tests.runner.test_mail import smtp_server  # noqa: F401  (fixture)


def test_sweep_isolates_a_failure_and_mails_the_summary(tmp_path, fake_env, monkeypatch, smtp_server):  # noqa: F811
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

    acc = pd.read_csv(tmp_path / "results/acc/coop_b2n/b2n-CoOp-vit_b16.csv").set_index("dataset")
    assert pd.isna(acc.loc["eurosat", "base_acc_seed1"]) and not pd.isna(acc.loc["eurosat", "base_acc_seed2"])
    assert not pd.isna(acc.loc["dtd", "H"]) and pd.isna(acc.loc["average", "H"])
    for shot in (1, 2):
        assert (tmp_path / f"results/acc/zs_all/all-ZeroshotCLIP-vit_b16-shot={shot}.csv").is_file()
    assert (tmp_path / "results/acc/zs_all/all-ZeroshotCLIP-vit_b16-shot.png").is_file()
    assert not (tmp_path / "results/acc/b2n-accuracy_vs_training_time.png").exists()  # the average has a hole

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
    assert (tmp_path / "results/acc/b2n-accuracy_vs_training_time.png").is_file()
