"""Rows that cannot run here are reported one by one (missing data, weights, recipe), never crashed on."""
from __future__ import annotations

from reproduce.__main__ import main
from tests.conftest import REPO_ROOT


def test_rows_without_data_weights_or_recipe_are_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path / "no_weights"))  # so ViT-B/16 is surely not cached
    data = tmp_path / "data"
    data.mkdir()
    rows = ["coop-b2n-average-H-skiptuning", "maple-b2n-average-H-skiptuning", "dyt-vtab-average-acc-vitb16in21k-dyt"]
    # A sweep file like configs.py without the MaPLe and DyT recipes (rows whose method has no task yet).
    sweep = tmp_path / "sweep.py"
    sweep.write_text((REPO_ROOT / "configs.py").read_text() + "\nglobals().pop('maple', None)\nglobals().pop('dyt_vtab', None)\n")
    status = main(["--record", str(tmp_path / "rec.csv"), "run", *rows, "--root", str(data),
                   "--output", str(tmp_path / "out"), "--configs", str(sweep)])
    captured = capsys.readouterr()
    assert status == 1 and "Traceback" not in captured.err
    lines = {line.split()[0]: line for line in captured.out.splitlines() if line.split()}
    for row in rows:
        assert "no number" in lines[row], lines
    out = captured.out
    # CoOp: its recipe exists; every one of the 11 datasets is missing, and the ViT-B/16 file.
    assert f"no data folder(s) imagenet, sun397, stanford_cars, oxford_flowers, food-101, ucf101, caltech-101, " \
        f"fgvc_aircraft, dtd, oxford_pets, eurosat under {data}" in out
    assert f"no backbone weights {tmp_path}/no_weights/ViT-B-16.pt" in out
    # MaPLe and DyT: no recipe in that sweep file.
    assert "recipe 'maple' is not a task in configs.py" in out
    assert "recipe 'dyt_vtab' is not a task in configs.py" in out
    assert not (tmp_path / "out" / "outputs").exists()  # nothing was started


def test_missing_root_folder_is_a_user_error(tmp_path, capsys):
    assert main(["run", "coop-b2n-average-H-skiptuning", "--root", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --root {tmp_path / 'nope'}: no such folder")


def test_row_whose_trainer_is_not_registered_says_so(tmp_path, monkeypatch, capsys):
    # The `maple` recipe names a trainer that is not registered (as for a method whose recipe lands first);
    # the data folder and a (dummy) weights file are there, so the trainer is what stops the row.
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "ViT-B-16.pt").write_bytes(b"")
    monkeypatch.setenv("CLIP_CACHE_DIR", str(weights))
    (tmp_path / "data" / "caltech-101").mkdir(parents=True)
    sweep = tmp_path / "sweep.py"
    sweep.write_text((REPO_ROOT / "configs.py").read_text() + "\nmaple = dict(train=dict(trainer='MaPLeNext', cfg='CoOp/vit_b16'))\n")
    status = main(["--record", str(tmp_path / "rec.csv"), "run", "maple-b2n-caltech101-base-skiptuning",
                   "--root", str(tmp_path / "data"), "--output", str(tmp_path / "out"), "--configs", str(sweep)])
    out = capsys.readouterr().out
    assert status == 1
    assert "maple-b2n-caltech101-base-skiptuning" in out and "no number (1)" in out
    assert "(1) cannot run: " in out and "MaPLeNext" in out and "Traceback" not in out
