"""Accuracy and cost tables from hand-made results.json files, and the plots."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from runner.plots import plot_accuracy_vs_cost, plot_grid_search
from runner.tallies import accuracy_table, cost_table, harmonic_mean, write_point_tables
from runner.tasks import expand_task
from tests.runner.conftest import build, sweep_base


def put(job, **values):
    os.makedirs(job.output_dir, exist_ok=True)
    with open(os.path.join(job.output_dir, "results.json"), "w") as f:
        json.dump(values, f)


def plan_for(tmp_path, **train):
    task = {"train": {"trainer": "CoOp", "cfg": "vit_b16", "seeds": [1, 2], **train},
            "data": {"datasets_base_to_new": ["eurosat", "caltech101"], "datasets_all": ["eurosat", "caltech101"],
                     "datasets_cross_dataset": ["dtd", "eurosat", "imagenet_a", "imagenetv2"]}}
    (t,) = build(sweep_base(tmp_path), {"t": task})
    return t, expand_task(t)


def test_harmonic_mean():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 50.0) == 0.0
    assert math.isnan(harmonic_mean(float("nan"), 50.0))
    np.testing.assert_allclose(harmonic_mean(np.array([50.0, 90.0]), np.array([50.0, 10.0])), [50.0, 18.0])


def test_b2n_table_h_of_averages_and_std(tmp_path):
    task, plan = plan_for(tmp_path)
    # base/new per (dataset, seed): eurosat has a large base/new gap, caltech101 none.
    acc = {("eurosat", 1): (90.0, 10.0), ("eurosat", 2): (80.0, 20.0),
           ("caltech101", 1): (60.0, 60.0), ("caltech101", 2): (70.0, 70.0)}
    for j in plan.jobs:
        b, n = acc[j.dataset, j.seed]
        put(j, accuracy=b if j.role == "train_base" else n, train_time_s=10.0 * j.seed, test_time_s=1.0,
            peak_memory_mb=500.0, trainable_params=8192)
    df = accuracy_table("b2n", plan.jobs, [1, 2], task.cfg["data"])
    assert list(df.dataset) == ["caltech101", "eurosat", "average"]  # the originals' order, then average
    assert list(df.columns) == ["dataset", "base_acc_seed1", "base_acc_seed2", "new_acc_seed1", "new_acc_seed2",
                                "H_seed1", "H_seed2", "base_acc", "new_acc", "H", "base_acc_std", "new_acc_std", "H_std"]
    e = df.set_index("dataset")
    assert e.loc["eurosat", "H_seed1"] == pytest.approx(18.0)
    assert e.loc["eurosat", "base_acc"] == 85.0 and e.loc["eurosat", "new_acc"] == 15.0
    assert e.loc["eurosat", "H"] == pytest.approx(round(2 * 85 * 15 / 100, 2))
    assert e.loc["eurosat", "base_acc_std"] == pytest.approx(round(np.std([90, 80], ddof=1), 2))
    # The average row: base 75, new 40 -> H = HM(75, 40) = 52.17, not mean(H) = (65 + 25.5) / 2.
    assert e.loc["average", "base_acc"] == 75.0 and e.loc["average", "new_acc"] == 40.0
    assert e.loc["average", "H"] == pytest.approx(52.17)
    mean_of_h = (e.loc["caltech101", "H"] + e.loc["eurosat", "H"]) / 2
    assert abs(e.loc["average", "H"] - mean_of_h) > 5
    assert e.loc["average", "H_seed1"] == pytest.approx(round(harmonic_mean(75.0, 35.0), 2))

    cost = cost_table("b2n", plan.jobs, [1, 2], task.cfg["data"]).set_index("dataset")
    assert cost.loc["eurosat", "training_time_seed2"] == 20.0 and cost.loc["eurosat", "training_time"] == 15.0
    assert cost.loc["total", "training_time"] == 30.0 and cost.loc["average", "training_time"] == 15.0
    assert cost.loc["average", "parameter"] == 8192 and cost.loc["average", "peak_memory_mb"] == 500.0
    assert "new_test_time_seed1" in cost.columns
    assert str(cost["parameter"].dtype) == "Int64"


def test_missing_result_leaves_a_visible_hole(tmp_path):
    task, plan = plan_for(tmp_path)
    for j in plan.jobs[1:]:
        put(j, accuracy=50.0)
    df = accuracy_table("b2n", plan.jobs, [1, 2], task.cfg["data"]).set_index("dataset")
    assert math.isnan(df.loc["eurosat", "base_acc_seed1"]) and math.isnan(df.loc["average", "H"])
    assert df.loc["caltech101", "H"] == 50.0


def test_xd_table_averages_targets_and_dg_separately(tmp_path):
    task, plan = plan_for(tmp_path, mode="xd")
    values = {"imagenet": 70.0, "dtd": 40.0, "eurosat": 50.0, "imagenet_a": 30.0, "imagenetv2": 60.0}
    for j in plan.jobs:
        put(j, accuracy=values[j.dataset] + j.seed, train_time_s=None if j.role == "xd_target" else 100.0,
            test_time_s=2.0, peak_memory_mb=1.0, trainable_params=5)
    df = accuracy_table("xd", plan.jobs, [1, 2], task.cfg["data"])
    assert list(df.dataset) == ["imagenet", "dtd", "eurosat", "imagenetv2", "imagenet_a", "average_xd", "average_dg"]
    e = df.set_index("dataset")
    assert e.loc["average_xd", "acc"] == 46.5 and e.loc["average_dg", "acc"] == 46.5
    assert e.loc["average_xd", "acc_seed1"] == 46.0 and e.loc["imagenet", "acc_std"] == pytest.approx(0.71)
    cost = cost_table("xd", plan.jobs, [1, 2], task.cfg["data"]).set_index("dataset")
    assert cost.loc["imagenet", "training_time"] == 100.0 and cost.loc["dtd", "training_time"] == 0.0


def test_all_table_and_grid_plot(tmp_path):
    grid = {"params": [{"name": "DATASET.NUM_SHOTS", "alias": "shot", "values": [1, 4]}]}
    (t,) = build(sweep_base(tmp_path), {"t": {"train": {"mode": "all", "trainer": "CoOp", "cfg": "vit_b16", "seeds": [1]},
                                             "data": {"datasets_all": ["dtd", "caltech101"]}, "grid_search": grid}})
    plan = expand_task(t)
    tables = []
    for p in plan.points:
        for j in p.jobs:
            put(j, accuracy=50.0 + int(p.values["shot"]) + (j.dataset == "dtd"), train_time_s=3.0, test_time_s=1.0,
                peak_memory_mb=10.0, trainable_params=7)
        acc, _ = write_point_tables("all", p, [1], t.cfg["data"])
        tables.append((p.suffix, acc))
        assert os.path.isfile(p.acc_csv) and os.path.isfile(p.cost_csv)
    on_disk = pd.read_csv(plan.points[1].acc_csv)
    assert list(on_disk.columns) == ["dataset", "acc_seed1", "acc", "acc_std"]
    assert list(on_disk.dataset) == ["caltech101", "dtd", "average"] and on_disk.acc.iloc[2] == 54.5
    png = plot_grid_search("all", tables, ["shot"], str(tmp_path / "grid.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_accuracy_vs_cost_plot_has_one_point_per_task(tmp_path):
    from runner.plots import collect_methods

    for name, h, time_s in (("coop", 70.0, 100.0), ("skip", 75.0, 10.0)):
        os.makedirs(tmp_path / "acc" / name)
        os.makedirs(tmp_path / "cost" / name)
        pd.DataFrame({"dataset": ["average"], "H": [h]}).to_csv(tmp_path / "acc" / name / "b2n-X-y.csv", index=False)
        pd.DataFrame({"dataset": ["average"], "training_time": [time_s], "peak_memory_mb": [5.0]}).to_csv(
            tmp_path / "cost" / name / "b2n-X-y.csv", index=False)
    methods = collect_methods(str(tmp_path / "acc"), str(tmp_path / "cost"), "b2n")
    assert sorted(zip(methods.task, methods.accuracy, methods.training_time)) == [("coop", 70.0, 100.0), ("skip", 75.0, 10.0)]
    paths = plot_accuracy_vs_cost(str(tmp_path / "acc"), str(tmp_path / "cost"), "b2n")
    assert [os.path.basename(p) for p in paths] == ["b2n-accuracy_vs_training_time.png", "b2n-accuracy_vs_peak_memory.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)
