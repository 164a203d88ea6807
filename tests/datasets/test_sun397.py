"""SUN397 on a miniature tree: split generation from the partitions, split JSON, few-shot, base/new."""
from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

import datasets  # noqa: F401  (registers the datasets)
from datasets.sun397 import SUN397, clean_classname
from engine.data import build_dataset
from tests.factories.coop_datasets_b import SUN_CLASSES, dataset_cfg, make_sun397_tree

NAMES = ["abbey", "outdoor apartment_building", "shop bakery", "shoe_shop", "youth_hostel"]


def cfg(root, **kw):
    return dataset_cfg(root, "SUN397", **kw)


def test_clean_classname():
    assert [clean_classname(k) for k in SUN_CLASSES] == NAMES


def test_generated_split_from_partition_files(tmp_path):
    root = make_sun397_tree(tmp_path)
    random.seed(0)
    ds = build_dataset(cfg(root))
    assert isinstance(ds, SUN397)
    assert ds.classnames == NAMES
    # 5 trainval images per class: round(5 * 0.2) = 1 to val.
    for part, n in ((ds.train_x, 4), (ds.val, 1), (ds.test, 2)):
        assert Counter(x.label for x in part) == {y: n for y in range(5)}
    image_dir = root / "sun397" / "SUN397"
    for item in ds.train_x + ds.val + ds.test:
        key = os.path.relpath(os.path.dirname(item.impath), image_dir).replace(os.sep, "/")
        assert key == SUN_CLASSES[item.label]
    trainval = {x.impath for x in ds.train_x + ds.val}
    listed = {str(image_dir) + line.strip() for line in (root / "sun397" / "Training_01.txt").read_text().splitlines()}
    assert trainval == listed
    saved = json.loads((root / "sun397" / "split_zhou_SUN397.json").read_text())
    assert saved["test"][0] == ["a/abbey/sun_aabbey005.jpg", 0, "abbey"]
    random.seed(123)  # once saved, the split no longer depends on the random state
    again = SUN397(cfg(root))
    assert again.train_x == ds.train_x and again.val == ds.val


def test_split_json_is_used_without_partition_files(tmp_path):
    root = make_sun397_tree(tmp_path, n_trainval=10, with_split_json=True, split_sizes=(5, 5))
    for name in ("ClassName.txt", "Training_01.txt", "Testing_01.txt"):
        (root / "sun397" / name).unlink()
    assert SUN397.extra_checks(str(root / "sun397")) == []
    ds = SUN397(cfg(root, num_shots=5))
    assert Counter(x.label for x in ds.train_x) == {y: 5 for y in range(5)}
    assert Counter(x.label for x in ds.val) == {y: 4 for y in range(5)}  # min(5, 4)
    assert (root / "sun397" / "split_fewshot" / "shot_5-seed_1.pkl").is_file()
    base = SUN397(cfg(root, num_shots=5, subsample="base"))
    new = SUN397(cfg(root, num_shots=5, subsample="new"))
    assert base.classnames == NAMES[:3] and new.classnames == NAMES[3:]
    assert len(new.test) == 4 and sorted({x.label for x in new.test}) == [0, 1]


def test_missing_split_and_partitions(tmp_path):
    root = make_sun397_tree(tmp_path)
    (root / "sun397" / "ClassName.txt").unlink()
    problems = SUN397.extra_checks(str(root / "sun397"))
    assert len(problems) == 1 and "ClassName.txt" in problems[0]
    with pytest.raises(FileNotFoundError, match="split_zhou_SUN397.json") as info:
        SUN397(cfg(root))
    assert "DATASETS.md#sun397" in str(info.value)
