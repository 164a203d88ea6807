"""OxfordPets on a miniature tree: split JSON, annotation parsing + 80/20 split, few-shot, base/new, errors."""
from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

import datasets  # noqa: F401  (registers the datasets)
from datasets.oxford_pets import OxfordPets
from engine.config import get_cfg_default
from engine.data import DatasetError, build_dataset
from tests.conftest import config_path
from tests.factories.coop_datasets_a import check_base_new, check_fewshot_cache, coop_cfg, make_oxford_pets_tree

NAMES = ["abyssinian", "american_bulldog", "bengal", "great_pyrenees", "yorkshire_terrier"]


def test_yaml_and_split_json(tmp_path):
    root = make_oxford_pets_tree(tmp_path)
    cfg = coop_cfg(root, "")
    cfg.merge_from_file(config_path("datasets", "oxford_pets.yaml"))
    ds = build_dataset(cfg)
    assert isinstance(ds, OxfordPets)
    assert ds.classnames == NAMES and ds.num_classes == 5
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (20, 5, 10)
    image_dir = root / "oxford_pets" / "images"
    # The JSON is the source of truth: train is exactly its first four images per breed.
    assert [os.path.basename(x.impath) for x in ds.train_x[:4]] == [f"Abyssinian_{n}.jpg" for n in range(101, 105)]
    for item in ds.train_x + ds.val + ds.test:
        assert os.path.dirname(item.impath) == str(image_dir)
        breed = os.path.basename(item.impath).rsplit("_", 1)[0]
        assert NAMES[item.label] == breed.lower() == item.classname


def test_generated_split_from_annotations(tmp_path):
    # 5 trainval images per class: round(5 * 0.2) = 1 val, 4 train; test.txt gives 2 per class.
    root = make_oxford_pets_tree(tmp_path, with_split_json=False)
    split_file = root / "oxford_pets" / "split_zhou_OxfordPets.json"
    random.seed(0)
    ds = OxfordPets(coop_cfg(root, "OxfordPets"))
    assert ds.classnames == NAMES  # lowercased breed, numeric suffix dropped
    assert Counter(x.label for x in ds.train_x) == {y: 4 for y in range(5)}
    assert Counter(x.label for x in ds.val) == {y: 1 for y in range(5)}
    # test.txt in file order: images 106 and 107 of each breed.
    assert [os.path.basename(x.impath) for x in ds.test[:2]] == ["Abyssinian_106.jpg", "Abyssinian_107.jpg"]
    trainval = {x.impath for x in ds.train_x} | {x.impath for x in ds.val}
    assert len(trainval) == 25 and not trainval & {x.impath for x in ds.test}
    saved = json.loads(split_file.read_text())
    assert saved["test"][0] == ["Abyssinian_106.jpg", 0, "abyssinian"]
    random.seed(777)  # once the JSON exists the random state must not matter
    again = OxfordPets(coop_cfg(root, "OxfordPets"))
    assert again.train_x == ds.train_x and again.val == ds.val and again.test == ds.test


def test_fewshot_cache(tmp_path):
    root = make_oxford_pets_tree(tmp_path, n_train=6, n_val=5, n_test=1)
    check_fewshot_cache(OxfordPets, root, "OxfordPets", num_classes=5, k=5)


def test_base_new_odd(tmp_path):
    check_base_new(OxfordPets, make_oxford_pets_tree(tmp_path), "OxfordPets", NAMES)


def test_missing_annotations_is_a_clear_error(tmp_path):
    root = make_oxford_pets_tree(tmp_path, with_split_json=False)
    missing = root / "oxford_pets" / "annotations" / "trainval.txt"
    missing.unlink()
    with pytest.raises(FileNotFoundError) as info:
        OxfordPets(coop_cfg(root, "OxfordPets"))
    assert str(missing) in str(info.value) and "DATASETS.md#oxfordpets" in str(info.value)
    # The doctor hook reports the same file, and nothing once the split file exists.
    assert any(str(missing) in p for p in OxfordPets.extra_checks(str(root / "oxford_pets")))
    make_oxford_pets_tree(tmp_path / "other")
    assert OxfordPets.extra_checks(str(tmp_path / "other" / "oxford_pets")) == []


def test_malformed_annotation_line(tmp_path):
    root = make_oxford_pets_tree(tmp_path, with_split_json=False)
    test_txt = root / "oxford_pets" / "annotations" / "test.txt"
    test_txt.write_text(test_txt.read_text() + "Bengal_999 six 1 2\n")
    with pytest.raises(DatasetError, match=r"test.txt line 11 .*Bengal_999 six"):
        OxfordPets(coop_cfg(root, "OxfordPets"))


def test_missing_dataset_folder(tmp_path):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        OxfordPets(cfg)
    assert str(info.value) == (
        f"Dataset folder not found: {tmp_path}/oxford_pets (DATASET.ROOT={tmp_path}). See DATASETS.md#oxfordpets."
    )
