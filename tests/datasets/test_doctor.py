"""The dataset doctor: OK/WARN/ERROR lines, exit status, no writes; empty splits stop training."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import datasets  # noqa: F401  (registers every dataset)
from datasets.doctor import check_dataset, run_doctor
from engine.data import DataManager, DatasetBase, DatasetError, Datum
from tests.factories.datasets import caltech_cfg, make_caltech101_tree
from tests.factories.vtab_custom import make_imagenet_tree, make_vtab_task, small_cfg

REPO = Path(__file__).resolve().parents[2]


def doctor(root, *names, sample=20):
    out = io.StringIO()
    status = run_doctor(str(root), list(names) or None, sample=sample, out=out)
    return status, out.getvalue().splitlines()


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


def test_nothing_found_and_unknown_name(tmp_path):
    status, lines = doctor(tmp_path)
    assert status == 1 and lines[-1].startswith(f"ERROR no known dataset folder under {tmp_path}")
    status, lines = doctor(tmp_path, "Caltech102")
    assert status == 1 and lines[0].startswith("ERROR Caltech102: not a registered dataset") and "Caltech101" in lines[0]


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
    make_imagenet_tree(tmp_path, val_in_class_folders=False)
    status, lines = doctor(tmp_path, "ImageNet")
    assert status == 1
    [error] = [line for line in lines if line.startswith("ERROR")]
    assert error.startswith("ERROR ImageNet: ") and "images/val holds 6 images directly" in error
    assert "DATASETS.md#imagenet" in error


def test_imagenet_healthy_builds_without_writing(tmp_path):
    base = make_imagenet_tree(tmp_path)
    before = snapshot(tmp_path)
    status, lines = doctor(tmp_path, "ImageNet")
    assert status == 0 and "OK ImageNet (classes=3 train=9 val=6 test=6)" in lines
    assert snapshot(tmp_path) == before and not (base / "preprocessed.pkl").exists()


def test_command_line_exit_status(tmp_path, capsys):
    from datasets.doctor import main

    root = make_caltech101_tree(tmp_path)
    assert main(["--root", str(root), "--dataset", "Caltech101"]) == 0
    assert "OK Caltech101 (classes=6" in capsys.readouterr().out
    # One real `python -m` run (importing torch costs seconds): one healthy and one missing dataset.
    cmd = [sys.executable, "-m", "datasets.doctor", "--root", str(root), "--dataset", "Caltech101", "--dataset", "VTAB_dtd"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "OK Caltech101 (classes=6" in run.stdout and "ERROR VTAB_dtd: dataset folder" in run.stdout
