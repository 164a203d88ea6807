"""Task expansion: commands, paths, dependencies and grid search for each mode."""
from __future__ import annotations

import os

import pytest

from runner.tasks import expand_task, grid_points, last_checkpoint_epoch
from tests.runner.conftest import build, sweep_base


def plan_of(tmp_path, task: dict, **base_overrides):
    (task,) = build(sweep_base(tmp_path, **base_overrides), {"t": task})
    return expand_task(task)


def flag(job, name):
    return job.argv[job.argv.index(name) + 1]


def test_b2n_trains_base_then_evaluates_new_from_its_own_model(tmp_path):
    plan = plan_of(tmp_path, {"train": {"trainer": "CoOp", "cfg": "vit_b16_ep50", "seeds": [1, 2], "opts": ["X.Y", "3"]},
                              "data": {"datasets_base_to_new": ["dtd", "caltech101"]}})
    jobs = plan.jobs
    assert [j.role for j in jobs] == ["train_base"] * 4 + ["test_new"] * 4
    root = tmp_path / "outputs" / "t"
    train = jobs[0]
    assert train.output_dir == str(root / "train_base/CoOp/dtd/shots16/vit_b16_ep50/seed1")
    assert train.argv[:3] == ["tests/runner/fake_train.py", "--root", "/data/none"]
    assert flag(train, "--config-file") == "configs/trainers/CoOp/vit_b16_ep50.yaml"
    assert flag(train, "--dataset-config-file") == "configs/datasets/dtd.yaml"
    assert train.argv[-6:] == ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base", "X.Y", "3"]
    assert "--eval-only" not in train.argv and not train.deps
    new = jobs[4]
    assert new.output_dir == str(root / "test_new/CoOp/dtd/shots16/vit_b16_ep50/seed1")
    assert flag(new, "--model-dir") == train.output_dir and flag(new, "--load-epoch") == "last"
    assert "--eval-only" in new.argv and "new" in new.argv
    assert new.deps == [train.key]  # its own training job, not a barrier
    assert jobs[7].deps == [jobs[3].key]
    assert len({j.key for j in jobs}) == 8
    assert plan.points[0].acc_csv == str(tmp_path / "results/acc/t/b2n-CoOp-vit_b16_ep50.csv")
    assert plan.points[0].cost_csv == str(tmp_path / "results/cost/t/b2n-CoOp-vit_b16_ep50.csv")


def test_xd_trains_the_source_per_seed_and_evaluates_every_target(tmp_path):
    plan = plan_of(tmp_path, {"train": {"mode": "xd", "trainer": "CoOp", "cfg": "vit_b16", "seeds": [1, 2]}})
    jobs = plan.jobs
    sources = [j for j in jobs if j.role == "xd_source"]
    targets = [j for j in jobs if j.role == "xd_target"]
    assert [j.dataset for j in sources] == ["imagenet", "imagenet"] and len(targets) == 14 * 2
    assert sources[0].output_dir == str(tmp_path / "outputs/t/CoOp/imagenet/shots16/vit_b16/seed1")
    sketch2 = next(j for j in targets if j.dataset == "imagenet_sketch" and j.seed == 2)
    assert sketch2.output_dir == str(tmp_path / "outputs/t/CoOp/imagenet_sketch/shots16/vit_b16/seed2")
    assert flag(sketch2, "--model-dir") == sources[1].output_dir and sketch2.deps == [sources[1].key]
    assert all("all" == flag(j, "DATASET.SUBSAMPLE_CLASSES") for j in jobs)


def test_few_shot_grid_puts_the_real_shot_count_in_the_path(tmp_path):
    plan = plan_of(tmp_path, {"train": {"mode": "all", "trainer": "CoOp", "cfg": "vit_b16", "seeds": [1]},
                              "data": {"datasets_all": ["dtd"]},
                              "grid_search": {"params": [{"name": "DATASET.NUM_SHOTS", "alias": "shot", "values": [1, 4]}]}})
    assert [p.suffix for p in plan.points] == ["shot=1", "shot=4"]
    (job,) = plan.points[1].jobs
    assert job.output_dir == str(tmp_path / "outputs/t/shot=4/CoOp/dtd/shots4/vit_b16/seed1")
    # The grid value comes after the default, so it wins in yacs.
    assert job.argv[-6:] == ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "all", "DATASET.NUM_SHOTS", "4"]
    assert "--eval-only" not in job.argv and not job.deps
    assert plan.points[1].acc_csv.endswith("results/acc/t/all-CoOp-vit_b16-shot=4.csv")


