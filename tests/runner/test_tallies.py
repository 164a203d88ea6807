"""Accuracy and cost tables from hand-made results.json files, and the plots."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from runner.plots import plot_accuracy_vs_cost, plot_grid_search
from runner.tallies import (TOTAL_ROW, ZeroShotReference, accuracy_table, cost_table, harmonic_mean, headline,
                            write_point_tables)
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
            peak_memory_mb=500.0, train_step_memory_mb=40.0, trainable_params=8192)
    df = accuracy_table("b2n", plan.jobs, [1, 2], task.cfg["data"])
    assert list(df.dataset) == ["caltech101", "eurosat", "average"]  # the originals' order, then average
    assert list(df.columns) == ["dataset", "base_acc_pct_seed1", "base_acc_pct_seed2", "new_acc_pct_seed1",
                                "new_acc_pct_seed2", "H_pct_seed1", "H_pct_seed2", "base_acc_pct", "new_acc_pct", "H_pct",
                                "base_acc_pct_std", "new_acc_pct_std", "H_pct_std"]  # no zero-shot runs: no zs_*
    e = df.set_index("dataset")
    assert e.loc["eurosat", "H_pct_seed1"] == pytest.approx(18.0)
    assert e.loc["eurosat", "base_acc_pct"] == 85.0 and e.loc["eurosat", "new_acc_pct"] == 15.0
    assert e.loc["eurosat", "H_pct"] == pytest.approx(round(2 * 85 * 15 / 100, 2))
    assert e.loc["eurosat", "base_acc_pct_std"] == pytest.approx(round(np.std([90, 80], ddof=1), 2))
    # The average row: base 75, new 40 -> H = HM(75, 40) = 52.17, not mean(H) = (65 + 25.5) / 2.
    assert e.loc["average", "base_acc_pct"] == 75.0 and e.loc["average", "new_acc_pct"] == 40.0
    assert e.loc["average", "H_pct"] == pytest.approx(52.17)
    mean_of_h = (e.loc["caltech101", "H_pct"] + e.loc["eurosat", "H_pct"]) / 2
    assert abs(e.loc["average", "H_pct"] - mean_of_h) > 5
    assert e.loc["average", "H_pct_seed1"] == pytest.approx(round(harmonic_mean(75.0, 35.0), 2))

    cost = cost_table("b2n", plan.jobs, [1, 2], task.cfg["data"])
    # Each quantity: its seeds, then mean and std side by side; units in the names.
    assert list(cost.columns[:9]) == ["dataset", "train_time_s_seed1", "train_time_s_seed2", "train_time_s",
                                      "train_time_s_std", "base_test_time_s_seed1", "base_test_time_s_seed2",
                                      "base_test_time_s", "base_test_time_s_std"]
    assert {"new_test_time_s", "peak_memory_mb", "peak_memory_mb_std", "train_step_memory_mb", "trainable_params",
            "trainable_params_std"} <= set(cost.columns)
    c = cost.set_index("dataset")
    assert c.loc["eurosat", "train_time_s_seed2"] == 20.0 and c.loc["eurosat", "train_time_s"] == 15.0
    assert c.loc["eurosat", "train_time_s_std"] == pytest.approx(round(np.std([10, 20], ddof=1), 2))
    assert c.loc["average", "train_time_s"] == 15.0 and c.loc["average", "trainable_params"] == 8192
    assert c.loc["average", "peak_memory_mb"] == 500.0 and c.loc["average", "train_step_memory_mb"] == 40.0
    # Times add up over datasets (per seed: 10 + 10, 20 + 20); memory and parameter counts never do.
    assert c.loc[TOTAL_ROW, "train_time_s"] == 30.0 and c.loc[TOTAL_ROW, "new_test_time_s"] == 2.0
    assert c.loc[TOTAL_ROW, ["peak_memory_mb", "train_step_memory_mb", "trainable_params"]].isna().all()
    assert "total" not in c.index
    assert str(cost["trainable_params"].dtype) == "Int64"


def test_missing_result_leaves_a_visible_hole(tmp_path):
    task, plan = plan_for(tmp_path)
    for j in plan.jobs[1:]:
        put(j, accuracy=50.0)
    df = accuracy_table("b2n", plan.jobs, [1, 2], task.cfg["data"]).set_index("dataset")
    assert math.isnan(df.loc["eurosat", "base_acc_pct_seed1"]) and math.isnan(df.loc["average", "H_pct"])
    assert df.loc["caltech101", "H_pct"] == 50.0


def test_xd_table_averages_targets_and_dg_separately(tmp_path):
    task, plan = plan_for(tmp_path, mode="xd")
    values = {"imagenet": 70.0, "dtd": 40.0, "eurosat": 50.0, "imagenet_a": 30.0, "imagenetv2": 60.0}
    for j in plan.jobs:
        trains = j.role == "xd_source"
        put(j, accuracy=values[j.dataset] + j.seed, train_time_s=100.0 * j.seed if trains else None,
            test_time_s=2.0, peak_memory_mb=1.0, train_step_memory_mb=30.0 if trains else None, trainable_params=5)
    df = accuracy_table("xd", plan.jobs, [1, 2], task.cfg["data"])
    assert list(df.dataset) == ["imagenet", "dtd", "eurosat", "imagenetv2", "imagenet_a", "average_xd", "average_dg"]
    e = df.set_index("dataset")
    assert e.loc["average_xd", "acc_pct"] == 46.5 and e.loc["average_dg", "acc_pct"] == 46.5
    assert e.loc["average_xd", "acc_pct_seed1"] == 46.0 and e.loc["imagenet", "acc_pct_std"] == pytest.approx(0.71)
    cost = cost_table("xd", plan.jobs, [1, 2], task.cfg["data"]).set_index("dataset")
    # The one training run is counted once: its cost is the source row's; targets only have test cost.
    assert cost.loc["imagenet", "train_time_s"] == 150.0 and cost.loc["imagenet", "trainable_params"] == 5
    targets = ["dtd", "eurosat", "imagenetv2", "imagenet_a"]
    assert cost.loc[targets, ["train_time_s", "train_step_memory_mb", "trainable_params"]].isna().all().all()
    assert (cost.loc[targets, "test_time_s"] == 2.0).all()
    assert cost.loc["average", "train_time_s"] == 150.0 and cost.loc["average", "train_step_memory_mb"] == 30.0
    assert cost.loc[TOTAL_ROW, "train_time_s"] == 150.0 and cost.loc[TOTAL_ROW, "test_time_s"] == 10.0


def test_eval_only_cost_is_blank_where_nothing_trains(tmp_path):
    task, plan = plan_for(tmp_path, mode="all", trainer="ZeroshotCLIP", cfg="CoOp/vit_b16", eval_only=True)
    for j in plan.jobs:
        put(j, accuracy=60.0, train_time_s=None, test_time_s=3.0, peak_memory_mb=900.0, train_step_memory_mb=None,
            trainable_params=0)
    path = tmp_path / "cost.csv"
    cost_table("all", plan.jobs, [1, 2], task.cfg["data"]).to_csv(path, index=False)
    c = pd.read_csv(path, dtype=str, keep_default_na=False).set_index("dataset")  # the text a reader sees
    assert (c[["train_time_s_seed1", "train_time_s", "train_step_memory_mb"]] == "").all().all()  # blank, not 0
    assert c.loc["eurosat", "test_time_s"] == "3.0" and c.loc["eurosat", "trainable_params"] == "0"
    assert c.loc[TOTAL_ROW, "test_time_s"] == "6.0" and c.loc[TOTAL_ROW, "train_time_s"] == ""


def test_zero_shot_reference_columns(tmp_path):
    task, plan = plan_for(tmp_path)
    zs_runs = []
    for j in plan.jobs:
        sub = "base" if j.role == "train_base" else "new"
        put(j, accuracy=80.0 if sub == "base" else 60.0, dataset=j.dataset, subsample=sub, shots=16, seed=j.seed,
            backbone="ViT-B/16")
        zs_dir = tmp_path / "zs" / j.role / j.dataset / str(j.seed)
        zs_dir.mkdir(parents=True)
        # Zero-shot: 70 on base, 50 on new, except one new-class run of another backbone (must not be used).
        zs_acc = 70.0 if sub == "base" else 50.0 + j.seed
        (zs_dir / "results.json").write_text(json.dumps({"accuracy": zs_acc, "dataset": j.dataset, "subsample": sub,
                                                         "shots": 16, "seed": j.seed, "backbone": "ViT-B/16"}))
        zs_runs.append(str(zs_dir))
    other = tmp_path / "zs_other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"accuracy": 1.0, "dataset": "eurosat", "subsample": "new",
                                                    "shots": 16, "seed": 1, "backbone": "RN50"}))
    reference = ZeroShotReference.from_runs(zs_runs + [str(other)])
    df = accuracy_table("b2n", plan.jobs, [1, 2], task.cfg["data"], reference).set_index("dataset")
    assert list(df.columns[-3:]) == ["zs_base_acc_pct", "zs_new_acc_pct", "zs_H_pct"]
    assert df.loc["eurosat", "zs_base_acc_pct"] == 70.0 and df.loc["eurosat", "zs_new_acc_pct"] == 51.5
    assert df.loc["average", "zs_H_pct"] == pytest.approx(round(harmonic_mean(70.0, 51.5), 2))
    # Another shot count is not the same protocol: no reference.
    shots4 = ZeroShotReference({k.__class__(k.dataset, k.subsample, 4, k.seed, k.backbone): v
                                for k, v in reference.accuracies.items()})
    assert "zs_H_pct" not in accuracy_table("b2n", plan.jobs, [1, 2], task.cfg["data"], shots4).columns


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
    assert list(on_disk.columns) == ["dataset", "acc_pct_seed1", "acc_pct", "acc_pct_std"]
    assert list(on_disk.dataset) == ["caltech101", "dtd", "average"] and on_disk.acc_pct.iloc[2] == 54.5
    png = plot_grid_search("all", tables, ["shot"], str(tmp_path / "grid.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_accuracy_vs_cost_plot_has_one_point_per_task(tmp_path):
    from runner.plots import collect_methods

    for name, h, time_s, mem in (("coop", 70.0, 100.0, 30.0), ("skip", 75.0, 10.0, 5.0), ("zs", 60.0, None, None)):
        os.makedirs(tmp_path / "acc" / name)
        os.makedirs(tmp_path / "cost" / name)
        pd.DataFrame({"dataset": ["average"], "H_pct": [h], "H_pct_std": [1.5]}).to_csv(
            tmp_path / "acc" / name / "b2n-X-y.csv", index=False)
        pd.DataFrame({"dataset": ["average"], "train_time_s": [time_s], "train_time_s_std": [2.0],
                      "peak_memory_mb": [1000.0], "train_step_memory_mb": [mem],
                      "train_step_memory_mb_std": [0.5]}).to_csv(tmp_path / "cost" / name / "b2n-X-y.csv", index=False)
    methods = collect_methods(str(tmp_path / "acc"), str(tmp_path / "cost"), "b2n").set_index("task")
    assert methods.loc["coop", "accuracy"] == 70.0 and methods.loc["coop", "accuracy_std"] == 1.5
    assert methods.loc["skip", "train_time_s"] == 10.0 and methods.loc["skip", "train_time_s_std"] == 2.0
    # The memory axis is the memory training adds, not the whole-process peak (1000 MB for all three).
    assert methods.loc["coop", "train_step_memory_mb"] == 30.0 and methods.loc["skip", "train_step_memory_mb"] == 5.0
    assert math.isnan(methods.loc["zs", "train_time_s"])
    paths = plot_accuracy_vs_cost(str(tmp_path / "acc"), str(tmp_path / "cost"), "b2n")
    assert [os.path.basename(p) for p in paths] == ["b2n-accuracy_vs_training_time.png",
                                                    "b2n-accuracy_vs_training_memory.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_vtab_table_reports_best_and_last_epoch_and_group_means(tmp_path):
    groups = {"natural": ["vtab_cifar", "vtab_dtd"], "specialized": ["vtab_eurosat"],
              "structured": ["vtab_kitti", "vtab_dmlab", "vtab_smallnorb_azi"]}
    datasets = [d for members in groups.values() for d in members]
    (t,) = build(sweep_base(tmp_path), {"t": {"train": {"mode": "all", "trainer": "DyT", "cfg": "vit_b16_vtab",
                                                        "seeds": [1]},
                                             "data": {"datasets_all": datasets, "groups": groups}}})
    plan = expand_task(t)
    last = {"vtab_cifar": 60.0, "vtab_dtd": 70.0, "vtab_eurosat": 90.0, "vtab_kitti": 30.0, "vtab_dmlab": 40.0,
            "vtab_smallnorb_azi": 20.0}
    for j in plan.jobs:  # the best epoch is 2 points above the last one
        put(j, accuracy=last[j.dataset], best_epoch_accuracy=last[j.dataset] + 2.0, best_epoch=7)
    (point,) = plan.points
    acc, _ = write_point_tables("all", point, [1], t.cfg["data"])
    assert list(acc.columns) == ["dataset", "acc_pct_seed1", "best_acc_pct_seed1", "acc_pct", "best_acc_pct",
                                 "acc_pct_std", "best_acc_pct_std"]
    assert list(acc.dataset) == datasets + ["natural", "specialized", "structured", "average", "average_groups"]
    e = acc.set_index("dataset")
    assert e.loc["natural", "acc_pct"] == 65.0 and e.loc["specialized", "acc_pct"] == 90.0
    assert e.loc["structured", "acc_pct"] == 30.0
    assert e.loc["average", "acc_pct"] == pytest.approx(round(310 / 6, 2))  # the 6-task mean: 51.67
    assert e.loc["average_groups", "acc_pct"] == pytest.approx(round((65 + 90 + 30) / 3, 2))  # 61.67
    assert e.loc["average_groups", "best_acc_pct"] == pytest.approx(round((67 + 92 + 32) / 3, 2))
    assert e.loc["vtab_dtd", "best_acc_pct"] == 72.0
    head = headline("all", acc)
    assert head.row == "average_groups" and head.value == pytest.approx(61.67)


def test_groups_without_members_add_no_row_and_no_best_column_without_best(tmp_path):
    (t,) = build(sweep_base(tmp_path), {"t": {"train": {"mode": "all", "trainer": "CoOp", "cfg": "vit_b16",
                                                        "seeds": [1]},
                                             "data": {"datasets_all": ["dtd"], "groups": {"natural": ["dtd"],
                                                                                          "structured": ["kitti"]}}}})
    plan = expand_task(t)
    for j in plan.jobs:
        put(j, accuracy=50.0)
    acc = accuracy_table("all", plan.jobs, [1], t.cfg["data"])
    assert list(acc.dataset) == ["dtd", "natural", "average", "average_groups"]
    assert "best_acc_pct" not in acc.columns
