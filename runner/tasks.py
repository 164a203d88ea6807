"""Task -> jobs: the originals' protocols as explicit `train.py` command lines with dependencies.

- ``b2n``: per dataset and seed, train on the base classes (its closing test gives the base
  accuracy), then evaluate the new classes from that model (an eval job depends on its own training job only).
- ``xd``: per seed, train on the source (ImageNet, all classes), then evaluate every target and
  domain-generalisation variant from that model.
- ``all``: per dataset and seed, train and test on all classes (few-shot, usually with a shot grid).

Paths keep the originals' layout (``<root>/<task>[/<alias>=<v>...]/train_base/<Trainer>/<dataset>/
shots<k>/<cfg>/seed<s>``) except that ``shots<k>`` is the shot count the run really uses.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass, field

from engine.layout import POINTER_NAME, checkpoint_name, parse_checkpoint_epoch
from runner.config import Task, dataset_config_path, resolve_data_root, trainer_config_path

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One `train.py` invocation."""

    key: str
    task: str
    argv: list[str]  # what follows the Python executable: [script, flags..., KEY VALUE...]
    output_dir: str
    dataset: str
    seed: int
    role: str  # train_base | test_new | xd_source | xd_target | all (| base_eval for eval-only trainers)
    grid: str = ""  # grid-search suffix, "" without grid search
    deps: list[str] = field(default_factory=list)
    pipeline: int = 0
    order: int = 0  # launch priority inside its pipeline

    @property
    def trains(self) -> bool:
        return "--eval-only" not in self.argv

    def command(self) -> str:
        """The job as planned (`--load-epoch last` until its training run has saved a checkpoint)."""
        return " ".join(["python", *self.argv])

    def check_argv(self) -> list[str]:
        """The arguments after the script for `train.py --check-commands`: the planned argv with a
        placeholder epoch for `--load-epoch last` (the check does not look at --model-dir, whose
        checkpoints do not exist before the training jobs ran)."""
        argv = list(self.argv[1:])
        if "--load-epoch" in argv:
            i = argv.index("--load-epoch") + 1
            if argv[i] == LAST_EPOCH:
                argv[i] = "1"
        return argv

    def launch_argv(self) -> list[str]:
        """argv with `--load-epoch last` replaced by the epoch its training run saved last
        (Skip Tuning, for one, trains fewer epochs on some datasets than its config says)."""
        argv = list(self.argv)
        if "--load-epoch" in argv:
            i = argv.index("--load-epoch") + 1
            if argv[i] == LAST_EPOCH:
                argv[i] = str(last_checkpoint_epoch(argv[argv.index("--model-dir") + 1]))
        return argv


@dataclass
class GridPoint:
    """The jobs of one grid-search combination (or of the whole task without grid search)."""

    suffix: str
    values: dict[str, str]
    root: str
    jobs: list[Job]
    acc_csv: str
    cost_csv: str


@dataclass
class TaskPlan:
    task: Task
    points: list[GridPoint]
    result_dir: str
    cost_dir: str

    @property
    def jobs(self) -> list[Job]:
        return [j for p in self.points for j in p.jobs]

    @property
    def prefix(self) -> str:
        t = self.task.train
        return f"{t['mode']}-{t['trainer']}-{os.path.basename(t['cfg'])}"


def job_key(argv: list[str]) -> str:
    """A stable key for a resolved command line."""
    return hashlib.sha256(json.dumps(argv).encode("utf-8")).hexdigest()[:20]


def grid_points(grid_search: dict) -> list[tuple[str, dict[str, str], list[str]]]:
    """[(suffix, {alias: value}, opts)] for each combination; [("", {}, [])] without grid search."""
    params = grid_search["params"]
    if not params:
        return [("", {}, [])]
    value_lists = [p["values"] for p in params]
    combos = list(zip(*value_lists)) if grid_search["mode"] == "sequential" or len(params) == 1 \
        else list(itertools.product(*value_lists))
    out = []
    for combo in combos:
        suffix = "_".join(f"{p['alias']}={v}" for p, v in zip(params, combo))
        opts = [tok for p, v in zip(params, combo) for tok in (p["name"], str(v))]
        out.append((suffix, {p["alias"]: str(v) for p, v in zip(params, combo)}, opts))
    return out


def last_opt(opts: list[str], key: str) -> str | None:
    """The value of the last `key` in a KEY VALUE list (later tokens win in yacs)."""
    value = None
    for k, v in zip(opts[0::2], opts[1::2]):
        if k == key:
            value = v
    return value


LAST_EPOCH = "last"  # --load-epoch placeholder, resolved when the eval job starts


