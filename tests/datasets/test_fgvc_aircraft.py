"""FGVCAircraft on a miniature tree: official split files, variant names, few-shot, base/new, errors."""
from __future__ import annotations

import os
from collections import Counter

import pytest

import datasets  # noqa: F401  (registers the datasets)
from datasets.fgvc_aircraft import FGVCAircraft
from engine.data import DatasetBase, DatasetError, build_dataset
from engine.data.datasets import load_fewshot_pickle
from tests.factories.coop_datasets_b import FGVC_VARIANTS, dataset_cfg, make_fgvc_aircraft_tree


def cfg(root, **kw):
    return dataset_cfg(root, "FGVCAircraft", **kw)


def test_labels_names_counts(tmp_path):
    root = make_fgvc_aircraft_tree(tmp_path)
    ds = build_dataset(cfg(root))
    assert isinstance(ds, FGVCAircraft)
    assert ds.classnames == list(FGVC_VARIANTS)  # names with spaces and "/" kept verbatim
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (25, 15, 10)
    assert Counter(x.label for x in ds.val) == {y: 3 for y in range(5)}
    first = ds.train_x[0]
    assert first.impath == str(root / "fgvc_aircraft" / "images" / "1000000.jpg") and first.classname == "707-320"
    assert ds.test[-1].classname == "DHC-1" and ds.test[-1].label == 4
    assert not any(name.endswith(".json") for name in os.listdir(root / "fgvc_aircraft"))


def test_fewshot_val_capped_cached_and_reused(tmp_path, monkeypatch):
    root = make_fgvc_aircraft_tree(tmp_path, per_split=(6, 5, 1))
    first = FGVCAircraft(cfg(root, num_shots=5, seed=4))
    assert Counter(x.label for x in first.train_x) == {y: 5 for y in range(5)}
    assert Counter(x.label for x in first.val) == {y: 4 for y in range(5)}  # min(5, 4)
    assert len(first.test) == 5
    cache = root / "fgvc_aircraft" / "split_fewshot" / "shot_5-seed_4.pkl"
    data = load_fewshot_pickle(str(cache))
    assert set(data) == {"train", "val"} and all(x.impath.startswith("images/") for x in data["train"])

    def boom(*args, **kwargs):
        raise AssertionError("sampling ran although a cache exists")

    monkeypatch.setattr(DatasetBase, "generate_fewshot_dataset", boom)
    second = FGVCAircraft(cfg(root, num_shots=5, seed=4))
    assert second.train_x == first.train_x and second.val == first.val


def test_base_new_odd(tmp_path):
    root = make_fgvc_aircraft_tree(tmp_path)
    base = FGVCAircraft(cfg(root, subsample="base"))
    new = FGVCAircraft(cfg(root, subsample="new"))
    assert base.classnames == ["707-320", "A300B4", "Cessna 172"]
    assert new.classnames == ["F-16A/B", "DHC-1"] and new.num_classes == 2
    assert sorted({x.label for x in new.test}) == [0, 1] and len(new.test) == 4 and len(new.val) == 6


def test_unknown_variant_and_missing_file(tmp_path):
    root = make_fgvc_aircraft_tree(tmp_path)
    split = root / "fgvc_aircraft" / "images_variant_val.txt"
    split.write_text(split.read_text().replace("A300B4", "A300B5", 1))
    with pytest.raises(DatasetError, match="'A300B5'") as info:
        FGVCAircraft(cfg(root))
    assert "images_variant_val.txt" in str(info.value) and "DATASETS.md#fgvcaircraft" in str(info.value)
    (root / "fgvc_aircraft" / "variants.txt").unlink()
    with pytest.raises(FileNotFoundError, match="variants.txt"):
        FGVCAircraft(cfg(root))


def test_missing_image(tmp_path):
    root = make_fgvc_aircraft_tree(tmp_path)
    (root / "fgvc_aircraft" / "images" / "1000003.jpg").unlink()
    with pytest.raises(DatasetError, match="1000003.jpg"):
        FGVCAircraft(cfg(root))
