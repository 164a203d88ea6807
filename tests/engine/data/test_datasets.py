"""Datum, DatasetBase and its shared CoOp helpers."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from engine.data import DATASET_REGISTRY, DatasetBase, DatasetError, Datum, build_dataset
from engine.data.datasets import load_fewshot_pickle
from engine.config import get_cfg_default
from engine.errors import ConfigValueError, MissingFileError, UserError
from engine.registry import UnknownNameError


def _fake(label, name=None, i=0):
    return Datum(f"/nowhere/{label}/{i}.jpg", label, 0, name or f"c{label}", check_exists=False)


def test_datum_is_read_only_and_checks_existence(tmp_path):
    f = tmp_path / "a.jpg"
    f.write_bytes(b"x")
    d = Datum(str(f), 3, 1, "cat")
    assert (d.impath, d.label, d.domain, d.classname) == (str(f), 3, 1, "cat")
    assert d._impath == str(f) and d._label == 3 and d._domain == 1 and d._classname == "cat"
    with pytest.raises(AttributeError):
        d.label = 4
    with pytest.raises(MissingFileError, match="missing.jpg"):
        Datum(str(tmp_path / "missing.jpg"), 0)
    with pytest.raises(TypeError, match="str"):
        Datum(f, 0)
    assert Datum(str(tmp_path / "missing.jpg"), 0, check_exists=False).impath.endswith("missing.jpg")


def test_datum_class_switch(monkeypatch, tmp_path):
    monkeypatch.setattr(Datum, "check_exists_default", False)
    assert Datum(str(tmp_path / "nope.jpg"), 1).label == 1


def test_num_classes_and_names_come_from_train_x():
    train = [_fake(2, "c"), _fake(0, "a"), _fake(0, "a", 1)]
    test = [_fake(7, "z")]
    ds = DatasetBase(train_x=train, test=test)
    assert ds.num_classes == 3  # max label in train_x + 1, test's label 7 is ignored
    assert ds.lab2cname == {0: "a", 2: "c"}
    assert ds.classnames == ["a", "c"]
    with pytest.raises(DatasetError, match="train_x is empty"):
        DatasetBase(train_x=[], test=test)


def test_generate_fewshot_equals_hand_replay():
    data = [_fake(lbl, i=i) for i, lbl in enumerate([3, 1, 3, 1, 1, 3, 0, 3, 1])]
    ds = DatasetBase(train_x=data)
    random.seed(5)
    got = ds.generate_fewshot_dataset(data, num_shots=2)
    random.seed(5)
    expected = []
    for label in (3, 1, 0):  # first-appearance order
        items = [d for d in data if d.label == label]
        expected.extend(random.sample(items, 2) if len(items) >= 2 else items)
    assert got == expected
    assert Counter(d.label for d in got) == {3: 2, 1: 2, 0: 1}  # label 0 has a single item


def test_generate_fewshot_variants():
    data = [_fake(0, i=i) for i in range(3)] + [_fake(1, i=9)]
    ds = DatasetBase(train_x=data)
    assert ds.generate_fewshot_dataset(data, num_shots=0) is data
    both = ds.generate_fewshot_dataset(data, data, num_shots=-1)
    assert both == (data, data)
    random.seed(0)
    rep = ds.generate_fewshot_dataset(data, num_shots=4, repeat=True)
    assert Counter(d.label for d in rep) == {0: 4, 1: 4}  # short labels topped up with replacement
    random.seed(0)
    a, b = ds.generate_fewshot_dataset(data, data[:2], num_shots=1)
    assert len(a) == 2 and len(b) == 1


def test_subsample_classes_relabels_noncontiguous_labels():
    train = [_fake(y) for y in (9, 2, 5, 0, 7)]
    test = [_fake(y) for y in (0, 2, 5, 7, 9, 9)]
    base_tr, base_te = DatasetBase.subsample_classes(train, test, subsample="base")
    new_tr, new_te = DatasetBase.subsample_classes(train, test, subsample="new")
    # sorted labels [0, 2, 5, 7, 9]: base = [0, 2, 5] -> 0..2, new = [7, 9] -> 0..1
    assert sorted((d.classname, d.label) for d in base_tr) == [("c0", 0), ("c2", 1), ("c5", 2)]
    assert sorted((d.classname, d.label) for d in new_te) == [("c7", 0), ("c9", 1), ("c9", 1)]
    assert len(base_te) == 3 and len(new_tr) == 2
    assert DatasetBase.subsample_classes(train, test, subsample="all") == (train, test)
    with pytest.raises(ConfigValueError, match="SUBSAMPLE_CLASSES"):
        DatasetBase.subsample_classes(train, subsample="half")


def test_split_trainval_rounds_and_replays():
    data = [_fake(y, i=i) for i, y in enumerate([0] * 10 + [1] * 7)]
    random.seed(3)
    train, val = DatasetBase.split_trainval(data, p_val=0.2)
    assert Counter(d.label for d in val) == {0: 2, 1: 1}  # round(2.0), round(1.4)
    assert Counter(d.label for d in train) == {0: 8, 1: 6}
    random.seed(3)
    idx0 = list(range(10))
    random.shuffle(idx0)
    assert [d.impath for d in val if d.label == 0] == [data[i].impath for i in idx0[:2]]


def test_save_and_read_split_roundtrip(make_items, tmp_path):
    items = make_items([0, 0, 1])
    prefix = str(tmp_path / "imgs")
    path = tmp_path / "split.json"
    DatasetBase.save_split(items[:1], items[1:2], items[2:], str(path), prefix)
    raw = json.loads(path.read_text())
    assert raw["train"] == [["img_000.jpg", 0, "class_0"]]
    assert "    " in path.read_text()  # indent 4, CoOp's format
    train, val, test = DatasetBase.read_split(str(path), prefix)
    assert train + val + test == items
    with pytest.raises(ValueError, match="not inside"):
        DatasetBase.save_split(items, [], [], str(path), str(tmp_path / "elsewhere"))


def test_build_dataset_by_name_and_unknown_name_suggests():
    @DATASET_REGISTRY.register(force=True)
    class ToyDataForBuildTest(DatasetBase):
        def __init__(self, cfg):
            super().__init__(train_x=[_fake(0), _fake(1)])

    cfg = get_cfg_default()
    cfg.DATASET.NAME = "ToyDataForBuildTest"
    assert build_dataset(cfg).num_classes == 2
    cfg.DATASET.NAME = "ToyDataForBuildTst"
    with pytest.raises(UnknownNameError, match="Did you mean: ToyDataForBuildTest.*configs/datasets/<name>.yaml"):
        build_dataset(cfg)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", b"\x80\x04\x95"], ids=["empty", "text", "truncated"])
def test_broken_fewshot_cache_is_a_dataset_error(tmp_path, content):
    cache = tmp_path / "shot_1-seed_1.pkl"
    cache.write_bytes(content)
    with pytest.raises(DatasetError, match=f"Few-shot cache {cache} could not be read.*Delete it"):
        load_fewshot_pickle(str(cache))


def test_missing_folders_and_files_are_user_errors(tmp_path):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(tmp_path)

    class Toy(DatasetBase):
        dataset_dir = "toy"

    toy = Toy(train_x=[_fake(0)])
    for call in (
        lambda: toy.resolve_dataset_dir(cfg),
        lambda: toy.require_dir(str(tmp_path / "imgs")),
        lambda: toy.require_file(str(tmp_path / "labels.txt")),
        lambda: toy.read_lines(str(tmp_path / "labels.txt")),
    ):
        with pytest.raises(MissingFileError, match=f"{tmp_path}/(toy|imgs|labels.txt).*See DATASETS.md#toy"):
            call()
    assert issubclass(MissingFileError, UserError)
