"""StanfordCars on a miniature tree: split JSON (prefix = dataset folder), .mat parsing with the
year moved to the front, 80/20 split, few-shot, base/new, errors."""
from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

import datasets  # noqa: F401  (registers the datasets)
from datasets.stanford_cars import StanfordCars, year_first
from engine.data import DatasetError, build_dataset
from tests.conftest import config_path
from tests.factories.coop_datasets_a import check_base_new, check_fewshot_cache, coop_cfg, make_stanford_cars_tree

NAMES = [
    "2000 AM General Hummer SUV",
    "2012 Acura RL Sedan",
    "2012 Aston Martin V8 Vantage Convertible",
    "2012 Ram C/V Cargo Van Minivan",
    "2012 smart fortwo Convertible",
]


def test_year_first():
    assert year_first("AM General Hummer SUV 2000") == "2000 AM General Hummer SUV"
    assert year_first("Ram C/V Cargo Van Minivan 2012") == "2012 Ram C/V Cargo Van Minivan"


def test_yaml_and_split_json(tmp_path):
    root = make_stanford_cars_tree(tmp_path, with_mat=False)
    cfg = coop_cfg(root, "")
    cfg.merge_from_file(config_path("datasets", "stanford_cars.yaml"))
    ds = build_dataset(cfg)
    assert isinstance(ds, StanfordCars)
    assert ds.classnames == NAMES and ds.num_classes == 5
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (20, 5, 10)
    ds_dir = root / "stanford_cars"
    # JSON paths are relative to the dataset folder itself and keep their cars_train/ or cars_test/ part.
    assert ds.train_x[0].impath == str(ds_dir / "cars_train" / "00001.jpg")
    assert {os.path.basename(os.path.dirname(x.impath)) for x in ds.train_x + ds.val} == {"cars_train"}
    assert {os.path.basename(os.path.dirname(x.impath)) for x in ds.test} == {"cars_test"}


def test_generated_split_from_mat_files(tmp_path):
    import scipy.io  # noqa: F401  (a listed requirement)
    root = make_stanford_cars_tree(tmp_path, with_split_json=False)
    ds_dir = root / "stanford_cars"
    random.seed(0)
    ds = StanfordCars(coop_cfg(root, "StanfordCars"))
    assert ds.classnames == NAMES
    assert Counter(x.label for x in ds.train_x) == {y: 4 for y in range(5)}
    assert Counter(x.label for x in ds.val) == {y: 1 for y in range(5)}
    # Test set in annotation order: image k of cars_test has class (k-1) mod 5.
    assert [(os.path.basename(x.impath), x.label) for x in ds.test[:6]] == [
        (f"{k:05d}.jpg", (k - 1) % 5) for k in range(1, 7)
    ]
    saved = json.loads((ds_dir / "split_zhou_StanfordCars.json").read_text())
    assert saved["test"][0] == ["cars_test/00001.jpg", 0, NAMES[0]]
    random.seed(99)
    again = StanfordCars(coop_cfg(root, "StanfordCars"))
    assert again.train_x == ds.train_x and again.val == ds.val and again.test == ds.test


def test_fewshot_cache(tmp_path):
    root = make_stanford_cars_tree(tmp_path, n_train=6, n_val=5, n_test=1, with_mat=False)
    check_fewshot_cache(StanfordCars, root, "StanfordCars", num_classes=5, k=5)


def test_base_new_odd(tmp_path):
    check_base_new(StanfordCars, make_stanford_cars_tree(tmp_path, with_mat=False), "StanfordCars", NAMES)


def test_missing_mat_file_is_a_clear_error(tmp_path):
    import scipy.io  # noqa: F401  (a listed requirement)
    root = make_stanford_cars_tree(tmp_path, with_split_json=False)
    missing = root / "stanford_cars" / "devkit" / "cars_meta.mat"
    missing.unlink()
    with pytest.raises(FileNotFoundError) as info:
        StanfordCars(coop_cfg(root, "StanfordCars"))
    assert str(missing) in str(info.value) and "DATASETS.md#stanfordcars" in str(info.value)
    assert any(str(missing) in p for p in StanfordCars.extra_checks(str(root / "stanford_cars")))


def test_unlabelled_test_annotations_are_rejected(tmp_path):
    # The devkit's cars_test_annos.mat has no 'class' field; using it instead of the labelled file must fail clearly.
    import scipy.io as scipy_io
    import numpy as np

    root = make_stanford_cars_tree(tmp_path, with_split_json=False)
    arr = np.zeros((1, 1), dtype=[("fname", "O")])
    arr[0, 0]["fname"] = np.array(["00001.jpg"])
    scipy_io.savemat(str(root / "stanford_cars" / "cars_test_annos_withlabels.mat"), {"annotations": arr})
    with pytest.raises(DatasetError, match=r"entry 0 of .*cars_test_annos_withlabels.mat lacks a usable"):
        StanfordCars(coop_cfg(root, "StanfordCars"))


def test_legacy_cache_written_elsewhere_is_rebased(tmp_path, monkeypatch):
    """A cache pickled by the original code (dassl Datum, absolute paths on another machine) loads here."""
    import pickle
    import sys
    import types

    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    class Datum:  # the original's attribute names
        def __init__(self, impath, label, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, 0, classname

    Datum.__module__, Datum.__qualname__ = names[-1], "Datum"
    sys.modules[names[-1]].Datum = Datum
    foreign = "/mnt/old/DATA/stanford_cars"
    legacy = {
        "train": [Datum(f"{foreign}/cars_train/00003.jpg", 2, NAMES[2])],
        "val": [Datum(f"{foreign}/cars_train/00021.jpg", 0, NAMES[0])],
    }
    root = make_stanford_cars_tree(tmp_path, with_mat=False)
    cache = root / "stanford_cars" / "split_fewshot" / "shot_1-seed_1.pkl"
    cache.parent.mkdir()
    cache.write_bytes(pickle.dumps(legacy, protocol=pickle.HIGHEST_PROTOCOL))
    ds = StanfordCars(coop_cfg(root, "StanfordCars", num_shots=1, seed=1))
    ds_dir = root / "stanford_cars"
    assert [x.impath for x in ds.train_x] == [str(ds_dir / "cars_train" / "00003.jpg")]
    assert [x.impath for x in ds.val] == [str(ds_dir / "cars_train" / "00021.jpg")]
    assert ds.classnames == [NAMES[2]] and ds.num_classes == 3
