"""OxfordFlowers on a miniature tree: split JSON, imagelabels.mat + cat_to_name.json split
generation (replayed independently), few-shot, base/new, errors."""
from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

import datasets  # noqa: F401  (registers the datasets)
from datasets.oxford_flowers import OxfordFlowers
from engine.data import DatasetError, build_dataset
from tests.conftest import config_path
from tests.factories.coop_datasets_a import (
    FLOWERS_APPEARANCE_ORDER,
    FLOWERS_NAMES,
    check_base_new,
    check_fewshot_cache,
    coop_cfg,
    make_oxford_flowers_tree,
)

NAMES = [FLOWERS_NAMES[c] for c in range(1, 6)]


def test_yaml_and_split_json(tmp_path):
    root = make_oxford_flowers_tree(tmp_path, with_mat=False)
    cfg = coop_cfg(root, "")
    cfg.merge_from_file(config_path("datasets", "oxford_flowers.yaml"))
    ds = build_dataset(cfg)
    assert isinstance(ds, OxfordFlowers)
    assert ds.classnames == NAMES and ds.lab2cname[0] == "pink primrose"
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (20, 10, 15)
    jpg = root / "oxford_flowers" / "jpg"
    # Class 1 (label 0) is the 2nd class in appearance order, so its first image is image_00002.
    assert ds.train_x[0].impath == str(jpg / "image_00002.jpg") and ds.train_x[0].label == 0


def _replay(root, seed):
    """CoOp's split, written out independently: group by class in first-appearance order, shuffle, round()."""
    random.seed(seed)
    jpg = root / "oxford_flowers" / "jpg"
    groups = {c: [] for c in FLOWERS_APPEARANCE_ORDER}
    for k in range(45):
        groups[FLOWERS_APPEARANCE_ORDER[k % 5]].append(str(jpg / f"image_{k + 1:05d}.jpg"))
    out = ([], [], [])
    for cls, paths in groups.items():
        random.shuffle(paths)
        n_trn, n_val = round(len(paths) * 0.5), round(len(paths) * 0.2)
        for part, chunk in zip(out, (paths[:n_trn], paths[n_trn : n_trn + n_val], paths[n_trn + n_val :])):
            part.extend((p, cls - 1) for p in chunk)
    return out


def test_generated_split_matches_coop_replay(tmp_path):
    import scipy.io  # noqa: F401  (a listed requirement)
    # 9 images per class: round(4.5) = 4 train (half-to-even), round(1.8) = 2 val, 3 test.
    root = make_oxford_flowers_tree(tmp_path, with_split_json=False)
    random.seed(5)
    ds = OxfordFlowers(coop_cfg(root, "OxfordFlowers"))
    exp_train, exp_val, exp_test = _replay(root, 5)
    assert [(x.impath, x.label) for x in ds.train_x] == exp_train
    assert [(x.impath, x.label) for x in ds.val] == exp_val
    assert [(x.impath, x.label) for x in ds.test] == exp_test
    assert Counter(x.label for x in ds.train_x) == {y: 4 for y in range(5)}
    assert ds.classnames == NAMES
    saved = json.loads((root / "oxford_flowers" / "split_zhou_OxfordFlowers.json").read_text())
    first = saved["train"][0]
    assert first[0] == os.path.basename(exp_train[0][0]) and first[1:] == [2, "canterbury bells"]
    random.seed(0)
    again = OxfordFlowers(coop_cfg(root, "OxfordFlowers"))
    assert again.train_x == ds.train_x and again.test == ds.test


def test_fewshot_cache(tmp_path):
    root = make_oxford_flowers_tree(tmp_path, n_train=6, n_val=5, n_test=1, with_mat=False)
    check_fewshot_cache(OxfordFlowers, root, "OxfordFlowers", num_classes=5, k=5)


def test_base_new_odd(tmp_path):
    check_base_new(OxfordFlowers, make_oxford_flowers_tree(tmp_path, with_mat=False), "OxfordFlowers", NAMES)


def test_class_missing_from_cat_to_name(tmp_path):
    import scipy.io  # noqa: F401  (a listed requirement)
    root = make_oxford_flowers_tree(tmp_path, with_split_json=False)
    names_file = root / "oxford_flowers" / "cat_to_name.json"
    names_file.write_text(json.dumps({str(c): n for c, n in FLOWERS_NAMES.items() if c != 5}))
    with pytest.raises(DatasetError, match=r"cat_to_name.json has no name for class 5"):
        OxfordFlowers(coop_cfg(root, "OxfordFlowers"))


def test_missing_cat_to_name_is_a_clear_error(tmp_path):
    root = make_oxford_flowers_tree(tmp_path, with_split_json=False, with_mat=False)
    missing = root / "oxford_flowers" / "cat_to_name.json"
    missing.unlink()
    with pytest.raises(FileNotFoundError) as info:
        OxfordFlowers(coop_cfg(root, "OxfordFlowers"))
    assert str(missing) in str(info.value) and "DATASETS.md#oxfordflowers" in str(info.value)
    problems = OxfordFlowers.extra_checks(str(root / "oxford_flowers"))
    assert len(problems) == 2 and "imagelabels.mat" in problems[0] and "cat_to_name.json" in problems[1]
