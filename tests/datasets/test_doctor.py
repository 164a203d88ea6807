"""The dataset doctor: OK/WARN/ERROR lines, exit status, no writes; empty splits stop training."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import datasets  # noqa: F401  (registers every dataset)
from datasets.doctor import check_dataset, dataset_config_names, resolve_dataset_name, run_doctor
from engine.data import DATASET_REGISTRY, DataManager, DatasetBase, DatasetError, Datum, build_dataset
from engine.errors import ConfigValueError, MissingFileError
from engine.registry import UnknownNameError
from tests.factories.datasets import caltech_cfg, make_caltech101_tree
from tests.factories.vtab_custom import make_image_folder, make_imagenet_tree, make_vtab_task, small_cfg

REPO = Path(__file__).resolve().parents[2]


def doctor(root, *names, sample=20, custom_dir=""):
    out = io.StringIO()
    status = run_doctor(str(root), list(names) or None, sample=sample, out=out, custom_dir=custom_dir)
    return status, out.getvalue().splitlines()


def custom_folder_cfg(root, folder="my_data"):
    cfg = small_cfg(root, "Custom")
    cfg.DATASET.CUSTOM.DIR = folder
    return cfg


def snapshot(root) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(root).rglob("*")}


def test_healthy_caltech_is_ok_and_untouched(tmp_path):
    root = make_caltech101_tree(tmp_path)
    before = snapshot(root)
    status, lines = doctor(root)
    assert status == 0
    assert lines[0] == f"Found 1 known dataset folder(s) under {root}: Caltech101"
    assert "OK Caltech101 (classes=6 train=24 val=12 test=12)" in lines
    # Counts differ from the official ones: warnings only.
    assert "WARN Caltech101: train has 24 images, the official count is 4,128 (fine for a subset)" in lines
    assert not any(line.startswith("ERROR") for line in lines)
    assert snapshot(root) == before


def test_planted_missing_image_is_an_error(tmp_path):
    root = make_caltech101_tree(tmp_path)
    missing = root / "caltech-101" / "101_ObjectCategories" / "anchor" / "image_0003.jpg"
    missing.unlink()
    status, lines = doctor(root, "Caltech101")
    assert status == 1
    [error] = [line for line in lines if line.startswith("ERROR")]
    assert error.startswith("ERROR Caltech101: ") and str(missing) in error and "DATASETS.md#caltech101" in error


def test_missing_required_folder_and_missing_dataset(tmp_path):
    root = make_caltech101_tree(tmp_path)
    os.rename(root / "caltech-101" / "101_ObjectCategories", root / "caltech-101" / "images")
    status, lines = doctor(root, "Caltech101", "VTAB_cifar")
    assert status == 1
    assert f"ERROR Caltech101: missing {root}/caltech-101/101_ObjectCategories (see DATASETS.md#caltech101)" in lines
    assert any(line.startswith(f"ERROR VTAB_cifar: dataset folder {root}/vtab-1k/cifar not found") for line in lines)


def test_empty_split_is_an_error(tmp_path):
    root = make_caltech101_tree(tmp_path)
    split_file = root / "caltech-101" / "split_zhou_Caltech101.json"
    split = json.loads(split_file.read_text())
    split["test"] = []
    split_file.write_text(json.dumps(split))
    status, lines = doctor(root, "Caltech101")
    assert status == 1
    assert any(line.startswith("ERROR Caltech101:") and "'test'" in line and "empty" in line for line in lines)


def test_missing_generated_split_is_a_warning_and_nothing_is_written(tmp_path):
    root = make_caltech101_tree(tmp_path, with_split_json=False)
    before = snapshot(root)
    status, lines = doctor(root, "Caltech101")
    assert status == 0
    assert any(line.startswith("WARN Caltech101: split file missing: it will be generated on first run") for line in lines)
    assert lines[-1].startswith("OK Caltech101 (layout only")
    assert snapshot(root) == before


def test_unreadable_image_is_an_error(tmp_path):
    root = make_caltech101_tree(tmp_path)
    broken = root / "caltech-101" / "101_ObjectCategories" / "Faces" / "image_0002.jpg"
    broken.write_bytes(b"not a jpeg at all")
    status, lines = doctor(root, "Caltech101", sample=100)
    assert status == 1
    [error] = [line for line in lines if line.startswith("ERROR")]
    assert f"unreadable image {broken}" in error


def test_vtab_ok_and_missing_list_file(tmp_path):
    task_dir = make_vtab_task(tmp_path, "svhn", n_classes=10, n_train800=1, n_val200=1, n_test=1)
    status, lines = doctor(tmp_path)
    assert status == 0 and "OK VTAB_svhn (classes=10 train=20 val=none test=10)" in lines
    os.remove(task_dir / "val200.txt")
    status, lines = doctor(tmp_path, "VTAB_svhn")
    assert status == 1
    assert f"ERROR VTAB_svhn: missing {task_dir}/val200.txt (see DATASETS.md#vtab-1k)" in lines


def test_nothing_found_and_unknown_name_are_user_errors(tmp_path):
    with pytest.raises(MissingFileError, match=f"no known dataset folder under --root {tmp_path}"):
        doctor(tmp_path)
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'Caltech102'. Did you mean: caltech101.*--list"):
        doctor(tmp_path, "Caltech102")
    with pytest.raises(MissingFileError, match="is not a folder"):
        doctor(tmp_path / "nope")


@pytest.mark.parametrize(
    "given, registered",
    [
        ("Caltech101", "Caltech101"),
        ("caltech101", "Caltech101"),
        ("CALTECH101", "Caltech101"),
        ("imagenet_sketch", "ImageNetSketch"),  # the config stem differs from the class name
        ("dtd", "DescribableTextures"),
        ("describabletextures", "DescribableTextures"),
        ("demo_shapes", "DemoShapes"),
        ("VTAB_CIFAR", "VTAB_cifar"),
    ],
)
def test_dataset_names_users_know(given, registered):
    assert resolve_dataset_name(given) == registered


def test_config_names_follow_the_yaml_files():
    names = dataset_config_names()
    assert len(names) == len(list((REPO / "configs" / "datasets").glob("*.yaml")))
    assert names["caltech101"] == "Caltech101" and names["imagenet_a"] == "ImageNetA"


def test_config_name_checks_the_dataset(tmp_path):
    root = make_caltech101_tree(tmp_path)
    status, lines = doctor(root, "caltech101", "CALTECH101")  # one dataset, checked once
    assert status == 0
    assert [line for line in lines if line.startswith("OK")] == ["OK Caltech101 (classes=6 train=24 val=12 test=12)"]


@pytest.fixture
def temp_dataset():
    """Register a throw-away dataset class for one test, then remove it from the registry."""
    registered = []

    def register(cls):
        DATASET_REGISTRY.register(cls)
        registered.append(cls.__name__)
        return cls

    yield register
    for name in registered:
        DATASET_REGISTRY._obj_map.pop(name)


def test_extra_checks_and_write_guard(tmp_path, temp_dataset):
    folder = tmp_path / "toy"
    (folder / "imgs").mkdir(parents=True)
    (folder / "imgs" / "a.jpg").write_bytes((REPO / "tests" / "datasets" / "__init__.py").read_bytes())

    @temp_dataset
    class DoctorToyWriter(DatasetBase):
        dataset_dir = "toy"

        def __init__(self, cfg):
            with open(os.path.join(cfg.DATASET.ROOT, "toy", "cache.json"), "w") as f:
                f.write("{}")

    @temp_dataset
    class DoctorToyChecked(DatasetBase):
        dataset_dir = "toy"
        docs_anchor = "toy-data"

        @classmethod
        def extra_checks(cls, dataset_dir):
            return [f"{dataset_dir}/imgs is flat"]

    report = check_dataset("DoctorToyWriter", str(tmp_path))
    assert report.ok and not report.built
    assert report.warnings == [
        f"building it would write {folder}/cache.json (a generated file); it will be created on the first "
        f"training run, so the split was not checked now"
    ]
    assert not (folder / "cache.json").exists()
    assert check_dataset("DoctorToyChecked", str(tmp_path)).lines() == [
        f"ERROR DoctorToyChecked: {folder}/imgs is flat (see DATASETS.md#toy-data)"
    ]


def test_a_crashing_build_keeps_its_traceback(tmp_path, temp_dataset, capsys):
    (tmp_path / "toy").mkdir()

    @temp_dataset
    class DoctorToyBuggy(DatasetBase):
        dataset_dir = "toy"

        def __init__(self, cfg):
            {}["label"]  # a bug in dataset code, not a data problem

    status, lines = doctor(tmp_path, "DoctorToyBuggy")
    assert status == 1
    assert lines == ["ERROR DoctorToyBuggy: building it failed unexpectedly (KeyError: 'label'); traceback on "
                     "stderr (see DATASETS.md#doctortoybuggy)"]
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'label'" in err


def test_empty_splits_stop_training_in_datamanager(tmp_path, temp_dataset):
    root = make_caltech101_tree(tmp_path)
    split_file = root / "caltech-101" / "split_zhou_Caltech101.json"
    split = json.loads(split_file.read_text())
    split["val"] = []
    split_file.write_text(json.dumps(split))
    with pytest.raises(DatasetError, match=r"split 'val' in .* is missing or empty"):
        DataManager(caltech_cfg(root))

    image = str(root / "caltech-101" / "101_ObjectCategories" / "Faces" / "image_0001.jpg")

    @temp_dataset
    class DoctorToyEmpty(DatasetBase):  # a dataset whose own code lets empty splits through
        dataset_dir = "toy"

        def __init__(self, cfg):
            item = Datum(image, 0, 0, "face")
            super().__init__(train_x=[item], val=[] if cfg.SEED == 1 else None, test=[] if cfg.SEED == 2 else [item])

    with pytest.raises(DatasetError, match=r"DATASET.NAME='DoctorToyEmpty' .*the val split is empty"):
        DataManager(small_cfg(root, "DoctorToyEmpty", seed=1))
    with pytest.raises(DatasetError, match=r"the test split is empty.*datasets.doctor"):
        DataManager(small_cfg(root, "DoctorToyEmpty", seed=2))
    assert DataManager(small_cfg(root, "DoctorToyEmpty", seed=3)).val_loader is None  # no val is fine


def test_imagenet_val_not_in_class_folders(tmp_path):
    if "ImageNet" not in DATASET_REGISTRY:
        pytest.skip("datasets/imagenet.py is not there yet")
    make_imagenet_tree(tmp_path, val_in_class_folders=False)
    status, lines = doctor(tmp_path, "ImageNet")
    assert status == 1
    [error] = [line for line in lines if line.startswith("ERROR")]
    assert error.startswith("ERROR ImageNet: ") and "images/val holds 6 images directly" in error
    assert "DATASETS.md#imagenet" in error


def test_imagenet_healthy_builds_without_writing(tmp_path):
    if "ImageNet" not in DATASET_REGISTRY:
        pytest.skip("datasets/imagenet.py is not there yet")
    base = make_imagenet_tree(tmp_path)
    before = snapshot(tmp_path)
    status, lines = doctor(tmp_path, "ImageNet")
    assert status == 0 and "OK ImageNet (classes=3 train=9 val=6 test=6)" in lines
    assert snapshot(tmp_path) == before and not (base / "preprocessed.pkl").exists()


def test_custom_dataset_reports_ignored_files_and_writes_nothing(tmp_path):
    data_dir = make_image_folder(tmp_path, classes=("cat", "dog"), n_per_class=5)
    (data_dir / "cat" / "README.txt").write_text("notes")
    (data_dir / "dog" / "Thumbs.db").write_bytes(b"\0")
    before = snapshot(tmp_path)
    status, lines = doctor(tmp_path, custom_dir="my_data")  # --custom-dir alone checks Custom only
    assert status == 0
    assert lines[0].startswith(
        f"WARN Custom: ignored 2 non-image file(s) in the dataset folder, e.g. {data_dir}/cat/README.txt, "
        f"{data_dir}/dog/Thumbs.db (only image files are used, by extension: .jpg .jpeg .png"
    )
    assert lines[1].startswith(f"WARN Custom: building it would write {data_dir}/split_custom.json")
    assert lines[2].startswith("OK Custom (layout only")
    assert snapshot(tmp_path) == before

    with pytest.raises(ConfigValueError, match="Custom dataset needs --custom-dir DIR .* or --custom-csv FILE"):
        doctor(tmp_path, "custom")
    status, lines = doctor(tmp_path, "Custom", custom_dir="nope")  # a missing data folder is a dataset error
    assert status == 1 and lines[-1].startswith(f"ERROR Custom: Dataset folder not found: {tmp_path}/nope")


def test_identical_prompts_are_a_warning_in_doctor_and_training(tmp_path, caplog):
    classes = ("Red_Fox", "crane", "dog", "red fox", "crane ")  # trailing space: a folder name can have one
    data_dir = make_image_folder(tmp_path, classes=classes, n_per_class=4)
    build_dataset(custom_folder_cfg(tmp_path))  # writes split_custom.json, so the doctor builds it fully
    # Labels follow the sorted folder names: Red_Fox 0, crane 1, crane_ 2, dog 3, red fox 4.
    expected = (
        "2 group(s) of classes get identical prompts and can never be told apart: "
        "'red fox' (labels 0 'Red_Fox', 4 'red fox'); 'crane' (labels 1 'crane', 2 'crane '). "
        "Give each class a distinct name"
    )
    status, lines = doctor(tmp_path, custom_dir=str(data_dir))
    assert status == 0
    [warning] = [line for line in lines if line.startswith("WARN")]
    assert warning.startswith(f"WARN Custom: {expected}")

    with caplog.at_level(logging.WARNING, logger="engine.data.manager"):
        DataManager(custom_folder_cfg(tmp_path))
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage().startswith(f"Warning: DATASET.NAME=Custom: {expected}")


def test_training_logs_ignored_files_once(tmp_path, caplog):
    data_dir = make_image_folder(tmp_path, classes=("cat", "dog"), n_per_class=5)
    for name in ("README.txt", "labels.csv", "notes.md", "x.pdf"):
        (data_dir / "dog" / name).write_text("x")
    with caplog.at_level(logging.WARNING, logger="engine.data.manager"):
        DataManager(custom_folder_cfg(tmp_path))
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage().startswith(
        f"Warning: DATASET.NAME=Custom: ignored 4 non-image file(s) in the dataset folder, e.g. "
        f"{data_dir}/dog/README.txt, {data_dir}/dog/labels.csv, {data_dir}/dog/notes.md and 1 more"
    )


def test_command_line_exit_status(tmp_path, capsys):
    from datasets.doctor import main

    root = make_caltech101_tree(tmp_path)
    assert main(["--root", str(root), "--dataset", "caltech101"]) == 0
    assert "OK Caltech101 (classes=6" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        main(["--root", str(root), "--sample", "-1"])
    assert exit_info.value.code == 2 and "argument --sample: -1 is negative" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--root", str(empty)]) == 2  # a user error through run_cli, as in the runs below
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: no known dataset folder under --root {empty}. Point --root at")
    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^ImageNetSketch +imagenet_sketch +imagenet-sketch$", listing, re.MULTILINE)


# The real `python -m datasets.doctor`, once per kind of outcome. Each run imports torch (seconds),
# so they run side by side from one fixture and each test checks its own result.
CLI_CASES = {
    "missing-root-folder": (["--root", "{tmp}/nope"], "--root {tmp}/nope is not a folder"),
    "unknown-dataset": (["--root", "{tmp}", "--dataset", "caltek101"], "unknown dataset 'caltek101'. Did you mean: "),
    "custom-without-source": (["--root", "{tmp}", "--dataset", "custom"], "the Custom dataset needs --custom-dir"),
    "no-root-given": (["--dataset", "caltech101"], "--root is required"),
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    empty = tmp / "empty"
    empty.mkdir()
    data = make_caltech101_tree(tmp / "data")
    commands = {name: [a.format(tmp=empty) for a in args] for name, (args, _) in CLI_CASES.items()}
    commands["broken-dataset"] = ["--root", str(data), "--dataset", "Caltech101", "--dataset", "VTAB_dtd"]

    def run(args):
        cmd = [sys.executable, "-m", "datasets.doctor", *args]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        results = dict(zip(commands, pool.map(run, commands.values())))
    return empty, data, results


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_command_line_mistake_is_one_error_line(cli_runs, case):
    empty, _, results = cli_runs
    run = results[case]
    expected = CLI_CASES[case][1].format(tmp=empty)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    [line] = [line for line in run.stderr.splitlines() if "error:" in line]
    assert expected in line
    assert run.stdout == ""


def test_command_line_broken_dataset_is_an_error_report(cli_runs):
    _, data, results = cli_runs
    run = results["broken-dataset"]
    assert run.returncode == 1, run.stderr
    assert "OK Caltech101 (classes=6" in run.stdout and f"ERROR VTAB_dtd: dataset folder {data}/vtab-1k/dtd" in run.stdout
    assert "error:" not in run.stderr and "Traceback" not in run.stderr
