"""Caltech101 on a miniature tree: split JSON, generated split, few-shot cache, base/new, errors."""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import sys
import types
from collections import Counter, OrderedDict

import pytest

import datasets  # noqa: F401  (registers Caltech101)
from datasets.caltech101 import Caltech101
from engine.data import DatasetBase, DatasetError, UnsafeCacheError, build_dataset
from engine.data.datasets import load_fewshot_pickle
from engine.errors import MissingFileError
from tests.factories.datasets import caltech_cfg, make_caltech101_tree

EXPECTED_NAMES = {0: "face", 1: "leopard", 2: "motorbike", 3: "accordion", 4: "airplane", 5: "anchor"}
FOLDERS = ["Faces", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor"]


def _folder(item) -> str:
    return os.path.basename(os.path.dirname(item.impath))


def test_split_json_labels_names_and_counts(caltech_root):
    ds = build_dataset(caltech_cfg(caltech_root))
    assert isinstance(ds, Caltech101)
    assert ds.lab2cname == EXPECTED_NAMES
    assert ds.classnames == [EXPECTED_NAMES[i] for i in range(6)]
    assert ds.num_classes == 6
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (24, 12, 12)
    assert Counter(x.label for x in ds.test) == {y: 2 for y in range(6)}
    image_dir = caltech_root / "caltech-101" / "101_ObjectCategories"
    for item in ds.train_x + ds.val + ds.test:
        # Label follows the case-sensitive folder sort; the path is absolute under the image folder.
        assert _folder(item) == FOLDERS[item.label]
        assert item.impath.startswith(str(image_dir) + os.sep) and os.path.isfile(item.impath)
    assert [os.path.basename(x.impath) for x in ds.train_x[:4]] == [f"image_{i:04d}.jpg" for i in range(1, 5)]


def test_generated_split_when_json_missing(tmp_path):
    # 9 images per class: round(4.5) = 4 (half-to-even), round(1.8) = 2, test = 3.
    root = make_caltech101_tree(tmp_path, n_train=4, n_val=2, n_test=3, with_split_json=False)
    split_file = root / "caltech-101" / "split_zhou_Caltech101.json"
    random.seed(0)
    ds = Caltech101(caltech_cfg(root))
    for part, n in ((ds.train_x, 4), (ds.val, 2), (ds.test, 3)):
        assert Counter(x.label for x in part) == {y: n for y in range(6)}
    assert ds.lab2cname == EXPECTED_NAMES
    assert all(_folder(x) != "BACKGROUND_Google" for x in ds.train_x + ds.val + ds.test)
    paths = [x.impath for x in ds.train_x + ds.val + ds.test]
    assert len(set(paths)) == 54
    # The split was saved in CoOp's format and is read back identically.
    saved = json.loads(split_file.read_text())
    assert saved["train"][0][0].count("/") == 1 and not saved["train"][0][0].startswith("/")
    assert all(isinstance(e[1], int) for e in saved["test"])
    random.seed(12345)  # a different random state must not matter once the JSON exists
    again = Caltech101(caltech_cfg(root))
    assert again.train_x == ds.train_x and again.val == ds.val and again.test == ds.test


def _hand_fewshot(split_file, prefix, k_train, k_val):
    """Replay CoOp's sampling with `random` on the raw JSON: per label in order, random.sample."""
    split = json.loads(split_file.read_text())
    out = []
    for part, k in (("train", k_train), ("val", k_val)):
        groups = OrderedDict()
        for rel, label, _ in split[part]:
            groups.setdefault(label, []).append(os.path.join(prefix, rel))
        chosen = []
        for items in groups.values():
            chosen.extend(random.sample(items, k) if len(items) >= k else items)
        out.append(chosen)
    return out


def test_fewshot_matches_hand_replay_and_caps_val(tmp_path):
    root = make_caltech101_tree(tmp_path, n_train=6, n_val=6, n_test=1)
    cfg = caltech_cfg(root, num_shots=5, seed=3)
    random.seed(2024)
    ds = Caltech101(cfg)
    random.seed(2024)
    image_dir = str(root / "caltech-101" / "101_ObjectCategories")
    exp_train, exp_val = _hand_fewshot(root / "caltech-101" / "split_zhou_Caltech101.json", image_dir, 5, 4)
    assert [x.impath for x in ds.train_x] == exp_train
    assert [x.impath for x in ds.val] == exp_val
    assert Counter(x.label for x in ds.val) == {y: 4 for y in range(6)}  # min(5, 4)
    assert len(ds.test) == 6  # never subsampled by shots
    assert (root / "caltech-101" / "split_fewshot" / "shot_5-seed_3.pkl").is_file()


def test_fewshot_cache_written_relative_then_reused(caltech_root, monkeypatch, tmp_path):
    cfg = caltech_cfg(caltech_root, num_shots=2, seed=1)
    random.seed(0)
    first = Caltech101(cfg)
    cache = caltech_root / "caltech-101" / "split_fewshot" / "shot_2-seed_1.pkl"
    data = load_fewshot_pickle(str(cache))
    assert set(data) == {"train", "val"} and len(data["train"]) == 12 and len(data["val"]) == 12
    assert all(x.impath.startswith("101_ObjectCategories/") for x in data["train"] + data["val"])
    mtime = cache.stat().st_mtime_ns

    # Second build: sampling must not run (it would raise) and the selection is the cached one.
    def boom(*args, **kwargs):
        raise AssertionError("few-shot sampling ran although a cache exists")

    monkeypatch.setattr(DatasetBase, "generate_fewshot_dataset", boom)
    random.seed(999)
    second = Caltech101(cfg)
    assert second.train_x == first.train_x and second.val == first.val
    assert cache.stat().st_mtime_ns == mtime

    # Relative paths survive moving the whole data root.
    moved = tmp_path / "moved"
    shutil.move(str(caltech_root), str(moved))
    third = Caltech101(caltech_cfg(moved, num_shots=2, seed=1))
    assert [os.path.relpath(x.impath, moved) for x in third.train_x] == [
        os.path.relpath(x.impath, caltech_root) for x in first.train_x
    ]


def test_fewshot_cache_dir_override(caltech_root, tmp_path):
    cfg = caltech_cfg(caltech_root, num_shots=1, seed=7)
    cfg.DATASET.FEWSHOT_CACHE_DIR = str(tmp_path / "caches")
    Caltech101(cfg)
    assert (tmp_path / "caches" / "caltech-101" / "shot_1-seed_7.pkl").is_file()
    assert not (caltech_root / "caltech-101" / "split_fewshot").exists()


@pytest.fixture
def fake_dassl(monkeypatch):
    """A stub `dassl.data.datasets.base_dataset.Datum`, so a test can pickle legacy-format caches."""
    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    class LegacyDatum:  # same attribute names as the original, no existence check on unpickle
        def __init__(self, impath, label, domain, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    LegacyDatum.__module__ = names[-1]
    LegacyDatum.__qualname__ = LegacyDatum.__name__ = "Datum"
    sys.modules[names[-1]].Datum = LegacyDatum
    return LegacyDatum


def test_legacy_cache_loads_and_rebases(caltech_root, fake_dassl):
    foreign = "/home/alice/DATA/caltech-101/101_ObjectCategories"
    legacy = {
        "train": [
            fake_dassl(f"{foreign}/Faces/image_0003.jpg", 0, 0, "face"),
            fake_dassl(f"{foreign}/anchor/image_0001.jpg", 5, 0, "anchor"),
        ],
        "val": [fake_dassl(f"{foreign}/Leopards/image_0006.jpg", 1, 0, "leopard")],
    }
    blob = pickle.dumps(legacy, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"dassl.data.datasets.base_dataset" in blob
    cache = caltech_root / "caltech-101" / "split_fewshot" / "shot_1-seed_1.pkl"
    cache.parent.mkdir()
    cache.write_bytes(blob)

    ds = Caltech101(caltech_cfg(caltech_root, num_shots=1, seed=1))
    image_dir = caltech_root / "caltech-101" / "101_ObjectCategories"
    assert [x.impath for x in ds.train_x] == [str(image_dir / "Faces/image_0003.jpg"), str(image_dir / "anchor/image_0001.jpg")]
    assert [x.impath for x in ds.val] == [str(image_dir / "Leopards/image_0006.jpg")]
    assert ds.lab2cname == {0: "face", 5: "anchor"} and ds.num_classes == 6
    assert type(ds.train_x[0]).__module__ == "engine.data.datasets"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_hostile_cache_is_refused_without_running_code(caltech_root, tmp_path):
    marker = str(tmp_path / "pwned")
    cache = caltech_root / "caltech-101" / "split_fewshot" / "shot_1-seed_1.pkl"
    cache.parent.mkdir()
    cache.write_bytes(pickle.dumps({"train": [_Evil(marker)], "val": []}))
    with pytest.raises(UnsafeCacheError, match=r"mkdir") as info:
        Caltech101(caltech_cfg(caltech_root, num_shots=1, seed=1))
    assert str(cache) in str(info.value)
    assert not os.path.exists(marker)


def test_base_new_relabelling_even(caltech_root):
    base = Caltech101(caltech_cfg(caltech_root, subsample="base"))
    new = Caltech101(caltech_cfg(caltech_root, subsample="new"))
    assert base.lab2cname == {0: "face", 1: "leopard", 2: "motorbike"}
    assert new.lab2cname == {0: "accordion", 1: "airplane", 2: "anchor"}
    for ds, folders in ((base, FOLDERS[:3]), (new, FOLDERS[3:])):
        for part in (ds.train_x, ds.val, ds.test):
            assert sorted({x.label for x in part}) == [0, 1, 2]
            assert all(_folder(x) == folders[x.label] for x in part)
        assert len(ds.test) == 6


def test_base_new_odd_gives_base_the_extra_class_and_shares_cache(tmp_path):
    root = make_caltech101_tree(tmp_path, classes=("Faces", "accordion", "anchor", "ant", "barrel"))
    base = Caltech101(caltech_cfg(root, num_shots=2, subsample="base"))
    new = Caltech101(caltech_cfg(root, num_shots=2, subsample="new"))
    assert base.classnames == ["face", "accordion", "anchor"]
    assert new.classnames == ["ant", "barrel"] and new.num_classes == 2
    caches = list((root / "caltech-101" / "split_fewshot").iterdir())
    assert [c.name for c in caches] == ["shot_2-seed_1.pkl"]  # sampled once, before the base/new split
    assert len(base.train_x) == 6 and len(new.train_x) == 4


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(MissingFileError) as info:
        Caltech101(caltech_cfg(tmp_path))
    assert str(info.value) == (
        f"Dataset folder not found: {tmp_path}/caltech-101 (DATASET.ROOT={tmp_path}). See DATASETS.md#caltech101."
    )


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda s: s.replace('"val": [', '"val": [] , "old_val": ['), "'val'"),
        (lambda s: s[: len(s) // 2], "could not be parsed"),
        (lambda s: s.replace("Faces/image_0001.jpg", "Faces/image_9999.jpg"), "image_9999.jpg"),
    ],
    ids=["empty-split", "truncated-json", "missing-image"],
)
def test_bad_split_file_errors(caltech_root, mutate, needle):
    split_file = caltech_root / "caltech-101" / "split_zhou_Caltech101.json"
    split_file.write_text(mutate(split_file.read_text()))
    with pytest.raises(DatasetError) as info:
        Caltech101(caltech_cfg(caltech_root))
    msg = str(info.value)
    assert needle in msg and "Caltech101" in msg and "DATASETS.md#caltech101" in msg
    assert str(split_file) in msg
