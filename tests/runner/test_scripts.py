"""scripts/<method>/*.sh build exactly the runner's commands and paths (checked with DRY_RUN=1)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

import configs
from runner.config import REPO_ROOT
from runner.tasks import expand_task
from tests.runner.conftest import build, sweep_base

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

METHODS = ["coop", "zsclip", "skip_tuning", "ft_clip"]
SCRIPTS = ["base2new_train.sh", "base2new_test.sh", "xd_train.sh", "xd_test.sh", "few_shot.sh"]


def script(method: str, name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join("scripts", method, name), *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, env={**os.environ, **env})


def test_every_method_has_every_protocol_script():
    for method in METHODS:
        for name in SCRIPTS:
            path = os.path.join(REPO_ROOT, "scripts", method, name)
            assert os.access(path, os.X_OK), path
            assert subprocess.run(["bash", "-n", path]).returncode == 0
    assert len(glob.glob(os.path.join(REPO_ROOT, "scripts", "*", "*.sh"))) == len(METHODS) * (len(SCRIPTS) + 1)  # + method.sh


def runner_commands(tmp_path, method: str, mode: str, **train) -> list[str]:
    name = method if mode == "b2n" else f"{method}_{mode}"
    task = getattr(configs, name)
    base = sweep_base(tmp_path, data_root="/d", output={"root": "outputs"}, runner={"script": "train.py"})
    (t,) = build(base, {name: {**task, "train": {**task["train"], "seeds": [1], **train}}})
    prefix = os.path.join(os.getcwd(), "")
    return [j.command().replace(prefix, "") for j in expand_task(t).jobs]


@pytest.mark.parametrize("method", METHODS)
def test_scripts_match_the_runner(tmp_path, method, monkeypatch):
    monkeypatch.delenv("DATA", raising=False)
    env = {"DATA": "/d", "DRY_RUN": "1"}
    b2n = runner_commands(tmp_path, method, "b2n", **{})
    train = [c for c in b2n if "/train_base/" in c and "--seed 1 " in c and "caltech101.yaml" in c]
    test = [c for c in b2n if "/test_new/" in c and "caltech101.yaml" in c]
    assert script(method, "base2new_train.sh", "caltech101", "1", **env).stdout.strip() == train[0]
    assert script(method, "base2new_test.sh", "caltech101", "1", **env).stdout.strip() == test[0]
    xd = runner_commands(tmp_path, method, "xd")
    assert script(method, "xd_train.sh", "1", **env).stdout.strip() == xd[0]
    target = next(c for c in xd if "imagenet_a.yaml" in c)
    assert script(method, "xd_test.sh", "imagenet_a", "1", **env).stdout.strip() == target
    fs = runner_commands(tmp_path, method, "all")
    if method == "zsclip":  # no shot grid for zero-shot
        assert script(method, "few_shot.sh", "dtd", "1", **env).stdout.strip() == next(c for c in fs if "dtd.yaml" in c)
        return
    four = next(c for c in fs if "shot=4/" in c and "dtd.yaml" in c)
    assert script(method, "few_shot.sh", "dtd", "1", "4", **env).stdout.strip() == four


def test_scripts_need_a_data_root(monkeypatch):
    monkeypatch.delenv("DATA", raising=False)
    out = script("coop", "base2new_train.sh", "dtd", "1")
    assert out.returncode != 0 and "Set DATA to your data root" in out.stderr