def test_grid_modes():
    params = [{"name": "A.B", "alias": "a", "values": [1, 2]}, {"name": "C.D", "alias": "c", "values": [0.1, 0.2]}]
    seq = grid_points({"mode": "sequential", "params": params})
    assert [s for s, _, _ in seq] == ["a=1_c=0.1", "a=2_c=0.2"]
    assert seq[0][2] == ["A.B", "1", "C.D", "0.1"]
    grid = grid_points({"mode": "grid", "params": params})
    assert [s for s, _, _ in grid] == ["a=1_c=0.1", "a=1_c=0.2", "a=2_c=0.1", "a=2_c=0.2"]
    assert grid_points({"mode": "grid", "params": []}) == [("", {}, [])]


def test_grid_search_on_b2n_nests_the_protocol_under_each_point(tmp_path):
    plan = plan_of(tmp_path, {"train": {"trainer": "CoOp", "cfg": "vit_b16", "seeds": [1]},
                              "data": {"datasets_base_to_new": ["dtd"]},
                              "grid_search": {"params": [{"name": "OPTIM.LR", "alias": "lr", "values": [0.1, 0.2]}]}})
    assert len(plan.jobs) == 4
    new = plan.points[1].jobs[1]
    assert new.output_dir == str(tmp_path / "outputs/t/lr=0.2/test_new/CoOp/dtd/shots16/vit_b16/seed1")
    assert new.deps == [plan.points[1].jobs[0].key]


def test_zero_shot_tasks_are_eval_only_without_dependencies(tmp_path):
    plan = plan_of(tmp_path, {"train": {"trainer": "ZeroshotCLIP", "cfg": "CoOp/vit_b16", "eval_only": True, "seeds": [1]},
                              "data": {"datasets_base_to_new": ["dtd"]}})
    base, new = plan.jobs
    assert base.output_dir == str(tmp_path / "outputs/t/train_base/ZeroshotCLIP/dtd/shots16/vit_b16/seed1")
    assert flag(base, "--config-file") == "configs/trainers/CoOp/vit_b16.yaml"
    assert all("--eval-only" in j.argv and "--model-dir" not in j.argv and not j.deps for j in (base, new))


def test_demo_mode_omits_root_and_adds_demo_opts(tmp_path, monkeypatch):
    monkeypatch.delenv("DATA", raising=False)
    plan = plan_of(tmp_path, {"train": {"trainer": "CoOp", "cfg": "vit_b16"}, "demo": {"cfg": "CoOp/demo"}},
                   data_root=None)
    job = plan.jobs[0]
    assert "--root" not in job.argv and "MODEL.BACKBONE.NAME" in job.argv
    assert job.dataset == "demo_shapes" and "/demo/seed1" in job.output_dir


def test_load_epoch_last_resolves_from_the_checkpoint_pointer(tmp_path):
    plan = plan_of(tmp_path, {"train": {"trainer": "CoOp", "cfg": "vit_b16", "seeds": [1]},
                              "data": {"datasets_base_to_new": ["dtd"]}})
    train, new = plan.jobs
    with pytest.raises(FileNotFoundError, match="No checkpoint under"):
        new.launch_argv()
    os.makedirs(os.path.join(train.output_dir, "prompt_learner"))
    for e in (1, 5):
        open(os.path.join(train.output_dir, "prompt_learner", f"model.pth.tar-{e}"), "w").close()
    assert last_checkpoint_epoch(train.output_dir) == 5
    with open(os.path.join(train.output_dir, "prompt_learner", "checkpoint"), "w") as f:
        f.write("model.pth.tar-5\n")
    argv = new.launch_argv()
    assert argv[argv.index("--load-epoch") + 1] == "5"
    assert new.argv[new.argv.index("--load-epoch") + 1] == "last"  # the key's command is unchanged
    fixed = plan_of(tmp_path, {"train": {"trainer": "CoOp", "cfg": "vit_b16", "seeds": [1], "loadep": 7},
                               "data": {"datasets_base_to_new": ["dtd"]}})
    assert fixed.jobs[1].launch_argv()[fixed.jobs[1].argv.index("--load-epoch") + 1] == "7"
