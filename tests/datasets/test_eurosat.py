"""EuroSAT on a miniature tree: split JSON, generated split with CoOp's renames (labels by folder
name), few-shot, base/new, errors and the doctor hook."""
from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

import datasets  # noqa: F401  (registers the datasets)
from datasets.eurosat import NEW_CNAMES, EuroSAT
from engine.data import build_dataset
from tests.conftest import config_path
from tests.factories.coop_datasets_a import (
    EUROSAT_CLASSES,
    check_base_new,
    check_fewshot_cache,
    coop_cfg,
    make_eurosat_tree,
    replay_folder_split,
)

FOLDERS = sorted(EUROSAT_CLASSES)
NAMES = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Sea or Lake"]


def test_renames_cover_the_ten_classes():
    assert len(NEW_CNAMES) == 10 and NEW_CNAMES["SeaLake"] == "Sea or Lake"
    assert NEW_CNAMES["PermanentCrop"] == "Permanent Crop Land" and NEW_CNAMES["Industrial"] == "Industrial Buildings"


def test_yaml_and_split_json(tmp_path):
    root = make_eurosat_tree(tmp_path)
    cfg = coop_cfg(root, "")
    cfg.merge_from_file(config_path("datasets", "eurosat.yaml"))
    ds = build_dataset(cfg)
    assert isinstance(ds, EuroSAT)
    assert ds.classnames == NAMES
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (20, 10, 15)
    for item in ds.train_x + ds.val + ds.test:
        assert os.path.basename(os.path.dirname(item.impath)) == FOLDERS[item.label]


def test_generated_split_labels_by_folder_and_renames(tmp_path):
    # Folders are created in scrambled order; labels must follow the sorted folder names, names the renames.
    root = make_eurosat_tree(tmp_path, classes=("SeaLake", "Highway", "AnnualCrop", "River", "Industrial"), with_split_json=False)
    random.seed(2)
    ds = EuroSAT(coop_cfg(root, "EuroSAT"))
    folders = ["AnnualCrop", "Highway", "Industrial", "River", "SeaLake"]
    assert ds.classnames == [NEW_CNAMES[f] for f in folders]
    exp = replay_folder_split(str(root / "eurosat" / "2750"), seed=2)
    assert ([x.impath for x in ds.train_x], [x.impath for x in ds.val], [x.impath for x in ds.test]) == exp
    assert Counter(x.label for x in ds.val) == {y: 2 for y in range(5)}
    saved = json.loads((root / "eurosat" / "split_zhou_EuroSAT.json").read_text())
    rel, label, name = saved["test"][-1]
    assert rel.startswith("SeaLake/SeaLake_") and (label, name) == (4, "Sea or Lake")


def test_fewshot_cache(tmp_path):
    root = make_eurosat_tree(tmp_path, n_train=6, n_val=5, n_test=1)
    check_fewshot_cache(EuroSAT, root, "EuroSAT", num_classes=5, k=5)


def test_base_new_odd(tmp_path):
    check_base_new(EuroSAT, make_eurosat_tree(tmp_path), "EuroSAT", NAMES)


def test_newer_archive_folder_name_is_explained(tmp_path):
    (tmp_path / "eurosat" / "EuroSAT_RGB" / "Forest").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as info:
        EuroSAT(coop_cfg(tmp_path, "EuroSAT"))
    assert str(tmp_path / "eurosat" / "2750") in str(info.value) and "DATASETS.md#eurosat" in str(info.value)
    (problem,) = EuroSAT.extra_checks(str(tmp_path / "eurosat"))
    assert "EuroSAT_RGB" in problem and "rename it to 2750" in problem


def test_doctor_hook_flags_unknown_folders(tmp_path):
    root = make_eurosat_tree(tmp_path)
    assert EuroSAT.extra_checks(str(root / "eurosat")) == []
    (root / "eurosat" / "2750" / "Clouds").mkdir()
    (problem,) = EuroSAT.extra_checks(str(root / "eurosat"))
    assert "'Clouds'" in problem
