"""The test-only ImageNet variants on miniature trees: label rules, class names, errors."""
from __future__ import annotations

import os
from collections import Counter

import pytest

import datasets  # noqa: F401  (registers the datasets)
from datasets.imagenet_variants import ImageNetA, ImageNetR, ImageNetSketch, ImageNetV2
from engine.data import DatasetError, build_dataset
from tests.factories.coop_datasets_b import WNIDS, dataset_cfg, make_imagenet_variant_tree, write_classnames


def _folder(item) -> str:
    return os.path.basename(os.path.dirname(item.impath))


def test_v2_numbered_folders_map_through_classnames_file_order(tmp_path):
    # Folder k is class k of the file, whatever its wnid sorts to (the real file is sorted).
    entries = [WNIDS[2], WNIDS[0], WNIDS[1]]
    root = make_imagenet_variant_tree(tmp_path, "v2", entries=entries)
    ds = build_dataset(dataset_cfg(root, "ImageNetV2"))
    assert isinstance(ds, ImageNetV2)
    assert ds.classnames == ["great white shark", "tench", "goldfish"]
    assert Counter(x.label for x in ds.test) == {0: 3, 1: 4, 2: 5}
    assert all(_folder(x) == str(x.label) for x in ds.test)
    assert ds.train_x is ds.test and ds.val is None
    # The doctor flags a classnames.txt that is not in sorted order (the labels would be wrong).
    problems = ImageNetV2.extra_checks(str(root / "imagenetv2"))
    assert len(problems) == 1 and "sorted wnid order" in problems[0]


def test_v2_missing_numbered_folder(tmp_path):
    root = make_imagenet_variant_tree(tmp_path, "v2", entries=WNIDS[:3])
    write_classnames(root / "imagenetv2" / "classnames.txt", WNIDS[:4])
    with pytest.raises(DatasetError, match=r"\['3'\]") as info:
        ImageNetV2(dataset_cfg(root, "ImageNetV2"))
    assert "DATASETS.md#imagenetv2" in str(info.value)
    assert ImageNetV2.extra_checks(str(root / "imagenetv2")) != []


def test_sketch_sorted_wnid_labels(tmp_path):
    entries = [WNIDS[3], WNIDS[0], WNIDS[4]]  # folders created in this order; labels must sort
    root = make_imagenet_variant_tree(tmp_path, "sketch", entries=entries, classnames=WNIDS)
    ds = ImageNetSketch(dataset_cfg(root, "ImageNetSketch"))
    assert ds.classnames == ["tench", "tiger shark", "hammerhead shark"]
    # Position p in `entries` got 3 + p images: tench 4, tiger shark 3, hammerhead 5.
    assert Counter(x.label for x in ds.test) == {0: 4, 1: 3, 2: 5}
    assert all(_folder(x) == [WNIDS[0][0], WNIDS[3][0], WNIDS[4][0]][x.label] for x in ds.test)


@pytest.mark.parametrize("variant, cls, name", [("a", ImageNetA, "ImageNetA"), ("r", ImageNetR, "ImageNetR")])
def test_subset_variants_skip_readme_and_label_by_sorted_wnid(tmp_path, variant, cls, name):
    subset = [WNIDS[4], WNIDS[2], WNIDS[0]]  # a 3-class subset of the 5 named in classnames.txt
    root = make_imagenet_variant_tree(tmp_path, variant, entries=subset, classnames=WNIDS)
    image_dir = root / cls.dataset_dir / cls.image_subdir
    assert (image_dir / "README.txt").is_file()
    ds = build_dataset(dataset_cfg(root, name))
    assert isinstance(ds, cls)
    assert ds.classnames == ["tench", "great white shark", "hammerhead shark"]
    assert ds.num_classes == 3 and len(ds.test) == 3 + 4 + 5
    assert all("README" not in x.impath for x in ds.test)
    assert cls.extra_checks(str(root / cls.dataset_dir)) == []


def test_test_only_ignores_shots_and_subsampling(tmp_path):
    root = make_imagenet_variant_tree(tmp_path, "r", entries=WNIDS)
    ds = ImageNetR(dataset_cfg(root, "ImageNetR", num_shots=1, subsample="base"))
    assert ds.num_classes == 5 and len(ds.train_x) == 3 + 4 + 5 + 6 + 7
    assert not (root / "imagenet-rendition" / "split_fewshot").exists()


def test_folder_missing_from_classnames(tmp_path):
    root = make_imagenet_variant_tree(tmp_path, "a", entries=WNIDS[:3], classnames=WNIDS[1:])
    with pytest.raises(DatasetError, match="n01440764") as info:
        ImageNetA(dataset_cfg(root, "ImageNetA"))
    assert "DATASETS.md#imageneta" in str(info.value)
    assert "n01440764" in ImageNetA.extra_checks(str(root / "imagenet-adversarial"))[0]


def test_missing_classnames_and_image_folder(tmp_path):
    root = make_imagenet_variant_tree(tmp_path, "sketch", entries=WNIDS[:2])
    (root / "imagenet-sketch" / "classnames.txt").unlink()
    with pytest.raises(FileNotFoundError, match="imagenet-sketch/classnames.txt") as info:
        ImageNetSketch(dataset_cfg(root, "ImageNetSketch"))
    assert "DATASETS.md#imagenetsketch" in str(info.value)
    (root / "imagenet-rendition").mkdir()
    with pytest.raises(FileNotFoundError, match="imagenet-rendition/imagenet-r is missing"):
        ImageNetR(dataset_cfg(root, "ImageNetR"))


def test_doctor_attributes():
    assert ImageNetV2.required_paths == ("imagenetv2-matched-frequency-format-val", "classnames.txt")
    assert [c.official_counts["test"] for c in (ImageNetV2, ImageNetSketch, ImageNetA, ImageNetR)] == [
        10000, 50889, 7500, 30000
    ]
    assert [c.docs_anchor for c in (ImageNetV2, ImageNetSketch, ImageNetA, ImageNetR)] == [
        "imagenetv2", "imagenetsketch", "imageneta", "imagenetr"
    ]
