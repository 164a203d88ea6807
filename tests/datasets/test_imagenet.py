"""ImageNet on a miniature tree: labels, preprocessed.pkl (ours and legacy), few-shot, base/new, val layout."""
from __future__ import annotations

import os
import pickle
import shutil
import sys
import types
from collections import Counter

import pytest

import datasets  # noqa: F401  (registers the datasets)
from datasets import imagenet as imagenet_module
from datasets.imagenet import ImageNet, OverwriteRefusedError, sort_val_into_folders, write_classnames
from datasets.prepare_imagenet import main
from engine.data import DatasetBase, DatasetError, build_dataset
from engine.data.datasets import load_fewshot_pickle
from tests.factories.coop_datasets_b import WNIDS, dataset_cfg, make_imagenet_tree

NAMES = [name for _, name in WNIDS]


def cfg(root, **kw):
    return dataset_cfg(root, "ImageNet", **kw)


def _wnid(item) -> str:
    return os.path.basename(os.path.dirname(item.impath))


@pytest.fixture
def root(tmp_path):
    return make_imagenet_tree(tmp_path / "data")


def test_labels_names_counts_and_val_is_test(root):
    ds = build_dataset(cfg(root))
    assert isinstance(ds, ImageNet)
    assert ds.classnames == NAMES and ds.num_classes == 5
    assert (len(ds.train_x), len(ds.test)) == (25, 10)
    assert ds.val is ds.test
    for item in ds.train_x:
        assert _wnid(item) == WNIDS[item.label][0]
        assert item.impath.startswith(str(root / "imagenet" / "images" / "train") + os.sep)
    assert all(x.impath.startswith(str(root / "imagenet" / "images" / "val") + os.sep) for x in ds.test)
    assert Counter(x.label for x in ds.test) == {y: 2 for y in range(5)}


def test_preprocessed_written_relative_and_reused(root, monkeypatch, tmp_path):
    first = ImageNet(cfg(root))
    pkl = root / "imagenet" / "preprocessed.pkl"
    data = load_fewshot_pickle(str(pkl))
    assert set(data) == {"train", "test"} and len(data["train"]) == 25
    assert all(x.impath.startswith("images/train/n0") for x in data["train"])
    assert all(x.impath.startswith("images/val/n0") for x in data["test"])

    def boom(*args, **kwargs):
        raise AssertionError("folders were listed although preprocessed.pkl exists")

    monkeypatch.setattr(ImageNet, "read_data", boom)
    second = ImageNet(cfg(root))
    assert second.train_x == first.train_x and second.test == first.test

    moved = tmp_path / "moved"
    shutil.move(str(root), str(moved))
    third = ImageNet(cfg(moved))
    assert [os.path.relpath(x.impath, moved) for x in third.test] == [
        os.path.relpath(x.impath, root) for x in first.test
    ]
    # One image missing per class is caught at load time, naming the cache to delete.
    victim = third.train_x[0].impath
    os.remove(victim)
    with pytest.raises(DatasetError, match="preprocessed.pkl") as info:
        ImageNet(cfg(moved))
    assert victim in str(info.value)


