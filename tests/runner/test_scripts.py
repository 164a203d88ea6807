"""scripts/<method>/*.sh build the runner's runs and paths, with DATA and on the demo world (checked with
DRY_RUN=1), and one real demo run goes through a script end to end."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

import configs
from runner.config import REPO_ROOT, build_task
from runner.tasks import Job, expand_task

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

METHODS = ["coop", "zsclip", "skip_tuning", "ft_clip", "cocoop", "kgcoop", "maple", "promptsrc", "taskres",
           "clip_adapter", "dept"]
# The runner task a method's scripts use, where it is not the folder's name (DePT: its default host, CoOp).
TASKS = {"dept": "coop_dept"}
SCRIPTS = ["base2new_train.sh", "base2new_test.sh", "xd_train.sh", "xd_test.sh", "few_shot.sh"]
# Methods without a base-to-new protocol (TaskRes: its classifier is per class).
NO_B2N = {"taskres"}
# The runner task of `few_shot.sh dtd 1 4` where the shot count picks one (the originals' shots/epochs tables).
FEW_SHOT_TASK = {"clip_adapter": "clip_adapter_all_ep100"}


def scripts_of(method: str) -> list[str]:
    return [s for s in SCRIPTS if not (method in NO_B2N and s.startswith("base2new"))]
# The script environment variables a test must not inherit from the shell that runs pytest.
SCRIPT_ENV = ("DATA", "OUTPUT", "SHOTS", "LOADEP", "XD_SOURCE", "DRY_RUN", "DEPT_HOST")
DEMO_BANNER = "No DATA set: running on the demo world ("


def script(method: str, name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    return subprocess.run(["bash", os.path.join("scripts", method, name), *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, env={**clean, "PYTHON": sys.executable, **env})


def dry_run(method: str, name: str, *args: str, **env: str) -> tuple[str, str]:
    """(command, stderr) of a DRY_RUN=1 call."""
    out = script(method, name, *args, DRY_RUN="1", **env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip(), out.stderr


def test_every_method_has_every_protocol_script():
    for method in METHODS:
        for name in scripts_of(method):
            path = os.path.join(REPO_ROOT, "scripts", method, name)
            assert os.access(path, os.X_OK), path
            assert subprocess.run(["bash", "-n", path]).returncode == 0
    # Methods with their own protocol (DyT: VTAB-1K) and its scripts instead of the five.
    own = {"dyt": ("method.sh", "vtab.sh", "vtab_all.sh")}
    for method, names in own.items():
        for name in names:
            assert subprocess.run(["bash", "-n", os.path.join(REPO_ROOT, "scripts", method, name)]).returncode == 0
    n_own = sum(len(names) for names in own.values())
    expected = sum(len(scripts_of(m)) + 1 for m in METHODS) + n_own  # + method.sh
    assert len(glob.glob(os.path.join(REPO_ROOT, "scripts", "*", "*.sh"))) == expected


def test_dyt_vtab_script_builds_the_runners_run():
    out, _ = dry_run("dyt", "vtab.sh", "vtab_eurosat", "1", "MODEL.BACKBONE.NAME", "vit.pth", DATA="/data")
    assert out == (
        "python train.py --root /data --seed 1 --trainer DyT --dataset-config-file configs/datasets/vtab_eurosat.yaml "
        "--config-file configs/trainers/DyT/vit_b16_vtab.yaml --output-dir "
        "outputs/dyt_vtab/DyT/vtab_eurosat/shots-1/vit_b16_vtab/seed1 DATASET.NUM_SHOTS -1 "
        "DATASET.SUBSAMPLE_CLASSES all MODEL.BACKBONE.NAME weights/jx_vit_base_patch16_224_in21k-e5005f0a.pth "
        "MODEL.BACKBONE.NAME vit.pth")


def minimal_command(job: Job) -> str:
    """The runner's command with each KEY once, at its first place, with its last value (yacs: later wins).
    The runner passes DATASET.NUM_SHOTS 16 and then the grid's shots; a script passes the shots once."""
    argv = [a.replace(os.path.join(REPO_ROOT, ""), "") for a in job.argv]
    start = argv.index("DATASET.NUM_SHOTS")
    opts = dict(zip(argv[start::2], argv[start + 1::2]))
    return " ".join(["python", *argv[:start], *(t for kv in opts.items() for t in kv)])


def runner_job(task_name: str, role: str, dataset: str, seed: int, grid: str = "") -> Job:
    plan = expand_task(build_task(configs, task_name))
    return next(j for j in plan.jobs if (j.role, j.dataset, j.seed, j.grid) == (role, dataset, seed, grid))


def relative(path: str) -> str:
    return os.path.relpath(path, REPO_ROOT)


