"""File helpers, seeding and RNG state, meters, logger, images."""
import io
import json
import logging
import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from engine.utils import (
    AverageMeter,
    MetricMeter,
    atomic_torch_save,
    atomic_write_bytes,
    check_isfile,
    collect_env_info,
    count_num_param,
    format_duration,
    get_rng_state,
    listdir_nohidden,
    mkdir_if_missing,
    read_image,
    read_json,
    set_random_seed,
    set_rng_state,
    FILE_ONLY,
    setup_logger,
    tolist_if_not,
    write_json,
)


def test_json_format_and_atomic(tmp_path):
    p = str(tmp_path / "sub" / "r.json")
    write_json({"a": 1, "b": [1, 2]}, p)  # creates the folder
    text = open(p).read()
    assert text == json.dumps({"a": 1, "b": [1, 2]}, indent=4, separators=(",", ": "))
    assert read_json(p) == {"a": 1, "b": [1, 2]}
    with pytest.raises(TypeError):
        write_json({"x": object()}, p)  # not serialisable: the old file must survive
    assert read_json(p) == {"a": 1, "b": [1, 2]}
    assert [n for n in os.listdir(tmp_path / "sub") if n != "r.json"] == []


def test_atomic_helpers(tmp_path):
    p = str(tmp_path / "a" / "b.bin")
    atomic_write_bytes(p, b"abc")
    assert open(p, "rb").read() == b"abc"
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"")
    assert os.stat(p).st_mode & 0o777 == os.stat(plain).st_mode & 0o777  # not mkstemp's 0600
    t = str(tmp_path / "t.pt")
    atomic_torch_save({"w": torch.arange(3)}, t)
    assert torch.equal(torch.load(t, weights_only=True)["w"], torch.arange(3))


def test_small_file_helpers(tmp_path):
    d = tmp_path / "x" / "y"
    mkdir_if_missing(str(d))
    mkdir_if_missing(str(d))  # idempotent
    assert d.is_dir()
    (d / "b").write_text("")
    (d / "a").write_text("")
    (d / ".hidden").write_text("")
    assert listdir_nohidden(str(d), sort=True) == ["a", "b"]
    assert sorted(listdir_nohidden(str(d))) == ["a", "b"]
    assert check_isfile(str(d / "a")) is True
    with pytest.warns(UserWarning, match="No file found"):
        assert check_isfile(str(d / "zz")) is False
    assert tolist_if_not(3) == [3] and tolist_if_not([3]) == [3] and tolist_if_not((3,)) == [(3,)]


def test_count_num_param():
    m = nn.Linear(3, 2)  # 6 + 2
    assert count_num_param(m) == 8
    assert count_num_param(params=m.parameters()) == 8
    assert count_num_param(params=[{"params": [m.weight]}]) == 6
    with pytest.raises(ValueError):
        count_num_param()


def _draw():
    return (random.random(), float(np.random.rand()), torch.rand(1).item(), float(np.random.randn()))


def test_set_random_seed_reproducible():
    set_random_seed(7)
    a = _draw()
    set_random_seed(7)
    assert _draw() == a
    set_random_seed(8)
    assert _draw() != a


def test_rng_state_round_trip_through_weights_only_load():
    set_random_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = get_rng_state()
    expected = _draw()
    buf = io.BytesIO()
    torch.save({"rng_state": state}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["rng_state"]
    set_random_seed(99)
    _draw()
    set_rng_state(loaded)
    assert _draw() == expected


def test_meters():
    m = AverageMeter()
    m.update(2.0)
    m.update(torch.tensor(4.0), n=3)
    assert m.val == 4.0 and m.count == 4 and m.avg == pytest.approx(14 / 4)
    e = AverageMeter(ema=True)
    e.update(10.0)
    e.update(10.0)
    assert e.avg == pytest.approx(1.0 * 0.9 + 1.0)  # 0 -> 1.0 -> 1.9
    mm = MetricMeter()
    mm.update({"loss": 1.0, "acc": torch.tensor(50.0)})
    mm.update({"loss": 3.0, "acc": 70.0})
    assert str(mm) == "loss 3.0000 (2.0000) acc 70.0000 (60.0000)"
    with pytest.raises(TypeError):
        mm.update(1.0)


def test_setup_logger_files_and_idempotence(tmp_path, capsys):  # tests/conftest.py restores the root logger
    assert setup_logger(None) is None
    out = str(tmp_path / "run")
    f1 = setup_logger(out)
    assert f1 == os.path.join(out, "log.txt")
    logging.getLogger("engine.test").info("* accuracy: 81.0%")
    assert open(f1).read() == "* accuracy: 81.0%\n"  # plain format, flushed immediately
    assert "* accuracy: 81.0%" in capsys.readouterr().out

    f2 = setup_logger(out)  # an existing log.txt is continued after a marker line, not replaced
    assert f2 == f1
    root = logging.getLogger()
    ours = [h for h in root.handlers if type(h).__module__ == "engine.utils"]
    assert len(ours) == 2  # replaced, not added
    logging.getLogger("engine.test").info("second")
    first, marker, second = open(f1).read().splitlines()[0], *open(f1).read().splitlines()[-2:]
    assert first == "* accuracy: 81.0%" and second == "second"
    assert marker.startswith("===== ") and "continues this log" in marker
    assert capsys.readouterr().out.count("second") == 1
    logging.getLogger("engine.test").info("full config", extra=FILE_ONLY)  # file only, not the console
    assert "full config" in open(f1).read() and "full config" not in capsys.readouterr().out

    f3 = setup_logger(str(tmp_path / "custom.log"))
    assert f3 == str(tmp_path / "custom.log")


def test_read_image(tmp_path):
    p = str(tmp_path / "img.png")
    Image.new("L", (5, 4), color=7).save(p)
    img = read_image(p)
    assert img.mode == "RGB" and img.size == (5, 4)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(OSError, match="bad.jpg"):
        read_image(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(str(tmp_path / "missing.jpg"))
    # truncated JPEG: the decode error names the path
    good = io.BytesIO()
    Image.new("RGB", (64, 64), color=(1, 2, 3)).save(good, format="JPEG")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.getvalue()[:200])
    with pytest.raises(OSError, match="trunc.jpg"):
        read_image(str(trunc))


def test_format_duration_and_env():
    assert format_duration(0) == "0:00:00"
    assert format_duration(3661.9) == "1:01:01"
    assert format_duration(90000) == "25:00:00"
    info = collect_env_info()
    assert f"PyTorch: {torch.__version__}" in info and "Pillow" in info and "CUDA available" in info
