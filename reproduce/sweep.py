"""Registry rows -> runner tasks (from each method's recipe in configs.py) -> one sweep -> our numbers.

Rows that share a recipe, shots, seeds, backbone and extra settings become one task: the recipe
task of configs.py with its dataset lists narrowed to what the rows need, the rows' seeds and shots,
and no grid search. The tasks run through the runner like any sweep (`runner.sweep.run_sweep`), so
they resume where they stopped and use GPU slots or SLURM. Before anything starts, each row whose
inputs are missing (recipe, trainer, data, backbone weights) is reported and left out.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import types
from dataclasses import dataclass, field

from reproduce.compare import Comparison, DataLists, collect, compare_rows, dataset_config_names, datasets_of
from reproduce.registry import Row
from runner.config import ConfigError, Task, build_pipeline, check_gpu_ids, deep_merge
from runner.sweep import SweepOptions, plan_sweep, run_sweep
from runner.tasks import TaskPlan
from runner.validate import check_jobs

__all__ = ["RunOptions", "Group", "group_rows", "run_rows"]

logger = logging.getLogger(__name__)


@dataclass
class RunOptions:
    data_root: str | None  # --root (published rows need it; demo rows default to the demo data folder)
    output: str  # runs under <output>/outputs, the runner's tables under <output>/results
    gpus: list[int] | None = None
    launcher: str | None = None
    cpu_workers: int | None = None


@dataclass
class Group:
    """Rows that one runner task reproduces."""

    name: str
    rows: list[Row]
    task: dict = field(default_factory=dict)
    lists: DataLists | None = None
    problem: str = ""  # why it cannot run (then `task` is empty)


def _group_key(row: Row) -> tuple:
    return (row.kind, row.recipe, row.protocol if row.mode != "xd" else "xd", row.shots, row.seeds, row.backbone,
            row.opts, row.trainer)


def _name(key: tuple) -> str:
    digest = hashlib.sha256(json.dumps(key, default=list).encode()).hexdigest()[:8]
    return f"repro_{key[1]}_{digest}"


def _ordered_union(reference: list[str], needed: list[str]) -> list[str]:
    return [d for d in reference if d in needed] + [d for d in dict.fromkeys(needed) if d not in reference]


def group_rows(rows: list[Row], module: types.ModuleType, options: RunOptions) -> list[Group]:
    """One group per runner task, each with its task dict or the reason it cannot run."""
    keyed: dict[tuple, list[Row]] = {}
    for row in rows:
        keyed.setdefault(_group_key(row), []).append(row)
    return [_build_group(_name(key), members, module, options) for key, members in keyed.items()]


def _build_group(name: str, rows: list[Row], module: types.ModuleType, options: RunOptions) -> Group:
    first = rows[0]
    group = Group(name, rows)
    recipe = getattr(module, first.recipe, None)
    if not isinstance(recipe, dict) or "train" not in recipe:
        group.problem = (f"recipe '{first.recipe}' is not a task in configs.py (the {first.method} recipe has not "
                         "been added there yet)")
        return group
    base = module.base
    demo = first.kind == "demo"
    lists = DataLists.from_data(base["demo"] if demo else base["data"])
    group.lists = lists
    needed = [d for r in rows for d in datasets_of(r, lists)]
    task = copy.deepcopy(recipe)
    merged = deep_merge(base, task)
    train = merged["train"]
    opts = list(train["opts"])
    if demo:
        d = merged["demo"]
        task.setdefault("train", {})["cfg"] = d.get("cfg") or train["cfg"]
        opts += list(d["opts"]) + list(d["trainer_opts"])
    opts += [*first.opts, "MODEL.BACKBONE.NAME", first.backbone]
    source = lists.xd_source
    data = {
        "b2n": {"datasets_base_to_new": _ordered_union(lists.base_to_new, needed)},
        "all": {"datasets_all": _ordered_union(lists.all, needed)},
        "xd": {"xd_source": source, "dg_datasets": lists.dg,
               "datasets_cross_dataset": _ordered_union(lists.cross_dataset, [d for d in needed if d != source])},
    }[first.mode]
    data["root"] = _data_root(demo, options)
    group.task = deep_merge(task, {
        "train": {"mode": first.mode, "shots": first.shots, "seeds": list(first.seeds), "opts": opts},
        "grid_search": {"params": []},
        "data": data,
    })
    if data["root"] is None:
        group.problem = "no data root: pass --root DATA (the folder holding the datasets, DATASETS.md)"
    else:
        group.problem = _missing_inputs(first, needed, data["root"], demo)
    return group


def _data_root(demo: bool, options: RunOptions) -> str | None:
    if options.data_root:
        return os.path.abspath(os.path.expanduser(options.data_root))
    if demo:
        from demo.make_data import default_demo_root

        return default_demo_root()
    return None


def _missing_inputs(row: Row, datasets: list[str], root: str, demo: bool) -> str:
    """What the row's runs would need and this machine lacks: data folders, backbone weights."""
    problems = []
    if not demo:
        problems += _missing_datasets(datasets, root)
    problems += _missing_backbone(row.backbone)
    return "; ".join(problems)


