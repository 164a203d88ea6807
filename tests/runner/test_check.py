"""Every job is checked before the first one starts (one `--check-commands` call for the whole sweep),
and GPU ids that cannot be used are errors before anything starts."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.config import ConfigError, check_gpu_ids
from tests.runner.conftest import build, ledger_rows, run_runner, sweep_base, write_sweep

COOP = {"train": {"trainer": "CoOp", "cfg": "vit_b16", "seeds": [1, 2], "opts": ["OPTIM.MAX_EPOCH", "1"]},
        "data": {"datasets_base_to_new": ["dtd", "eurosat"]}}


def nothing_started(root: Path) -> None:
    """No run dir, no ledger, no table: the sweep stopped before touching its output tree."""
    assert not (root / "outputs").exists()
    assert not (root / "results").exists()


def test_real_train_py_finds_every_problem_before_anything_starts(tmp_path):
    # runner.script is the real train.py: its own --check-commands judges the commands.
    base = sweep_base(tmp_path, data_root=str(tmp_path), runner={"script": "train.py"})
    tasks = {
        "coop": COOP,
        "typo": {**COOP, "train": {**COOP["train"], "trainer": "CoOP", "cfg": "CoOp/vit_b16"}},  # trainer name typo
        "badkey": {**COOP, "grid_search": {"params": [{"name": "TRAINER.COOP.N_CTXX", "alias": "ctx",
                                                       "values": [4, 8]}]}},
    }
    sweep = write_sweep(tmp_path / "sweep.py", base, tasks)
    out = run_runner(sweep)
    assert out.returncode == 2, out.stderr[-3000:]
    err = out.stderr
    assert "Traceback" not in err and "nothing was launched" in err
    assert "- task 'typo' (8 jobs): " in err and "CoOP" in err and "Did you mean: CoOp" in err  # once for 8 jobs
    assert "- task 'badkey' (16 jobs): " in err and "TRAINER.COOP.N_CTXX" in err and "N_CTX" in err
    assert "task 'coop'" not in err  # the good task has no problem
    assert "job: python train.py" in err and "--trainer CoOP" in err  # a command that has the problem
    nothing_started(tmp_path)


def test_config_problems_of_every_task_are_reported_together(tmp_path):
    tasks = {"a": {**COOP, "data": {"datasets_base_to_new": ["dtdd"]}},
             "b": {**COOP, "train": {**COOP["train"], "mode": "b2m"}}}
    with pytest.raises(ConfigError) as info:
        build(sweep_base(tmp_path), tasks)
    msg = str(info.value)
    assert msg.startswith("2 problems") and "configs/datasets/dtdd.yaml" in msg and "'b2m'" in msg


def test_one_check_call_for_the_whole_sweep_then_it_runs(tmp_path, fake_env):
    log = tmp_path / "checks.txt"
    tasks = {"coop": COOP, "zs": {"train": {"mode": "all", "trainer": "ZeroshotCLIP", "cfg": "CoOp/vit_b16",
                                            "eval_only": True, "seeds": [1]}, "data": {"datasets_all": ["dtd"]}}}
    sweep = write_sweep(tmp_path / "sweep.py", sweep_base(tmp_path), tasks,
                        [dict(gpu_ids=[], tasks=["coop"]), dict(gpu_ids=[], tasks=["zs"])])
    out = run_runner(sweep, env={"FAKE_CHECK_LOG": str(log)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(log.read_text().splitlines()) == 1  # one subprocess checked all 9 jobs of both pipelines
    assert ledger_rows(tmp_path / "outputs/runner_ledger.sqlite", "SELECT COUNT(*) FROM attempts") == [(9,)]


def test_failed_check_names_task_and_command_and_launches_nothing(tmp_path, fake_env):
    sweep = write_sweep(tmp_path / "sweep.py", sweep_base(tmp_path), {"coop": COOP})
    out = run_runner(sweep, env={"FAKE_CHECK_FAIL": "eurosat"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "1 problem(s) found before starting; nothing was launched" in out.stderr
    assert "- task 'coop' (4 jobs): fake check failure: eurosat" in out.stderr
    assert "configs/datasets/eurosat.yaml" in out.stderr
    nothing_started(tmp_path)


def test_a_script_without_the_check_protocol_is_an_error(tmp_path, fake_env):
    old = tmp_path / "old_train.py"
    old.write_text("import sys\nsys.exit(0)\n")  # accepts anything, answers nothing
    sweep = write_sweep(tmp_path / "sweep.py", sweep_base(tmp_path, runner={"script": str(old)}), {"coop": COOP})
    out = run_runner(sweep)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "must support --check-commands" in out.stderr and "answered 0 of 8 lines" in out.stderr
    nothing_started(tmp_path)


def test_gpu_ids_from_the_command_line_must_exist(tmp_path):
    tasks = build(sweep_base(tmp_path), {"t": COOP}, pipeline=[dict(gpu_ids=[0], tasks=["t"])])
    # The sweep file's default gpu_ids=[0] on a machine without CUDA: CPU slots.
    assert check_gpu_ids(tasks, device_count=0) is False
    # The same id asked for with --gpus on that machine is an error, and so is an id past the count.
    with pytest.raises(ConfigError, match=r"--gpus 0 asks for GPU\(s\), but this machine has no usable CUDA"):
        check_gpu_ids(tasks, device_count=0, explicit=True)
    tasks = build(sweep_base(tmp_path), {"t": COOP}, gpu_ids=[2])
    with pytest.raises(ConfigError, match=r"GPU id\(s\) \[2\] \(--gpus\).*2 CUDA device"):
        check_gpu_ids(tasks, device_count=2, explicit=True)
    assert check_gpu_ids(tasks, device_count=3, explicit=True) is True


def test_cli_gpus_beyond_this_machine_is_an_error(tmp_path, fake_env):
    # 99: no machine has it, with CUDA (id past the count) or without (no CUDA at all).
    sweep = write_sweep(tmp_path / "sweep.py", sweep_base(tmp_path), {"coop": COOP})
    out = run_runner(sweep, "--gpus", "99")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and "99" in out.stderr and "--gpus" in out.stderr
    nothing_started(tmp_path)


def test_default_gpu_ids_without_cuda_run_on_cpu_slots(tmp_path, fake_env, monkeypatch, capsys):
    import torch

    import parallel_runner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a laptop, whatever this machine is
    task = {"train": {"mode": "all", "trainer": "CoOp", "cfg": "vit_b16", "seeds": [1], "opts": ["OPTIM.MAX_EPOCH", "1"]},
            "data": {"datasets_all": ["dtd"]}}
    sweep = write_sweep(tmp_path / "sweep.py", sweep_base(tmp_path), {"t": task}, [dict(gpu_ids=[0], tasks=["t"])])
    assert parallel_runner.main(["--configs", str(sweep), "--no-mail", "--poll", "0.05"]) == 0
    err = capsys.readouterr().err
    assert "Running ['t'] on 2 CPU worker slot(s) (no CUDA on this machine: gpu_ids [0] not used)" in err
    assert ledger_rows(tmp_path / "outputs/runner_ledger.sqlite", "SELECT slot FROM attempts") == [("cpu#0",)]
