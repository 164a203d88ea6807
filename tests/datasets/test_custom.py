"""The generic `Custom` dataset: image-folder tree and CSV variants, few-shot cache, base/new, errors."""
from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

import datasets  # noqa: F401  (registers Custom)
from datasets.custom import Custom
from engine.data import DatasetError, build_dataset
from engine.errors import ConfigValueError, MissingFileError
from tests.factories.vtab_custom import make_csv_dataset, make_image_folder, small_cfg


def folder_cfg(root, **kwargs):
    cfg = small_cfg(root, "Custom", **kwargs)
    cfg.DATASET.CUSTOM.DIR = "my_data"
    return cfg


def csv_cfg(root, name="csvdata/labels.csv", **kwargs):
    cfg = small_cfg(root, "Custom", **kwargs)
    cfg.DATASET.CUSTOM.CSV = name
    return cfg


def test_folder_generates_seeded_split_and_saves_it(tmp_path):
    data_dir = make_image_folder(tmp_path, classes=("cat", "Dog", "zebra"), n_per_class=10)
    random.seed(123)
    before = random.getstate()
    ds = build_dataset(folder_cfg(tmp_path, seed=5))
    assert random.getstate() == before  # the split is drawn from its own seeded state
    assert ds.classnames == ["Dog", "cat", "zebra"]  # case-sensitive sort: capitals first
    for part, n in ((ds.train_x, 5), (ds.val, 2), (ds.test, 3)):
        assert Counter(x.label for x in part) == {0: n, 1: n, 2: n}
    assert all(os.path.basename(os.path.dirname(x.impath)) == ds.classnames[x.label] for x in ds.test)
    assert len({x.impath for x in ds.train_x + ds.val + ds.test}) == 30
    saved = json.loads((data_dir / "split_custom.json").read_text())
    assert saved["train"][0][0].split("/")[0] in ("Dog", "cat", "zebra") and len(saved["test"]) == 9

    # Same seed in a fresh tree -> same split; the saved file wins over a different seed.
    other = make_image_folder(tmp_path / "copy", classes=("cat", "Dog", "zebra"), n_per_class=10)
    again = build_dataset(folder_cfg(tmp_path / "copy", seed=5))
    rel = lambda items, base: [os.path.relpath(x.impath, base) for x in items]  # noqa: E731
    assert rel(again.test, other) == rel(ds.test, data_dir)
    reread = build_dataset(folder_cfg(tmp_path, seed=99))
    assert reread.test == ds.test and reread.train_x == ds.train_x


