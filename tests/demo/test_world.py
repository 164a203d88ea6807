"""The procedural generator and the dataset writer: determinism, layout, atomic first-use generation."""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from demo import make_data, world
from demo.make_data import DEMO_DATASETS, ensure_dataset, write_dataset


def tree_hashes(folder) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_regeneration_is_byte_identical(demo_root, tmp_path):
    # The smallest dataset is regenerated in full; for the others a sample of images is re-rendered.
    spec = DEMO_DATASETS["demo_symbols"]
    again = write_dataset(spec, str(tmp_path))
    first, second = tree_hashes(demo_root / "demo_symbols"), tree_hashes(again)
    assert len(first) == spec.counts["train"] + spec.counts["val"] + spec.counts["test"] + 2
    assert first == second
    for name in ("demo_shapes", "demo_shapes_sketch"):
        spec = DEMO_DATASETS[name]
        for label in (0, 17, len(spec.classes) - 1):
            klass = spec.classes[label]
            for index in (0, 31, 51):
                pixels = world.render_class_image(name, spec.classes, label, index, spec.style, light=world.DATASET_LIGHT)
                path = demo_root / name / "images" / klass.name / f"{klass.name}_{index:04d}.png"
                assert make_data._png_bytes(pixels) == path.read_bytes()


def test_images_vary_and_styles_differ():
    klass = world.DemoClass("red", "star")
    a = world.render("red", "star", "filled", world.image_rng("demo_shapes", 0, 0))
    b = world.render("red", "star", "filled", world.image_rng("demo_shapes", 0, 1))
    c = world.render("red", "star", "filled", world.image_rng("demo_shapes", 0, 0))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, c)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10  # position/size/rotation/background change
    # Sketch images are much noisier (high-frequency energy) than filled ones.
    sketch = world.render("red", "star", "sketch", world.image_rng("demo_shapes_sketch", 0, 0))
    assert np.abs(np.diff(sketch.astype(int), axis=1)).mean() > np.abs(np.diff(a.astype(int), axis=1)).mean() + 10
    assert klass.name == "red_star" and klass.words == "red star"
    # The pretraining stream never shares a seed with a demo dataset.
    assert len(set(world.STREAM_SEEDS.values())) == len(world.STREAM_SEEDS)
    with pytest.raises(ValueError, match="Unknown shape 'hexagon'"):
        world.class_list(["hexagon"])


def test_layout_and_split_file(demo_root):
    main = DEMO_DATASETS["demo_shapes"]
    split = json.loads((demo_root / "demo_shapes" / "split_DemoShapes.json").read_text())
    assert {k: len(v) for k, v in split.items()} == {"train": 48 * 24, "val": 48 * 8, "test": 48 * 20}
    rel, label, classname = split["test"][0]
    assert (rel, label, classname) == ("blue_circle/blue_circle_0032.png", 0, "blue circle")
    assert len({tuple(x[1:]) for x in split["train"]}) == 48
    with Image.open(demo_root / "demo_shapes" / "images" / rel) as img:
        assert img.size == (32, 32) and img.mode == "RGB"
    assert main.counts == {"classes": 48, "train": 1152, "val": 384, "test": 960}
    # The cross-dataset classes share no class with the main dataset; the sketch one has the same classes.
    assert not {k.name for k in main.classes} & {k.name for k in DEMO_DATASETS["demo_symbols"].classes}
    assert DEMO_DATASETS["demo_shapes_sketch"].classes == main.classes


def test_first_use_generates_into_the_default_root_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv(make_data.DEMO_DATA_ENV, str(tmp_path / "cache"))
    assert make_data.resolve_demo_root("") == str(tmp_path / "cache")
    assert make_data.resolve_demo_root(str(tmp_path / "x")) == str(tmp_path / "x")

    # A generation that fails half-way leaves neither the dataset nor a temporary folder behind.
    calls = {"n": 0}
    real_render = world.render_class_image

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 50:
            raise KeyboardInterrupt("interrupted")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(make_data, "render_class_image", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_dataset("demo_symbols")
    assert os.listdir(tmp_path / "cache") == []

    monkeypatch.setattr(make_data, "render_class_image", real_render)
    path = ensure_dataset("demo_symbols")
    assert path == str(tmp_path / "cache" / "demo_symbols")
    assert sorted(os.listdir(tmp_path / "cache")) == ["demo_symbols"]
    stamp = os.stat(os.path.join(path, "split_DemoSymbols.json")).st_mtime_ns
    assert ensure_dataset("demo_symbols") == path  # present: not regenerated
    assert os.stat(os.path.join(path, "split_DemoSymbols.json")).st_mtime_ns == stamp


def test_dataset_from_another_generator_version_is_refused(tmp_path):
    path = write_dataset(DEMO_DATASETS["demo_symbols"], str(tmp_path))
    info = os.path.join(path, make_data.INFO_FILE)
    with open(info) as f:
        data = json.load(f)
    data["world_version"] = make_data.WORLD_VERSION + 1
    with open(info, "w") as f:
        json.dump(data, f)
    with pytest.raises(RuntimeError, match="Delete the folder"):
        ensure_dataset("demo_symbols", str(tmp_path))


def test_png_encoding_has_no_metadata():
    data = make_data._png_bytes(np.zeros((4, 4, 3), np.uint8))
    chunks = []
    stream = io.BytesIO(data[8:])
    while True:
        head = stream.read(8)
        if not head:
            break
        length = int.from_bytes(head[:4], "big")
        chunks.append(head[4:].decode())
        stream.read(length + 4)
    assert chunks == ["IHDR", "IDAT", "IEND"]


def test_a_spec_without_light_writes_the_same_images_in_neutral_light(tmp_path):
    # A tiny variant (8 classes x 2 images) of DemoSymbols: its images under the warm light and without it.
    warm = make_data.DemoSpec("DemoSymbols", "demo_symbols", ("heart",), "filled", n_train=1, n_val=0, n_test=1)
    neutral = replace(warm, light=None)
    warm_dir = write_dataset(warm, str(tmp_path / "warm"))
    neutral_dir = write_dataset(neutral, str(tmp_path / "neutral"))
    for label, klass in enumerate(neutral.classes):
        rel = os.path.join("images", klass.name, f"{klass.name}_0001.png")
        expected = world.render_class_image("demo_symbols", neutral.classes, label, 1, "filled", light=None)
        assert (tmp_path / "neutral" / "demo_symbols" / rel).read_bytes() == make_data._png_bytes(expected)
        # The light scales the channels of otherwise identical images, so the two files differ.
        assert (tmp_path / "warm" / "demo_symbols" / rel).read_bytes() != make_data._png_bytes(expected)
    # The split files are the same; only the variant's info file names its light.
    split = "split_DemoSymbols.json"
    assert open(os.path.join(warm_dir, split)).read() == open(os.path.join(neutral_dir, split)).read()
    assert "light" not in json.loads(open(os.path.join(warm_dir, make_data.INFO_FILE)).read())
    assert json.loads(open(os.path.join(neutral_dir, make_data.INFO_FILE)).read())["light"] is None
