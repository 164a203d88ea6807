"""`reproduce check`: our number for a row from existing results.json files (mean, std, H, averages)."""
from __future__ import annotations

import json
import statistics

import pytest

from reproduce.__main__ import main
from reproduce.record import read_record


def write_result(folder, dataset: str, subsample: str, seed: int, accuracy: float, trained_on: str | None = None):
    folder.mkdir(parents=True)
    record = {"trainer": "CoOp", "backbone": "ViT-B/16", "shots": 16, "seed": seed, "dataset": dataset,
              "subsample": subsample, "accuracy": accuracy,
              "provenance": {"checkpoint": {"trained_on": trained_on or dataset}}}
    (folder / "results.json").write_text(json.dumps(record))


def hm(b: float, n: float) -> float:
    return 2 * b * n / (b + n)


def test_check_computes_mean_std_and_h_over_seeds(tmp_path, capsys):
    base, new = {1: 97.0, 2: 98.0, 3: 99.5}, {1: 85.0, 2: 86.0, 3: 84.0}
    for s in (1, 2, 3):
        write_result(tmp_path / "runs" / f"base{s}", "Caltech101", "base", s, base[s])
        write_result(tmp_path / "runs" / f"new{s}", "Caltech101", "new", s, new[s])
    record = tmp_path / "rec.csv"
    rows = ["coop-b2n-caltech101-*-skiptuning"]
    assert main(["--record", str(record), "check", str(tmp_path / "runs"), "--rows", *rows]) == 1  # new: 85.00 vs 89.31, tolerance 2
    out = capsys.readouterr().out
    done = read_record(str(record))
    assert done["coop-b2n-caltech101-base-skiptuning"].ours == pytest.approx(statistics.fmean(base.values()), abs=1e-4)
    assert done["coop-b2n-caltech101-base-skiptuning"].std == pytest.approx(statistics.stdev(base.values()), abs=1e-4)
    # H of the means, not the mean of per-seed H; its spread is that of the per-seed H.
    h = done["coop-b2n-caltech101-H-skiptuning"]
    assert h.ours == pytest.approx(hm(statistics.fmean(base.values()), statistics.fmean(new.values())), abs=1e-4)
    assert h.std == pytest.approx(statistics.stdev(hm(base[s], new[s]) for s in (1, 2, 3)), abs=1e-4)
    assert done["coop-b2n-caltech101-base-skiptuning"].within  # 98.17 vs 98.00, tolerance 2
    assert "98.17 ± 1.26 (3 seeds)" in out


def test_check_averages_the_dg_targets_of_an_imagenet_model(tmp_path, capsys):
    values = {"ImageNetV2": 64.0, "ImageNetSketch": 48.0, "ImageNetA": 50.0, "ImageNetR": 76.0}
    for s in (1, 2, 3):
        for name, acc in values.items():
            write_result(tmp_path / f"{name}{s}", name, "all", s, acc + s, trained_on="ImageNet")
    assert main(["--record", str(tmp_path / "rec.csv"), "check", str(tmp_path)]) in (0, 1)
    done = read_record(str(tmp_path / "rec.csv"))
    # Per seed the mean of the 4 targets is 59.5 + s; over seeds 61.5 with std 1.
    rec = done["coop-dg-averagedg-acc-skiptuning"]
    assert rec.ours == pytest.approx(61.5, abs=1e-6) and rec.std == pytest.approx(1.0, abs=1e-6)
    assert rec.within is False  # published 59.28 +- 1.0
    assert "coop-dg-imagenetv2-acc-cocoop" in done  # the per-target rows of another paper as well


def test_check_without_results_is_a_user_error(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: No results.json under")
    assert main(["check", str(tmp_path / "nope")]) == 2


def test_zero_shot_dg_rows_take_evaluations_without_a_trained_model(tmp_path):
    for name, acc in {"ImageNetV2": 60.83, "ImageNetSketch": 46.15, "ImageNetA": 47.77, "ImageNetR": 73.96}.items():
        folder = tmp_path / name
        folder.mkdir()
        record = {"trainer": "ZeroshotCLIP", "backbone": "ViT-B/16", "shots": 0, "seed": 1, "dataset": name,
                  "subsample": "all", "accuracy": acc, "provenance": {"checkpoint": {"trained_on": None}}}
        (folder / "results.json").write_text(json.dumps(record))
    assert main(["--record", str(tmp_path / "rec.csv"), "check", str(tmp_path)]) == 0
    done = read_record(str(tmp_path / "rec.csv"))
    assert sorted(done) == ["zeroshotclip-dg-imageneta-acc-cocoop", "zeroshotclip-dg-imagenetr-acc-cocoop",
                            "zeroshotclip-dg-imagenetsketch-acc-cocoop", "zeroshotclip-dg-imagenetv2-acc-cocoop"]
