"""DescribableTextures (DTD) on a miniature tree: split JSON, generated 50/20/30 folder split
(hidden files skipped), few-shot, base/new, errors."""
from __future__ import annotations

import os
import random
from collections import Counter

import pytest

import datasets  # noqa: F401  (registers the datasets)
from datasets.dtd import DescribableTextures
from engine.data import DatasetError, build_dataset
from tests.conftest import config_path
from tests.factories.coop_datasets_a import (
    DTD_CLASSES,
    check_base_new,
    check_fewshot_cache,
    coop_cfg,
    make_dtd_tree,
    replay_folder_split,
)

NAMES = sorted(DTD_CLASSES)


def test_yaml_and_split_json(tmp_path):
    root = make_dtd_tree(tmp_path)
    cfg = coop_cfg(root, "")
    cfg.merge_from_file(config_path("datasets", "dtd.yaml"))
    assert cfg.DATASET.NAME == "DescribableTextures"
    ds = build_dataset(cfg)
    assert isinstance(ds, DescribableTextures)
    assert ds.classnames == NAMES
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (20, 10, 15)
    assert ds.train_x[0].impath == str(root / "dtd" / "images" / "banded" / "banded_0002.jpg")
    assert all(os.path.basename(x.impath).startswith(NAMES[x.label] + "_") for x in ds.train_x + ds.val + ds.test)


def test_generated_split_matches_coop_replay(tmp_path):
    root = make_dtd_tree(tmp_path, with_split_json=False)
    random.seed(4)
    ds = DescribableTextures(coop_cfg(root, "DescribableTextures"))
    exp = replay_folder_split(str(root / "dtd" / "images"), seed=4)
    assert ([x.impath for x in ds.train_x], [x.impath for x in ds.val], [x.impath for x in ds.test]) == exp
    # 9 images per class (the hidden .directory file is not one of them): 4 / 2 / 3.
    assert Counter(x.label for x in ds.test) == {y: 3 for y in range(5)}
    assert not any(os.path.basename(x.impath).startswith(".") for x in ds.train_x + ds.val + ds.test)
    assert (root / "dtd" / "split_zhou_DescribableTextures.json").is_file()


def test_fewshot_cache(tmp_path):
    root = make_dtd_tree(tmp_path, n_train=6, n_val=5, n_test=1)
    check_fewshot_cache(DescribableTextures, root, "DescribableTextures", num_classes=5, k=5)


def test_fewshot_below_four_caps_val_at_k(tmp_path):
    root = make_dtd_tree(tmp_path, n_train=6, n_val=5, n_test=1)
    check_fewshot_cache(DescribableTextures, root, "DescribableTextures", num_classes=5, k=2)


def test_base_new_odd(tmp_path):
    check_base_new(DescribableTextures, make_dtd_tree(tmp_path), "DescribableTextures", NAMES)


def test_split_json_naming_a_missing_image(tmp_path):
    root = make_dtd_tree(tmp_path)
    (root / "dtd" / "images" / "bumpy" / "bumpy_0005.jpg").unlink()
    with pytest.raises(DatasetError) as info:
        DescribableTextures(coop_cfg(root, "DescribableTextures"))
    msg = str(info.value)
    assert "bumpy_0005.jpg" in msg and "split_zhou_DescribableTextures.json" in msg and "DATASETS.md#dtd" in msg