@pytest.fixture
def fake_dassl(monkeypatch):
    """A stub `dassl.data.datasets.base_dataset.Datum` to pickle files in the original format."""
    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    class LegacyDatum:
        def __init__(self, impath, label, domain, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    LegacyDatum.__module__ = names[-1]
    LegacyDatum.__qualname__ = LegacyDatum.__name__ = "Datum"
    sys.modules[names[-1]].Datum = LegacyDatum
    return LegacyDatum


def test_legacy_preprocessed_and_fewshot_pickles(root, fake_dassl):
    foreign = "/mnt/old/DATA/imagenet/images"
    legacy = {
        "train": [fake_dassl(f"{foreign}/train/{w}/{w}_0.JPEG", y, 0, n) for y, (w, n) in enumerate(WNIDS)],
        "test": [fake_dassl(f"{foreign}/val/n01443537/ILSVRC2012_val_00000003.JPEG", 1, 0, "goldfish")],
    }
    blob = pickle.dumps(legacy, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"dassl.data.datasets.base_dataset" in blob
    (root / "imagenet" / "preprocessed.pkl").write_bytes(blob)
    fewshot = root / "imagenet" / "split_fewshot" / "shot_1-seed_1.pkl"
    fewshot.parent.mkdir()
    fewshot.write_bytes(pickle.dumps({"train": legacy["train"][:2]}))

    ds = ImageNet(cfg(root))
    assert len(ds.train_x) == 5 and ds.test[0].impath == str(
        root / "imagenet" / "images" / "val" / "n01443537" / "ILSVRC2012_val_00000003.JPEG"
    )
    assert type(ds.train_x[0]).__module__ == "engine.data.datasets"
    shots = ImageNet(cfg(root, num_shots=1))
    assert [x.classname for x in shots.train_x] == ["tench", "goldfish"]
    assert shots.train_x[1].impath == str(root / "imagenet" / "images" / "train" / "n01443537" / "n01443537_0.JPEG")


def test_fewshot_cache_train_only_and_reused(root, monkeypatch):
    first = ImageNet(cfg(root, num_shots=3, seed=2))
    cache = root / "imagenet" / "split_fewshot" / "shot_3-seed_2.pkl"
    data = load_fewshot_pickle(str(cache))
    assert set(data) == {"train"} and len(data["train"]) == 15
    assert Counter(x.label for x in first.train_x) == {y: 3 for y in range(5)}
    assert len(first.test) == 10 and first.val is first.test  # test is never cut by shots

    def boom(*args, **kwargs):
        raise AssertionError("sampling ran although a cache exists")

    monkeypatch.setattr(DatasetBase, "generate_fewshot_dataset", boom)
    second = ImageNet(cfg(root, num_shots=3, seed=2))
    assert second.train_x == first.train_x


def test_base_new_odd_class_count(root):
    base = ImageNet(cfg(root, num_shots=2, subsample="base"))
    new = ImageNet(cfg(root, num_shots=2, subsample="new"))
    assert base.classnames == NAMES[:3] and new.classnames == NAMES[3:]
    assert len(base.train_x) == 6 and len(new.train_x) == 4
    assert sorted({x.label for x in new.test}) == [0, 1] and len(new.test) == 4
    assert all(_wnid(x) == WNIDS[3 + x.label][0] for x in new.test)
    assert new.val is new.test
    assert os.listdir(root / "imagenet" / "split_fewshot") == ["shot_2-seed_1.pkl"]


def test_flat_val_is_reported_and_sort_val_fixes_it(tmp_path):
    root = make_imagenet_tree(tmp_path / "data", flat_val=True)
    dataset_dir = root / "imagenet"
    problems = ImageNet.extra_checks(str(dataset_dir))
    assert len(problems) == 1 and "10 images directly" in problems[0] and "--sort-val" in problems[0]
    with pytest.raises(DatasetError, match="--sort-val") as info:
        ImageNet(cfg(root))
    assert "DATASETS.md#imagenet" in str(info.value)
    assert not (dataset_dir / "preprocessed.pkl").exists()

    # Kaggle's LOC_val_solution.csv format: val images 1-2 are class 0, 3-4 class 1, ...
    rows = [
        f"ILSVRC2012_val_{i + 1:08d},{WNIDS[i // 2][0]} 10 20 30 40\n" for i in range(10)
    ]
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text("ImageId,PredictionString\n" + "".join(reversed(rows)))
    assert sort_val_into_folders(str(root), str(labels)) == 10
    assert ImageNet.extra_checks(str(dataset_dir)) == []
    ds = ImageNet(cfg(root))
    assert Counter(x.label for x in ds.test) == {y: 2 for y in range(5)}
    assert all(_wnid(x) == WNIDS[x.label][0] for x in ds.test)


def test_sort_val_refuses_incomplete_labels_without_moving(tmp_path):
    root = make_imagenet_tree(tmp_path / "data", flat_val=True)
    labels = tmp_path / "labels.txt"
    labels.write_text("ILSVRC2012_val_00000001.JPEG n01440764\n")
    with pytest.raises(DatasetError, match="no label for 9"):
        sort_val_into_folders(str(root), str(labels))
    assert len(os.listdir(root / "imagenet" / "images" / "val")) == 10


def test_write_classnames_from_open_clip(tmp_path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    train = tmp_path / "imagenet" / "images" / "train"
    wnids = [f"n{i * 7 + 1000:08d}" for i in range(1000)]
    for w in reversed(wnids):
        (train / w).mkdir(parents=True)
    (tmp_path / "imagenet-adversarial").mkdir()
    assert main(["--write-classnames", str(tmp_path), "--also-variants"]) == 0
    lines = (tmp_path / "imagenet" / "classnames.txt").read_text().splitlines()
    assert len(lines) == 1000
    assert lines[0] == f"{wnids[0]} tench" and lines[999] == f"{wnids[999]} toilet paper"
    assert lines[1].split(" ", 1)[1] == IMAGENET_CLASSNAMES[1] == "goldfish"
    copy = tmp_path / "imagenet-adversarial" / "classnames.txt"
    assert copy.read_text() == (tmp_path / "imagenet" / "classnames.txt").read_text()
    assert not (tmp_path / "imagenetv2").exists()
    # No silent overwrite; --force overwrites.
    with pytest.raises(OverwriteRefusedError, match="--force"):
        write_classnames(str(tmp_path))
    assert main(["--write-classnames", str(tmp_path), "--force"]) == 0


def test_write_classnames_refuses_partial_train(root, capsys):
    assert main(["--write-classnames", str(root), "--force"]) == 2
    assert "exactly 1000 wnid folders" in capsys.readouterr().err


def test_missing_classnames_and_unknown_folder(root):
    text = root / "imagenet" / "classnames.txt"
    text.write_text("".join(f"{w} {n}\n" for w, n in WNIDS[:4]))
    with pytest.raises(DatasetError, match="n01494475") as info:
        ImageNet(cfg(root))
    assert "--write-classnames" in str(info.value)
    assert "no entry for 1 train folder" in ImageNet.extra_checks(str(root / "imagenet"))[0]
    text.unlink()
    with pytest.raises(FileNotFoundError, match="classnames.txt") as info:
        ImageNet(cfg(root))
    assert "DATASETS.md#imagenet" in str(info.value)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        ImageNet(cfg(tmp_path))
    assert str(info.value) == (
        f"Dataset folder not found: {tmp_path}/imagenet (DATASET.ROOT={tmp_path}). See DATASETS.md#imagenet."
    )


def test_doctor_attributes():
    assert ImageNet.required_paths == ("images/train", "images/val", "classnames.txt")
    assert ImageNet.official_counts == {"classes": 1000, "train": 1281167, "val": 50000, "test": 50000}
    assert imagenet_module.ImageNet.docs_ref() == "DATASETS.md#imagenet"
