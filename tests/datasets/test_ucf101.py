"""UCF101 on a miniature tree: split generation from the official lists, names, few-shot, base/new."""
from __future__ import annotations

import json
import os
from collections import Counter

import pytest

import datasets  # noqa: F401  (registers the datasets)
from datasets.ucf101 import UCF101, split_action_name
from engine.data import DatasetError, build_dataset
from tests.factories.coop_datasets_b import UCF_ACTIONS, dataset_cfg, make_ucf101_tree

NAMES = ["Apply_Eye_Makeup", "Handstand_Pushups", "Yo_Yo", "Playing_Daf", "Skijet"]


def cfg(root, **kw):
    return dataset_cfg(root, "UCF101", **kw)


def test_split_action_name():
    assert [split_action_name(a) for a in UCF_ACTIONS] == NAMES


def test_generated_split_from_official_lists(tmp_path):
    root = make_ucf101_tree(tmp_path)
    ds = build_dataset(cfg(root))
    assert isinstance(ds, UCF101)
    assert ds.classnames == NAMES  # classInd order (not sorted), CRLF stripped
    for part, n in ((ds.train_x, 4), (ds.val, 1), (ds.test, 2)):
        assert Counter(x.label for x in part) == {y: n for y in range(5)}
    item = ds.test[0]
    assert item.impath == str(root / "ucf101" / "UCF-101-midframes" / "Apply_Eye_Makeup" / "v_ApplyEyeMakeup_g03_c02.jpg")
    assert all(os.path.basename(os.path.dirname(x.impath)) == x.classname for x in ds.train_x + ds.val)
    saved = json.loads((root / "ucf101" / "split_zhou_UCF101.json").read_text())
    assert saved["test"][0] == ["Apply_Eye_Makeup/v_ApplyEyeMakeup_g03_c02.jpg", 0, "Apply_Eye_Makeup"]


def test_split_json_fewshot_and_base_new(tmp_path):
    root = make_ucf101_tree(tmp_path, n_trainval=10, with_split_json=True, split_sizes=(6, 4))
    (root / "ucf101" / "ucfTrainTestlist" / "classInd.txt").unlink()  # not needed with the JSON
    ds = UCF101(cfg(root, num_shots=8, seed=5))
    assert Counter(x.label for x in ds.train_x) == {y: 6 for y in range(5)}  # fewer than K: all kept
    assert Counter(x.label for x in ds.val) == {y: 4 for y in range(5)}
    assert (root / "ucf101" / "split_fewshot" / "shot_8-seed_5.pkl").is_file()
    base = UCF101(cfg(root, num_shots=2, subsample="base"))
    new = UCF101(cfg(root, num_shots=2, subsample="new"))
    assert base.classnames == NAMES[:3] and len(base.train_x) == 6 and len(base.val) == 6
    assert new.classnames == ["Playing_Daf", "Skijet"] and sorted({x.label for x in new.test}) == [0, 1]


def test_malformed_class_index_names_the_line(tmp_path):
    root = make_ucf101_tree(tmp_path)
    (root / "ucf101" / "ucfTrainTestlist" / "classInd.txt").write_text("1 ApplyEyeMakeup\nBaby Crawling\n")
    with pytest.raises(DatasetError, match=r"classInd.txt line 'Baby Crawling' should be '<1-based class id> <ActionName>'"):
        UCF101(cfg(root))


def test_unknown_action_and_missing_lists(tmp_path):
    root = make_ucf101_tree(tmp_path)
    lst = root / "ucf101" / "ucfTrainTestlist" / "testlist01.txt"
    lst.write_bytes(lst.read_bytes() + b"Surfing/v_Surfing_g01_c01.avi\r\n")
    with pytest.raises(DatasetError, match="'Surfing'") as info:
        UCF101(cfg(root))
    assert "DATASETS.md#ucf101" in str(info.value)
    lst.unlink()
    assert "testlist01.txt" in UCF101.extra_checks(str(root / "ucf101"))[0]
    with pytest.raises(FileNotFoundError, match="split_zhou_UCF101.json"):
        UCF101(cfg(root))
