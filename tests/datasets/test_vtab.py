"""VTAB-1K tasks on miniature list-file trees: parsing, names, protocols, few-shot, base/new, errors."""
from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest

import datasets  # noqa: F401  (registers the VTAB tasks)
from datasets.vtab import CLASSNAMES, LIST_FILES, VTAB_CLASSES, VTAB_GROUPS, VTAB_TASKS, VTABBase
from engine.config import get_cfg_default, merge_from_file
from engine.data import DATASET_REGISTRY, DatasetBase, DatasetError, build_dataset
from engine.data.datasets import load_fewshot_pickle
from engine.errors import ConfigValueError
from tests.factories.vtab_custom import make_vtab_task, small_cfg

REPO = Path(__file__).resolve().parents[2]


def test_nineteen_tasks_registered_with_configs_and_consistent_tables():
    assert len(VTAB_TASKS) == 19 and sum(len(g) for g in VTAB_GROUPS.values()) == 19
    assert {t for g in VTAB_GROUPS.values() for t in g} == set(VTAB_TASKS)
    for task, (n_classes, _) in VTAB_TASKS.items():
        assert DATASET_REGISTRY.get(f"VTAB_{task}") is VTAB_CLASSES[f"VTAB_{task}"]
        text = (REPO / "configs" / "datasets" / f"vtab_{task}.yaml").read_text()
        assert text == f'DATASET:\n  NAME: "VTAB_{task}"\n'
        if task in CLASSNAMES:  # built-in names must cover every label exactly
            assert len(CLASSNAMES[task]) == n_classes, task
    assert CLASSNAMES["cifar"][:3] == ["apple", "aquarium fish", "baby"]
    assert CLASSNAMES["caltech101"][4] == "background google"


def test_final_protocol_parses_lists(tmp_path):
    task_dir = make_vtab_task(tmp_path, "cifar", n_classes=3, n_train800=4, n_val200=2, n_test=3)
    ds = build_dataset(small_cfg(tmp_path, "VTAB_cifar"))
    assert isinstance(ds, VTABBase) and ds.task == "cifar"
    assert len(ds.train_x) == 18 and ds.val is None and len(ds.test) == 9
    assert ds.classnames == ["apple", "aquarium fish", "baby"] and ds.num_classes == 3
    # Training items come from train800val200 (its own image copies), in list order, labels untouched.
    assert ds.train_x[0].impath == str(task_dir / "images" / "train800val200" / "000000.jpg")
    assert [x.label for x in ds.train_x[:6]] == [0, 1, 2, 0, 1, 2]
    assert all(x.impath.startswith(str(task_dir / "images" / "test")) for x in ds.test)
    assert Counter(x.label for x in ds.test) == {0: 3, 1: 3, 2: 3}


def test_search_protocol_uses_train800_and_val200(tmp_path):
    make_vtab_task(tmp_path, "dtd", n_classes=3, n_train800=4, n_val200=2, n_test=3)
    cfg = small_cfg(tmp_path, "VTAB_dtd")
    cfg.DATASET.VTAB.PROTOCOL = "train800"
    ds = build_dataset(cfg)
    assert len(ds.train_x) == 12 and len(ds.val) == 6 and ds.test == ds.val
    assert all("/images/train800/" in x.impath for x in ds.train_x)
    assert all("/images/val200/" in x.impath for x in ds.val)
    assert ds.classnames == ["banded", "blotchy", "braided"]
    cfg.DATASET.VTAB.PROTOCOL = "train900"
    with pytest.raises(ConfigValueError, match="DATASET.VTAB.PROTOCOL='train900'"):
        build_dataset(cfg)


def test_yaml_config_selects_the_task(tmp_path):
    make_vtab_task(tmp_path, "smallnorb_ele", n_classes=9, n_train800=1, n_val200=1, n_test=1)
    cfg = small_cfg(tmp_path, "")
    merge_from_file(cfg, str(REPO / "configs" / "datasets" / "vtab_smallnorb_ele.yaml"))
    ds = build_dataset(cfg)
    assert type(ds).__name__ == "VTAB_smallnorb_ele"
    assert ds.classnames[0] == "elevation 30 degrees" and ds.classnames[-1] == "elevation 70 degrees"


def test_generic_names_alias_folder_and_classnames_override(tmp_path):
    dmlab_dir = make_vtab_task(tmp_path, "dmlab", n_classes=6, n_train800=1, n_val200=1, n_test=1)
    assert build_dataset(small_cfg(tmp_path, "VTAB_dmlab")).classnames == [f"class_{i}" for i in range(6)]
    (dmlab_dir / "classnames.txt").write_text("a\nb\n\nc\nd\ne\nf\n")  # blank lines are skipped
    assert build_dataset(small_cfg(tmp_path, "VTAB_dmlab")).classnames == list("abcdef")
    (dmlab_dir / "classnames.txt").write_text("a\nb\n")
    with pytest.raises(DatasetError, match="has 2 names but the labels need 6"):
        build_dataset(small_cfg(tmp_path, "VTAB_dmlab"))

    task_dir = make_vtab_task(tmp_path, "cifar", n_classes=3, n_train800=1, n_val200=1, n_test=1, folder="cifar100")
    ds = build_dataset(small_cfg(tmp_path, "VTAB_cifar"))  # NOAH's folder name is accepted
    assert ds.train_x[0].impath.startswith(str(task_dir) + os.sep)
    assert ds.classnames == ["apple", "aquarium fish", "baby"]


