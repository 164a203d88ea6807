"""Helpers for runner tests: sweep files built from configs.py's base, run with a stand-in train.py."""
from __future__ import annotations

import copy
import os
import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import pytest

from runner.config import REPO_ROOT, build_pipeline, deep_merge

FAKE_SCRIPT = "tests/runner/fake_train.py"


def repo_base() -> dict:
    import configs

    return copy.deepcopy(configs.base)


def sweep_base(tmp_path: Path, data_root: str | None = "/data/none", **overrides) -> dict:
    """configs.py's base with outputs under tmp_path, the stand-in trainer, 2 CPU workers, no mail."""
    base = repo_base()
    base = deep_merge(base, {
        "data": {"root": data_root},
        "output": {"root": str(tmp_path / "outputs"), "result": str(tmp_path / "results/acc"),
                   "cost": str(tmp_path / "results/cost")},
        "runner": {"script": FAKE_SCRIPT, "cpu_workers": 2, "retries": 0},
    })
    return deep_merge(base, overrides)


def module_of(base: dict, tasks: dict, pipeline: list | None = None) -> types.SimpleNamespace:
    ns = types.SimpleNamespace(base=base, **tasks)
    ns.pipeline = pipeline if pipeline is not None else [dict(gpu_ids=[], tasks=list(tasks))]
    return ns


def build(base: dict, tasks: dict, pipeline: list | None = None, only=None, gpu_ids=None):
    return build_pipeline(module_of(base, tasks, pipeline), only, gpu_ids)


def write_sweep(path: Path, base: dict, tasks: dict, pipeline: list | None = None) -> Path:
    lines = [f"base = {base!r}"] + [f"{k} = {v!r}" for k, v in tasks.items()]
    pipeline = pipeline if pipeline is not None else [dict(gpu_ids=[], tasks=list(tasks))]
    lines.append(f"pipeline = {pipeline!r}")
    path.write_text("\n".join(lines) + "\n")
    return path


def runner_cmd(sweep: Path, *extra: str) -> list[str]:
    return [sys.executable, os.path.join(REPO_ROOT, "parallel_runner.py"), "--configs", str(sweep),
            "--no-mail", "--poll", "0.05", *extra]


def run_runner(sweep: Path, *extra: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(runner_cmd(sweep, *extra), cwd=REPO_ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def ledger_rows(path: Path, sql: str):
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.05")
    monkeypatch.delenv("FAKE_TRAIN_FAIL", raising=False)
    monkeypatch.delenv("DATA", raising=False)
