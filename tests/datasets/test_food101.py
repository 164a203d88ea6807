"""Food101 on a miniature tree: split JSON, generated 50/20/30 folder split, few-shot, base/new, errors."""
from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

import datasets  # noqa: F401  (registers the datasets)
from datasets.food101 import Food101
from engine.data import DatasetError, build_dataset
from tests.conftest import config_path
from tests.factories.coop_datasets_a import (
    FOOD_CLASSES,
    check_base_new,
    check_fewshot_cache,
    coop_cfg,
    make_food101_tree,
    replay_folder_split,
)

NAMES = sorted(FOOD_CLASSES)


def test_yaml_and_split_json(tmp_path):
    root = make_food101_tree(tmp_path)
    cfg = coop_cfg(root, "")
    cfg.merge_from_file(config_path("datasets", "food101.yaml"))
    ds = build_dataset(cfg)
    assert isinstance(ds, Food101)
    assert ds.classnames == NAMES and ds.lab2cname[1] == "baby_back_ribs"  # underscores kept
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (20, 10, 15)
    image_dir = root / "food-101" / "images"
    for item in ds.train_x + ds.val + ds.test:
        assert os.path.dirname(item.impath) == str(image_dir / NAMES[item.label])


def test_generated_split_matches_coop_replay(tmp_path):
    # 9 images per class: round(4.5) = 4 train, round(1.8) = 2 val, 3 test; meta/ is not read.
    root = make_food101_tree(tmp_path, with_split_json=False)
    random.seed(11)
    ds = Food101(coop_cfg(root, "Food101"))
    exp = replay_folder_split(str(root / "food-101" / "images"), seed=11)
    assert ([x.impath for x in ds.train_x], [x.impath for x in ds.val], [x.impath for x in ds.test]) == exp
    assert Counter(x.label for x in ds.train_x) == {y: 4 for y in range(5)}
    assert Counter(x.label for x in ds.val) == {y: 2 for y in range(5)}
    assert ds.classnames == NAMES
    saved = json.loads((root / "food-101" / "split_zhou_Food101.json").read_text())
    assert saved["val"][0][0] == os.path.relpath(exp[1][0], root / "food-101" / "images")
    again = Food101(coop_cfg(root, "Food101"))
    assert again.train_x == ds.train_x and again.val == ds.val and again.test == ds.test


def test_fewshot_cache(tmp_path):
    root = make_food101_tree(tmp_path, n_train=6, n_val=5, n_test=1)
    check_fewshot_cache(Food101, root, "Food101", num_classes=5, k=5)


def test_base_new_odd(tmp_path):
    check_base_new(Food101, make_food101_tree(tmp_path), "Food101", NAMES)


def test_missing_image_folder(tmp_path):
    (tmp_path / "food-101" / "meta").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as info:
        Food101(coop_cfg(tmp_path, "Food101"))
    assert str(tmp_path / "food-101" / "images") in str(info.value)
    assert "DATASETS.md#food101" in str(info.value)


def test_too_few_images_to_split(tmp_path):
    root = make_food101_tree(tmp_path, n_train=1, n_val=0, n_test=1, with_split_json=False)
    with pytest.raises(DatasetError, match=r"has 2 images, too few"):
        Food101(coop_cfg(root, "Food101"))