def _missing_datasets(datasets: list[str], root: str) -> list[str]:
    import datasets as _registered  # noqa: F401  (registers the dataset classes)
    from datasets.doctor import find_dataset_dir
    from engine.data import DATASET_REGISTRY

    by_config = {stem: name for name, stem in dataset_config_names().items()}
    problems, folders = [], []
    for ds in dict.fromkeys(datasets):
        name = by_config.get(ds)
        if name is None or name not in DATASET_REGISTRY:
            problems.append(f"dataset '{ds}' has no configs/datasets/{ds}.yaml naming a registered dataset")
            continue
        folder = find_dataset_dir(DATASET_REGISTRY.get(name), root)
        if not os.path.isdir(folder):
            folders.append(os.path.relpath(folder, root))
    if folders:
        problems.append(f"no data folder(s) {', '.join(folders)} under {root} (see DATASETS.md)")
    return problems


def _missing_backbone(name: str) -> list[str]:
    import clip
    import demo  # noqa: F401  (registers the demo CLIP's name, as train.py does)

    if name in clip.MODEL_FILES:
        path = os.path.join(clip.default_cache_dir(), clip.MODEL_FILES[name][0])
        if not os.path.isfile(path):
            return [f"no backbone weights {path} (download once: python -c \"import clip; clip.load('{name}')\")"]
        return []
    try:
        clip.check_model_name(name)
    except clip.CheckpointError as e:
        return [f"backbone {name!r}: {e}"]
    return []


# ----------------------------------------------------------------------------- running
def sweep_module(module: types.ModuleType, groups: list[Group], output: str) -> types.SimpleNamespace:
    """A sweep file for the runnable groups: configs.py's base with outputs under `output`, no mail."""
    base = deep_merge(module.base, {
        "output": {"root": os.path.join(output, "outputs"), "result": os.path.join(output, "results", "acc"),
                   "cost": os.path.join(output, "results", "cost"), "remove_dirs": []},
        "mail": {"host": ""},
    })
    gpu_ids = module.pipeline[0]["gpu_ids"] if getattr(module, "pipeline", None) else []
    ns = types.SimpleNamespace(base=base, **{g.name: g.task for g in groups})
    ns.pipeline = [dict(gpu_ids=gpu_ids, tasks=[g.name for g in groups])]
    return ns


def plan_groups(groups: list[Group], module: types.ModuleType, options: RunOptions) -> tuple[list[TaskPlan], bool]:
    """The runner's plans of the runnable groups; a group whose jobs fail the training script's
    check (an unregistered trainer, a bad key) gets that as its problem instead."""
    runnable = [g for g in groups if not g.problem]
    if not runnable:
        return [], False
    sweep = sweep_module(module, runnable, options.output)
    tasks: list[Task] = []
    for g in runnable:  # one at a time, so that a recipe the runner rejects only stops its own rows
        try:
            tasks += build_pipeline(sweep, [g.name], options.gpus, f"recipe '{g.rows[0].recipe}'")
        except ConfigError as e:
            g.problem = str(e)
    runnable = [g for g in runnable if not g.problem]
    if not runnable:
        return [], False
    use_cuda = check_gpu_ids(tasks, explicit=bool(options.gpus))
    plans = plan_sweep(tasks)
    env = {} if use_cuda else {"CUDA_VISIBLE_DEVICES": ""}
    by_name = {g.name: g for g in runnable}
    for problem in check_jobs([j for p in plans for j in p.jobs], env):
        group = by_name[problem.task]
        group.problem = "; ".join(filter(None, [group.problem, problem.error]))
    return [p for p in plans if not by_name[p.task.name].problem], use_cuda


def run_rows(rows: list[Row], module: types.ModuleType, options: RunOptions) -> list[Comparison]:
    """Run what the rows need (skipping rows whose inputs are missing) and compare."""
    groups = group_rows(rows, module, options)
    try:
        plans, use_cuda = plan_groups(groups, module, options)
    except ConfigError as e:
        raise ConfigError(f"The rows' recipes do not make a valid sweep: {e}") from None
    for g in groups:
        if g.problem:
            logger.warning("Rows %s cannot run: %s", ", ".join(r.id for r in g.rows), g.problem)
    if plans:
        sweep_options = SweepOptions(use_cuda=use_cuda, cpu_workers=options.cpu_workers, launcher=options.launcher,
                                     mail=False, progress=False)
        run_sweep(plans, sweep_options)
    plan_of = {p.task.name: p for p in plans}
    out: list[Comparison] = []
    by_id: dict[str, Comparison] = {}
    for g in groups:
        if g.problem:
            for r in g.rows:
                by_id[r.id] = Comparison(r, None, f"cannot run: {g.problem}")
            continue
        plan = plan_of[g.name]
        found = collect([j.output_dir for j in plan.jobs])
        for c in compare_rows(g.rows, found, g.lists):
            by_id[c.row.id] = c
    for r in rows:
        out.append(by_id[r.id])
    return out
