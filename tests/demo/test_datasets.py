"""The demo datasets through the real data layer: registry, base/new split, few-shot cache, `python -m demo.doctor`."""
from __future__ import annotations

import os
from collections import Counter

import pytest

import demo  # noqa: F401  (registers the demo datasets)
from engine.data import build_dataset
from tests.demo.conftest import demo_cfg


def test_base_new_split(demo_root):
    full = build_dataset(demo_cfg(demo_root))
    base = build_dataset(demo_cfg(demo_root, **{"DATASET.SUBSAMPLE_CLASSES": "base"}))
    new = build_dataset(demo_cfg(demo_root, **{"DATASET.SUBSAMPLE_CLASSES": "new"}))
    assert full.num_classes == 48 and len(full.test) == 960
    assert base.num_classes == new.num_classes == 24
    assert base.classnames == full.classnames[:24] and new.classnames == full.classnames[24:]
    assert not set(base.classnames) & set(new.classnames)
    assert sorted({d.label for d in new.test}) == list(range(24)) and len(new.test) == 24 * 20
    assert base.classnames[0] == "blue circle"


def test_fewshot_cache_is_written_then_reused(demo_root, tmp_path):
    cfg = demo_cfg(demo_root, **{"DATASET.NUM_SHOTS": 16, "DATASET.FEWSHOT_CACHE_DIR": str(tmp_path)})
    first = build_dataset(cfg)
    cache = tmp_path / "demo_shapes" / "shot_16-seed_1.pkl"
    assert cache.is_file()
    assert Counter(d.label for d in first.train_x) == {y: 16 for y in range(48)}
    assert Counter(d.label for d in first.val) == {y: 4 for y in range(48)}
    second = build_dataset(cfg)
    assert [d.impath for d in second.train_x] == [d.impath for d in first.train_x]
    # Another seed samples other images.
    cfg.SEED = 2
    assert [d.impath for d in build_dataset(cfg).train_x] != [d.impath for d in first.train_x]


@pytest.mark.parametrize("name", ["DemoShapesSketch", "DemoSymbols"])
def test_other_demo_datasets_build(demo_root, name):
    ds = build_dataset(demo_cfg(demo_root, name))
    expected = 48 if name == "DemoShapesSketch" else 32
    assert ds.num_classes == expected and len(ds.train_x) == expected * 24
    assert all(os.path.isfile(d.impath) for d in ds.test[:5])


def test_demo_doctor_passes_on_demo_data_and_flags_a_missing_image(demo_root, tmp_path, capsys):
    from demo.doctor import main

    status = main(["--root", str(demo_root), "--dataset", "DemoShapes", "demo_shapes_sketch", "DEMOSYMBOLS"])
    text = capsys.readouterr().out
    assert status == 0, text
    assert text.count("OK ") == 3 and "WARN" not in text, text

    # A broken copy: one image listed by the split file is gone.
    from demo.make_data import DEMO_DATASETS, write_dataset

    root = tmp_path / "broken"
    path = write_dataset(DEMO_DATASETS["demo_symbols"], str(root))
    os.remove(os.path.join(path, "images", "red_heart", "red_heart_0050.png"))
    assert main(["--root", str(root), "--dataset", "DemoSymbols"]) == 1
    assert "red_heart_0050.png" in capsys.readouterr().out


def test_demo_doctor_usage_mistakes_name_its_own_command(tmp_path, capsys):
    from demo.doctor import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "DemoShapes"])  # no --root
    assert exit_info.value.code == 2
    assert "usage: python -m demo.doctor" in capsys.readouterr().err
    assert main(["--root", str(tmp_path / "nope"), "--dataset", "DemoShapes"]) == 2
    assert "is not a folder" in capsys.readouterr().err