def last_checkpoint_epoch(model_dir: str) -> int:
    """The epoch of the newest checkpoint a training run left in `model_dir` (Dassl layout:
    ``<model_dir>/<model name>/checkpoint`` naming ``model.pth.tar-<epoch>``)."""
    epochs = []
    if os.path.isdir(model_dir):
        for name in sorted(os.listdir(model_dir)):
            sub = os.path.join(model_dir, name)
            pointer = os.path.join(sub, POINTER_NAME)
            if os.path.isfile(pointer):
                with open(pointer) as f:
                    epoch = parse_checkpoint_epoch(f.readline().strip())
                epochs += [epoch] if epoch is not None else []
            elif os.path.isdir(sub):
                epochs += [e for e in map(parse_checkpoint_epoch, os.listdir(sub)) if e is not None]
    if not epochs:
        raise FileNotFoundError(
            f"No checkpoint under {model_dir} (expected <model>/checkpoint or <model>/{checkpoint_name(0)[:-1]}<epoch>). "
            "Did its training job save one? Set train.loadep to a fixed epoch to load a specific one."
        )
    return max(epochs)


def expand_task(task: Task, script: str | None = None) -> TaskPlan:
    """All jobs of `task`, grid point by grid point, in launch order."""
    cfg = task.cfg
    train, data, out = cfg["train"], cfg["data"], cfg["output"]
    script = script or cfg["runner"]["script"]
    trainer, cfg_name = train["trainer"], train["cfg"]
    cfg_dir = os.path.basename(cfg_name)
    root_base = os.path.join(os.path.abspath(out["root"]), task.name)
    result_dir = os.path.join(os.path.abspath(out["result"]), task.name)
    cost_dir = os.path.join(os.path.abspath(out["cost"]), task.name)
    data_root = resolve_data_root(cfg)
    trainer_yaml = trainer_config_path(train)
    eval_only = bool(train["eval_only"])
    prefix = f"{train['mode']}-{trainer}-{cfg_dir}"

    points: list[GridPoint] = []
    order = 0
    for suffix, values, grid_opts in grid_points(cfg["grid_search"]):
        root = os.path.join(root_base, suffix) if suffix else root_base
        opts_tail = [str(o) for o in [*grid_opts, *train["opts"]]]
        shot_opt = last_opt(opts_tail, "DATASET.NUM_SHOTS")
        shots = int(shot_opt) if shot_opt is not None else int(train["shots"])
        jobs: list[Job] = []

        def make(dataset: str, seed: int, role: str, out_dir: str, subsample: str,
                 model_dir: str | None = None, deps: list[str] | None = None, evaluate: bool = False) -> Job:
            nonlocal order
            dataset_yaml = dataset_config_path(dataset)
            argv = [script]
            if data_root is not None:
                argv += ["--root", data_root]
            argv += ["--seed", str(seed), "--trainer", trainer,
                     "--dataset-config-file", dataset_yaml, "--config-file", trainer_yaml, "--output-dir", out_dir]
            if model_dir is not None:
                epoch = str(int(train["loadep"])) if int(train["loadep"]) >= 0 else LAST_EPOCH
                argv += ["--model-dir", model_dir, "--load-epoch", epoch]
            if evaluate or model_dir is not None:
                argv += ["--eval-only"]
            argv += ["DATASET.NUM_SHOTS", str(train["shots"]), "DATASET.SUBSAMPLE_CLASSES", subsample, *opts_tail]
            job = Job(job_key(argv), task.name, argv, out_dir, dataset, int(seed), role, suffix,
                      list(deps or []), task.pipeline, order)
            order += 1
            jobs.append(job)
            return job

        def run_dir(*parts: str, dataset: str, seed: int) -> str:
            return os.path.join(root, *parts, trainer, dataset, f"shots{shots}", cfg_dir, f"seed{seed}")

        mode = train["mode"]
        if mode == "b2n":
            trained = {}
            for ds in data["datasets_base_to_new"]:
                for s in train["seeds"]:
                    trained[ds, s] = make(ds, s, "train_base", run_dir("train_base", dataset=ds, seed=s), "base",
                                          evaluate=eval_only)
            for ds in data["datasets_base_to_new"]:
                for s in train["seeds"]:
                    src = trained[ds, s]
                    make(ds, s, "test_new", run_dir("test_new", dataset=ds, seed=s), "new",
                         model_dir=None if eval_only else src.output_dir,
                         deps=[] if eval_only else [src.key], evaluate=True)
        elif mode == "xd":
            source = data["xd_source"]
            trained = {s: make(source, s, "xd_source", run_dir(dataset=source, seed=s), "all", evaluate=eval_only)
                       for s in train["seeds"]}
            for ds in data["datasets_cross_dataset"]:
                for s in train["seeds"]:
                    make(ds, s, "xd_target", run_dir(dataset=ds, seed=s), "all",
                         model_dir=None if eval_only else trained[s].output_dir,
                         deps=[] if eval_only else [trained[s].key], evaluate=True)
        else:
            for ds in data["datasets_all"]:
                for s in train["seeds"]:
                    make(ds, s, "all", run_dir(dataset=ds, seed=s), "all", evaluate=eval_only)
        name = f"{prefix}-{suffix}.csv" if suffix else f"{prefix}.csv"
        points.append(GridPoint(suffix, values, root, jobs, os.path.join(result_dir, name), os.path.join(cost_dir, name)))
    plan = TaskPlan(task, points, result_dir, cost_dir)
    keys = [j.key for j in plan.jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"Task '{task.name}' expands to duplicate commands; check its dataset lists and seeds for repeats.")
    return plan
