"""VTAB-1K through the runner with the stand-in trainer: the best-over-epochs and last-epoch
accuracies of each run's results.json, and the group means, land in the accuracy CSV."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import configs
import parallel_runner
from runner.config import ConfigError
from tests.runner.conftest import build, sweep_base, write_sweep


def test_dyt_vtab_sweep_tallies_best_and_last_epoch_with_group_means(tmp_path, fake_env):
    groups = {"natural": ["vtab_cifar", "vtab_dtd"], "specialized": ["vtab_eurosat"], "structured": ["vtab_kitti"]}
    task = {"train": {"mode": "all", "trainer": "DyT", "cfg": "vit_b16_vtab", "seeds": [1], "shots": -1,
                      "opts": ["OPTIM.MAX_EPOCH", "4"]},
            "data": {"datasets_all": [d for m in groups.values() for d in m], "groups": groups}}
    sweep = write_sweep(tmp_path / "s.py", sweep_base(tmp_path), {"dyt": task})
    assert parallel_runner.main(["--configs", str(sweep), "--no-mail", "--poll", "0.05"]) == 0
    results = {}
    for path in (tmp_path / "outputs" / "dyt").rglob("results.json"):
        rec = json.loads(path.read_text())
        results[rec["dataset"]] = rec
    (csv,) = (tmp_path / "results" / "acc" / "dyt").glob("*.csv")
    acc = pd.read_csv(csv).set_index("dataset")
    for ds, rec in results.items():
        assert acc.loc[ds, "acc_pct"] == rec["accuracy"]  # the last epoch (epoch 4)
        assert acc.loc[ds, "best_acc_pct"] == rec["best_epoch_accuracy"] == max(rec["accuracy_by_epoch"].values())
    natural = (results["vtab_cifar"]["best_epoch_accuracy"] + results["vtab_dtd"]["best_epoch_accuracy"]) / 2
    assert acc.loc["natural", "best_acc_pct"] == pytest.approx(natural, abs=0.006)  # the CSV rounds to 0.01
    group_mean = (natural + results["vtab_eurosat"]["best_epoch_accuracy"]
                  + results["vtab_kitti"]["best_epoch_accuracy"]) / 3
    assert acc.loc["average_groups", "best_acc_pct"] == pytest.approx(group_mean, abs=0.006)
    task_mean = sum(r["best_epoch_accuracy"] for r in results.values()) / 4
    assert acc.loc["average", "best_acc_pct"] == pytest.approx(task_mean, abs=0.006)


def test_shipped_dyt_tasks_group_all_19_vtab_tasks(tmp_path):
    (task,) = build(sweep_base(tmp_path), {"dyt_vtab": configs.dyt_vtab})
    groups = task.cfg["data"]["groups"]
    assert [len(groups[g]) for g in ("natural", "specialized", "structured")] == [7, 4, 8]
    assert sorted(d for m in groups.values() for d in m) == sorted(task.cfg["data"]["datasets_all"])


@pytest.mark.parametrize("groups, message", [({"natural": "vtab_cifar"}, "must map a row label to a list"),
                                             ({"average": ["vtab_cifar"]}, "reserved row label")])
def test_malformed_groups_are_refused(tmp_path, groups, message):
    with pytest.raises(ConfigError, match=message):
        build(sweep_base(tmp_path), {"t": {"train": {"mode": "all", "trainer": "DyT", "cfg": "vit_b16_vtab"},
                                           "data": {"datasets_all": ["vtab_cifar"], "groups": groups}}})