# The demo dataset each real name in these calls stands for (runner/script_settings.py's rule).
ON_DEMO = {"caltech101": "demo_shapes", "imagenet": "demo_shapes", "imagenet_a": "demo_shapes_sketch",
           "dtd": "demo_shapes"}


@pytest.mark.parametrize("world", ["data", "demo"])
@pytest.mark.parametrize("method", METHODS)
def test_scripts_match_the_runner(method, world, monkeypatch):
    """Every protocol script gives the runner's command (each key once) and output folder."""
    monkeypatch.chdir(REPO_ROOT)  # the runner's output roots are relative to the working directory
    env = {"DATA": "/d"} if world == "data" else {}
    if world == "data":
        monkeypatch.setenv("DATA", "/d")
    else:
        monkeypatch.delenv("DATA", raising=False)
    ds = (lambda name: name) if world == "data" else ON_DEMO.__getitem__
    task = TASKS.get(method, method)
    xd, fs = f"{task}_xd", FEW_SHOT_TASK.get(method, f"{task}_all")
    # zero-shot has no shot grid: its few-shot script takes no shot count
    few_shot = (("few_shot.sh", "dtd", "1"), "") if method == "zsclip" else (("few_shot.sh", "dtd", "1", "4"), "shot=4")
    calls = [] if method in NO_B2N else [
        (("base2new_train.sh", "caltech101", "1"), runner_job(task, "train_base", ds("caltech101"), 1)),
        (("base2new_test.sh", "caltech101", "2"), runner_job(task, "test_new", ds("caltech101"), 2)),
    ]
    calls += [
        (("xd_train.sh", "1"), runner_job(xd, "xd_source", ds("imagenet"), 1)),
        (("xd_test.sh", "imagenet_a", "1"), runner_job(xd, "xd_target", ds("imagenet_a"), 1)),
        (few_shot[0], runner_job(fs, "all", ds("dtd"), 1, few_shot[1])),
    ]
    for args, job in calls:
        command, err = dry_run(method, *args, **env)
        assert command == minimal_command(job), args
        assert f"--output-dir {relative(job.output_dir)} " in command
        if world == "demo":
            assert err.startswith(DEMO_BANNER) and err.rstrip().endswith(f"outputs under {relative(job.output_dir)}")
        else:
            assert err == ""


@pytest.mark.parametrize("method,dataset,shots,task", [
    ("taskres", "dtd", "16", "taskres_all_ep200"), ("taskres", "imagenet", "2", "taskres_imagenet_all"),
    ("taskres", "oxford_flowers", "8", "taskres_flowers_all_ep200"), ("clip_adapter", "dtd", "1", "clip_adapter_all"),
    ("clip_adapter", "dtd", "16", "clip_adapter_all_ep200"), ("clip_adapter", "imagenet", "8", "clip_adapter_imagenet_all"),
])
def test_few_shot_picks_the_task_of_the_originals_table(method, dataset, shots, task, monkeypatch):
    """TaskRes and CLIP-Adapter: the dataset and the shot count pick the epochs, LR and residual scale."""
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("DATA", "/d")
    command, _ = dry_run(method, "few_shot.sh", dataset, "1", shots, DATA="/d")
    assert command == minimal_command(runner_job(task, "all", dataset, 1, f"shot={shots}"))


def test_exact_commands_with_data_and_on_the_demo_world():
    data, err = dry_run("coop", "few_shot.sh", "dtd", "1", "4", DATA="/d")
    assert data == ("python train.py --root /d --seed 1 --trainer CoOp --dataset-config-file configs/datasets/dtd.yaml "
                    "--config-file configs/trainers/CoOp/vit_b16_ep100.yaml "
                    "--output-dir outputs/coop_all/shot=4/CoOp/dtd/shots4/vit_b16_ep100/seed1 "
                    "DATASET.NUM_SHOTS 4 DATASET.SUBSAMPLE_CLASSES all")
    assert err == ""
    demo, err = dry_run("coop", "base2new_train.sh", "caltech101", "1")
    out_dir = "outputs/demo/coop/train_base/CoOp/demo_shapes/shots16/demo/seed1"
    assert demo == ("python train.py --seed 1 --trainer CoOp --dataset-config-file configs/datasets/demo_shapes.yaml "
                    f"--config-file configs/trainers/CoOp/demo.yaml --output-dir {out_dir} "
                    "DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base MODEL.BACKBONE.NAME demo DATALOADER.NUM_WORKERS 0")
    assert err.splitlines()[0] == (f"{DEMO_BANNER}dataset demo_shapes instead of caltech101, demo CLIP, "
                                   f"config CoOp/demo: fp32, 10 epochs); outputs under {out_dir}")