def test_folder_reads_a_given_coop_split(tmp_path):
    data_dir = make_image_folder(tmp_path, classes=("a", "b", "c"), n_per_class=3)
    split = {
        "train": [["a/img_00.jpg", 0, "apple"], ["b/img_00.jpg", 1, "bee"], ["c/img_00.jpg", 2, "car"]],
        "val": [["a/img_01.jpg", 0, "apple"]],
        "test": [["b/img_02.jpg", 1, "bee"], ["c/img_02.jpg", 2, "car"]],
    }
    (data_dir / "split_custom.json").write_text(json.dumps(split))
    ds = build_dataset(folder_cfg(tmp_path))
    assert ds.classnames == ["apple", "bee", "car"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (3, 1, 2)
    assert ds.test[0].impath == str(data_dir / "b" / "img_02.jpg")


def test_csv_with_split_and_classname_columns(tmp_path):
    csv_path = make_csv_dataset(tmp_path, per_split={"train": 4, "val": 2, "test": 3})
    ds = build_dataset(csv_cfg(tmp_path))
    assert ds.classnames == ["red", "green", "blue"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (12, 6, 9)
    assert ds.test[0].impath == str(csv_path.parent / "imgs" / "test_red_0.jpg")
    assert not (csv_path.parent / "labels_split.json").exists()  # the CSV's own split is used


def test_csv_without_val_rows_has_no_val(tmp_path):
    make_csv_dataset(tmp_path, per_split={"train": 2, "test": 1}, with_classname=False)
    ds = build_dataset(csv_cfg(tmp_path))
    assert ds.val is None and ds.classnames == ["class_0", "class_1", "class_2"]


def test_csv_without_split_column_generates_and_saves(tmp_path):
    csv_path = make_csv_dataset(
        tmp_path, per_split={"all": 10}, with_split=False, with_classname=False, label_as_name=True,
        classes=("zebra", "ant", "moth"),
    )
    ds = build_dataset(csv_cfg(tmp_path, seed=2))
    assert ds.classnames == ["ant", "moth", "zebra"]  # string labels are indexed in sorted order
    for part, n in ((ds.train_x, 5), (ds.val, 2), (ds.test, 3)):
        assert Counter(x.label for x in part) == {0: n, 1: n, 2: n}
    split_file = csv_path.parent / "labels_split.json"
    assert split_file.is_file()
    assert build_dataset(csv_cfg(tmp_path, seed=7)).test == ds.test  # read back, seed no longer matters


def test_fewshot_cache_and_base_new_with_five_classes(tmp_path, monkeypatch):
    classes = ("a1", "b2", "c3", "d4", "e5")
    csv_path = make_csv_dataset(tmp_path, classes=classes, per_split={"train": 5, "val": 5, "test": 2})
    base = build_dataset(csv_cfg(tmp_path, num_shots=3, seed=1, subsample="base"))
    cache = csv_path.parent / "split_fewshot" / "labels" / "shot_3-seed_1.pkl"
    assert cache.is_file()
    assert base.classnames == ["a1", "b2", "c3"]  # base gets the extra class
    assert Counter(x.label for x in base.train_x) == {0: 3, 1: 3, 2: 3}
    assert Counter(x.label for x in base.val) == {0: 3, 1: 3, 2: 3}  # min(3, 4)
    assert len(base.test) == 6

    monkeypatch.setattr(Custom, "generate_fewshot_dataset", lambda *a, **k: pytest.fail("cache not reused"))
    new = build_dataset(csv_cfg(tmp_path, num_shots=3, seed=1, subsample="new"))
    assert new.classnames == ["d4", "e5"] and sorted({x.label for x in new.train_x}) == [0, 1]
    assert all(classes[x.label + 3] in x.impath for x in new.train_x + new.test)
    eight = build_dataset(csv_cfg(tmp_path, num_shots=3, seed=1))
    assert {x.impath for x in eight.train_x} >= {x.impath for x in base.train_x}


def test_folder_takes_only_image_files(tmp_path):
    data_dir = make_image_folder(tmp_path, classes=("cat", "dog"), n_per_class=5)
    (data_dir / "cat" / "README.txt").write_text("where these came from")
    (data_dir / "cat" / "Thumbs.db").write_bytes(b"\0" * 8)
    (data_dir / "cat" / ".DS_Store").write_bytes(b"\0" * 8)  # hidden: skipped without a word
    (data_dir / "dog" / "more").mkdir()
    (data_dir / "dog" / "more" / "img_99.jpg").write_bytes((data_dir / "dog" / "img_00.jpg").read_bytes())
    (data_dir / "dog" / "IMG_50.JPEG").write_bytes((data_dir / "dog" / "img_00.jpg").read_bytes())  # any case
    (data_dir / "stray.png").write_bytes((data_dir / "dog" / "img_00.jpg").read_bytes())  # not in a class
    (data_dir / "notes.txt").write_text("top-level notes are not class data")

    ds = build_dataset(folder_cfg(tmp_path))
    everything = ds.train_x + ds.val + ds.test
    assert Counter(x.classname for x in everything) == {"cat": 5, "dog": 6}
    assert str(data_dir / "dog" / "IMG_50.JPEG") in {x.impath for x in everything}
    assert sorted(ds.ignored_files) == sorted([
        str(data_dir / "cat" / "README.txt"),
        str(data_dir / "cat" / "Thumbs.db"),
        str(data_dir / "dog" / "more") + os.sep,
        str(data_dir / "stray.png"),
    ])
    saved = json.loads((data_dir / "split_custom.json").read_text())
    assert not any(entry[0].endswith((".txt", ".db")) for part in saved.values() for entry in part)


def test_split_file_entries_that_are_not_images_are_dropped(tmp_path):
    data_dir = make_image_folder(tmp_path, classes=("a", "b"), n_per_class=3)
    (data_dir / "a" / "README.txt").write_text("an older split file took this in")
    split = {
        "train": [["a/img_00.jpg", 0, "a"], ["b/img_00.jpg", 1, "b"]],
        "val": [["a/README.txt", 0, "a"], ["b/img_01.jpg", 1, "b"]],
        "test": [["a/img_02.jpg", 0, "a"], ["b/img_02.jpg", 1, "b"]],
    }
    (data_dir / "split_custom.json").write_text(json.dumps(split))
    ds = build_dataset(folder_cfg(tmp_path))
    assert [x.impath for x in ds.val] == [str(data_dir / "b" / "img_01.jpg")]
    assert ds.ignored_files == [str(data_dir / "a" / "README.txt")]


def test_csv_rows_that_are_not_images_are_ignored(tmp_path):
    csv_path = make_csv_dataset(tmp_path, per_split={"train": 2, "val": 1, "test": 1}, label_as_name=True)
    (csv_path.parent / "imgs" / "notes.txt").write_text("not an image")
    with open(csv_path, "a") as f:  # a class that only has a non-image row must not become a label
        f.write("imgs/notes.txt,aardvark,aardvark,train\n")
    ds = build_dataset(csv_cfg(tmp_path))
    assert ds.classnames == ["blue", "green", "red"]
    assert ds.ignored_files == [str(csv_path.parent / "imgs" / "notes.txt")]


def test_errors(tmp_path):
    cfg = small_cfg(tmp_path, "Custom")
    with pytest.raises(ConfigValueError, match="exactly one of DATASET.CUSTOM.DIR"):
        build_dataset(cfg)
    with pytest.raises(MissingFileError, match="DATASETS.md#your-own-data"):
        build_dataset(folder_cfg(tmp_path))
    with pytest.raises(MissingFileError, match=r"CSV file not found: .*nope.csv"):
        build_dataset(csv_cfg(tmp_path, name="nope.csv"))
    bad_fractions = folder_cfg(tmp_path)
    bad_fractions.DATASET.CUSTOM.P_TRAIN = 0.9
    with pytest.raises(ConfigValueError, match="P_TRAIN=0.9 and P_VAL=0.2 .* sum to less than 1"):
        build_dataset(bad_fractions)

    csv_path = make_csv_dataset(tmp_path, per_split={"train": 2, "val": 1, "test": 1})
    text = csv_path.read_text()
    csv_path.write_text(text.replace(",test\n", ",val\n"))
    with pytest.raises(DatasetError, match="no image rows with split='test'"):
        build_dataset(csv_cfg(tmp_path))
    csv_path.write_text(text.replace("imgs/train_red_1.jpg,0,red", "imgs/train_red_1.jpg,0,crimson"))
    with pytest.raises(DatasetError, match="line 3: label 0 is named 'crimson'"):
        build_dataset(csv_cfg(tmp_path))
    csv_path.write_text(text.replace("imgs/test_blue_0.jpg", "imgs/missing.jpg"))
    with pytest.raises(DatasetError, match=r"line \d+ lists .*missing.jpg"):
        build_dataset(csv_cfg(tmp_path))
    csv_path.write_text("file,target\nimgs/a.jpg,0\n")
    with pytest.raises(DatasetError, match="columns 'path' and 'label'"):
        build_dataset(csv_cfg(tmp_path))


@pytest.mark.parametrize(
    "lines, message",
    [
        (["imgs/train_red_0.jpg,0,red,train", ",,,", "imgs/train_red_1.jpg,,red,train"], r"line 4 has no label"),
        (["imgs/train_red_0.jpg,0,red,train", "imgs/a,b.jpg,0,red,train"], r"line 3 has more values than the header"),
        (["imgs/train_red_0.jpg,0,red,train", "imgs/test_red_0.jpg,red,red,test"],
         r"mixes integer labels \(line 2: '0'\) and class-name labels \(line 3: 'red'\)"),
        (["imgs/train_red_0.jpg,-1,red,train"], r"line 2: negative label -1"),
        (["imgs/train_red_0.jpg,0,red,holdout", "imgs/test_red_0.jpg,0,red,test"], r"line 2: split 'holdout'"),
    ],
    ids=["missing-label", "extra-value", "mixed-labels", "negative-label", "unknown-split"],
)
def test_bad_csv_lines_name_the_line(tmp_path, lines, message):
    csv_path = make_csv_dataset(tmp_path, per_split={"train": 1, "test": 1}, classes=("red",))
    csv_path.write_text("path,label,classname,split\n" + "\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=message):
        build_dataset(csv_cfg(tmp_path))


def test_csv_encoding(tmp_path):
    csv_path = make_csv_dataset(tmp_path, per_split={"train": 1, "val": 1, "test": 1})
    text = csv_path.read_text()
    csv_path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # a spreadsheet's byte-order mark is fine
    assert len(build_dataset(csv_cfg(tmp_path)).test) == 3
    csv_path.write_bytes(text.replace("red", "r\xe9d").encode("latin-1"))
    with pytest.raises(DatasetError, match="is not UTF-8 text.*Save it as a UTF-8 CSV"):
        build_dataset(csv_cfg(tmp_path))


def test_class_folder_without_images(tmp_path):
    data_dir = make_image_folder(tmp_path, classes=("cat", "dog"), n_per_class=3)
    for image in (data_dir / "dog").iterdir():
        image.unlink()
    (data_dir / "dog" / "README.txt").write_text("images to come")
    with pytest.raises(DatasetError, match=r"class folder .*dog holds no image files \(only 1 other entries\)"):
        build_dataset(folder_cfg(tmp_path))