def test_fewshot_cache_per_protocol_written_and_reused(tmp_path, monkeypatch):
    task_dir = make_vtab_task(tmp_path, "eurosat", n_classes=3, n_train800=6, n_val200=6, n_test=2)
    random.seed(0)
    final = build_dataset(small_cfg(tmp_path, "VTAB_eurosat", num_shots=2, seed=3))
    assert Counter(x.label for x in final.train_x) == {0: 2, 1: 2, 2: 2} and final.val is None
    cache = task_dir / "split_fewshot" / "shot_2-seed_3.pkl"
    assert set(load_fewshot_pickle(str(cache))) == {"train"}

    cfg = small_cfg(tmp_path, "VTAB_eurosat", num_shots=8, seed=3)
    cfg.DATASET.VTAB.PROTOCOL = "train800"
    search = build_dataset(cfg)
    assert Counter(x.label for x in search.val) == {0: 4, 1: 4, 2: 4}  # min(8, 4) per class
    assert Counter(x.label for x in search.train_x) == {0: 6, 1: 6, 2: 6}  # fewer than K: all
    assert (task_dir / "split_fewshot_train800" / "shot_8-seed_3.pkl").is_file()

    def boom(*args, **kwargs):
        raise AssertionError("sampling ran although a cache exists")

    monkeypatch.setattr(DatasetBase, "generate_fewshot_dataset", boom)
    again = build_dataset(small_cfg(tmp_path, "VTAB_eurosat", num_shots=2, seed=3))
    assert again.train_x == final.train_x


def test_base_new_odd_class_count(tmp_path):
    make_vtab_task(tmp_path, "kitti", n_classes=3, n_train800=2, n_val200=1, n_test=2)
    base = build_dataset(small_cfg(tmp_path, "VTAB_kitti", subsample="base"))
    new = build_dataset(small_cfg(tmp_path, "VTAB_kitti", subsample="new"))
    assert base.classnames == ["closest vehicle nearer than 8 m", "closest vehicle at 8 to 20 m"]
    assert new.classnames == ["closest vehicle farther than 20 m"] and new.num_classes == 1
    assert {x.label for x in new.test} == {0} and len(new.test) == 2
    assert sorted({x.label for x in base.test}) == [0, 1] and len(base.train_x) == 6


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        build_dataset(small_cfg(tmp_path, "VTAB_cifar"))
    msg = str(info.value)
    assert f"{tmp_path}/vtab-1k/cifar" in msg and "cifar100" in msg and "DATASETS.md#vtab-1k" in msg

    task_dir = make_vtab_task(tmp_path, "svhn", n_classes=3, n_train800=1, n_val200=1, n_test=1)
    (task_dir / "test.txt").write_text("images/test/000000.jpg seven\n")
    with pytest.raises(DatasetError, match=r"test.txt line 1 should be"):
        build_dataset(small_cfg(tmp_path, "VTAB_svhn"))
    (task_dir / "test.txt").write_text("images/test/000000.jpg 10\n")
    with pytest.raises(DatasetError, match=r"label 10, outside \[0, 10\)"):
        build_dataset(small_cfg(tmp_path, "VTAB_svhn"))
    (task_dir / "test.txt").write_text("")
    with pytest.raises(DatasetError, match="test.txt is empty"):
        build_dataset(small_cfg(tmp_path, "VTAB_svhn"))
    os.remove(task_dir / "test.txt")
    with pytest.raises(DatasetError, match="list file .*test.txt is missing"):
        build_dataset(small_cfg(tmp_path, "VTAB_svhn"))


def test_extra_checks_cover_all_four_lists(tmp_path):
    task_dir = make_vtab_task(tmp_path, "clevr_count", n_classes=8, n_train800=1, n_val200=1, n_test=1)
    cls = VTAB_CLASSES["VTAB_clevr_count"]
    assert cls.extra_checks(str(task_dir)) == []
    os.remove(task_dir / "images" / "val200" / "000003.jpg")
    (task_dir / "train800.txt").write_text("images/train800/000000.jpg 8\n")
    problems = cls.extra_checks(str(task_dir))
    assert any("val200.txt lists 1 missing image(s)" in p and "000003.jpg" in p for p in problems)
    assert any("train800.txt has labels [8] outside [0, 8)" in p for p in problems)
    assert set(cls.required_paths) == set(LIST_FILES)