@pytest.mark.parametrize("host", ["coop", "cocoop", "kgcoop", "maple"])
def test_dept_scripts_take_the_host_from_dept_host(host, monkeypatch):
    """DEPT_HOST picks the original's trainer name, config and the runner's <host>_dept task."""
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("DATA", "/d")
    command, _ = dry_run("dept", "base2new_train.sh", "caltech101", "1", DATA="/d", DEPT_HOST=host)
    assert command == minimal_command(runner_job(f"{host}_dept", "train_base", "caltech101", 1))
    command, _ = dry_run("dept", "few_shot.sh", "dtd", "1", "4", DATA="/d", DEPT_HOST=host)
    assert command == minimal_command(runner_job(f"{host}_dept_all", "all", "dtd", 1, "shot=4"))
    assert command.endswith("TRAINER.DEPT.BASE_MODE always")  # the head trains on all classes
    bad = script("dept", "base2new_train.sh", "caltech101", "1", DRY_RUN="1", DEPT_HOST="clip")
    assert bad.returncode == 2 and "DEPT_HOST must be one of coop, cocoop, kgcoop, maple" in bad.stderr


def test_a_demo_dataset_is_used_as_given():
    command, err = dry_run("skip_tuning", "xd_test.sh", "demo_symbols", "2", XD_SOURCE="demo_symbols")
    assert ("--dataset-config-file configs/datasets/demo_symbols.yaml --config-file configs/trainers/SkipTuning/demo.yaml "
            "--output-dir outputs/demo/skip_tuning_xd/SkipTuning/demo_symbols/shots16/demo/seed2 "
            "--model-dir outputs/demo/skip_tuning_xd/SkipTuning/demo_symbols/shots16/demo/seed2 ") in command
    assert err.startswith(f"{DEMO_BANNER}dataset demo_symbols as given, source dataset demo_symbols as given, ")


@pytest.mark.parametrize("env", [{"DATA": "/d"}, {}], ids=["data", "demo"])
def test_shots_given_as_an_override_name_the_folder_once(env):
    """DATASET.NUM_SHOTS among the KEY VALUE overrides is the only shot count in the command and the folder."""
    command, _ = dry_run("ft_clip", "base2new_test.sh", "caltech101", "1", "DATASET.NUM_SHOTS", "2", SHOTS="8", **env)
    assert command.count("DATASET.NUM_SHOTS") == 1 and command.endswith("DATASET.NUM_SHOTS 2")
    assert command.count("/shots2/") == 2 and "/shots8/" not in command  # output and model folders
    command, _ = dry_run("ft_clip", "few_shot.sh", "dtd", "1", "4", "DATASET.NUM_SHOTS", "2", **env)
    assert command.count("DATASET.NUM_SHOTS") == 1 and "/shot=2/" in command and "/shots2/" in command


def test_output_overrides_the_demo_output_root(tmp_path):
    command, err = dry_run("zsclip", "xd_train.sh", "1", OUTPUT=str(tmp_path))
    assert f"--output-dir {tmp_path}/zsclip_xd/ZeroshotCLIP/demo_shapes/shots16/demo/seed1 " in command
    assert err.rstrip().endswith(f"outputs under {tmp_path}/zsclip_xd/ZeroshotCLIP/demo_shapes/shots16/demo/seed1")


def test_a_failing_settings_helper_stops_the_script():
    out = script("coop", "base2new_train.sh", "dtd", "1", DRY_RUN="1", PYTHON="false")
    assert out.returncode != 0 and out.stdout == ""


@pytest.mark.slow
def test_a_real_demo_run_through_a_script(tmp_path):
    """coop base2new_train.sh on the demo world, 1 epoch of 1 shot: results.json lands in the runner's folder,
    and base2new_test.sh then loads that run's checkpoint."""
    env = {"CLIP_ADAPT_DEMO_DATA": str(tmp_path / "data"), "OUTPUT": str(tmp_path / "out")}
    overrides = ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1"]
    run_dir = tmp_path / "out/coop/train_base/CoOp/demo_shapes/shots1/demo/seed1"
    clean = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    out = subprocess.run(["bash", "scripts/coop/base2new_train.sh", "caltech101", "1", *overrides], cwd=REPO_ROOT,
                         env={**clean, "PYTHON": sys.executable, **env}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
    assert out.stdout.splitlines()[0] == (f"{DEMO_BANNER}dataset demo_shapes instead of caltech101, demo CLIP, "
                                          f"config CoOp/demo: fp32, 1 epoch); outputs under {run_dir}")
    record = json.loads((run_dir / "results.json").read_text())
    assert (record["trainer"], record["dataset"], record["subsample"], record["shots"], record["epochs"],
            record["backbone"], record["num_classes"]) == ("CoOp", "DemoShapes", "base", 1, 1, "demo", 24)
    command, _ = dry_run("coop", "base2new_test.sh", "caltech101", "1", *overrides, **env)
    assert f"--model-dir {run_dir} --load-epoch 1 --eval-only" in command
