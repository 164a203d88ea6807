"""Loading a sweep file (``configs.py`` or ``--configs PATH``): deep merge, validation, demo mode.

A sweep file defines a ``base`` dict, one dict per named task (merged over ``base``) and a
``pipeline`` list of ``{gpu_ids, tasks}``. Everything is checked here, before any job starts:
unknown keys, unknown task names, missing trainer/config files and missing password variables
are errors that name the input, what was expected and the fix.
"""
from __future__ import annotations

import copy
import difflib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("b2n", "xd", "all")
# Environment variable that supplies the data root when configs.py leaves data.root at None.
DATA_ENV = "DATA"
# Keys whose values are free-form dicts (not checked against base).
FREE_FORM = {("runner", "slurm", "additional"), ("data", "groups")}


class ConfigError(ValueError):
    """A sweep file that cannot run as written."""


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: dicts merge recursively, anything else (lists, sets, scalars) replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_keys(reference: dict, candidate: dict, where: str, path: tuple[str, ...] = ()) -> None:
    for key, value in candidate.items():
        if path + (key,) in FREE_FORM:
            continue
        if key not in reference:
            if path == ("mail",) and key == "password":
                raise ConfigError(
                    f"{where}: mail.password is not read from a sweep file (it would end up in git and logs). "
                    "Put the password in the environment variable named by mail.password_env "
                    "(default RUNNER_MAIL_PASSWORD) and delete the key."
                )
            close = difflib.get_close_matches(key, list(reference), n=3)
            dotted = ".".join(path + (key,))
            hint = f" Did you mean {', '.join('.'.join(path + (c,)) for c in close)}?" if close else ""
            raise ConfigError(
                f"{where}: unknown key '{dotted}'. Valid keys here: {sorted(reference)}.{hint}"
            )
        if isinstance(reference[key], dict) and value is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: '{'.'.join(path + (key,))}' must be a dict, got {value!r}.")
            _check_keys(reference[key], value, where, path + (key,))


@dataclass
class Task:
    """One task, merged over base and validated."""

    name: str
    cfg: dict
    pipeline: int = 0
    gpu_ids: list[int] = field(default_factory=list)
    demo: bool = False

    @property
    def train(self) -> dict:
        return self.cfg["train"]

    @property
    def mode(self) -> str:
        return self.cfg["train"]["mode"]


def load_sweep_module(path: str | None = None) -> ModuleType:
    """Import the sweep file: `path`, or the repository's ``configs.py``."""
    path = os.path.abspath(path or os.path.join(REPO_ROOT, "configs.py"))
    if not os.path.isfile(path):
        raise ConfigError(f"Sweep file not found: {path}. Pass --configs PATH to a file with base, tasks and pipeline.")
    spec = importlib.util.spec_from_file_location(f"_sweep_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    for name in ("base", "pipeline"):
        if not hasattr(module, name):
            raise ConfigError(f"Sweep file {path} defines no '{name}'. See configs.py for the schema.")
    return module


def task_names(module: ModuleType) -> list[str]:
    """Names of the module-level dicts that look like tasks (they have a `train` entry)."""
    return sorted(
        k for k, v in vars(module).items()
        if isinstance(v, dict) and not k.startswith("_") and k != "base" and "train" in v
    )


def resolve_data_root(cfg: dict) -> str | None:
    """data.root, else $DATA, else None (= the demo world)."""
    root = cfg["data"].get("root")
    if root:
        return os.path.expanduser(str(root))
    env = os.environ.get(DATA_ENV)
    return os.path.expanduser(env) if env else None


def build_task(module: ModuleType, name: str, pipeline: int = 0, gpu_ids: list[int] | None = None,
               source: str = "configs.py") -> Task:
    """Merge task `name` over base, apply demo mode when no data root is configured, validate."""
    raw = getattr(module, name, None)
    if not isinstance(raw, dict) or "train" not in raw or name == "base":
        raise ConfigError(
            f"Unknown task '{name}' in {source}. Tasks defined there: {task_names(module)}. "
            "A task is a module-level dict with a 'train' entry."
        )
    base = module.base
    where = f"task '{name}' in {source}"
    _check_keys(base, raw, where)
    cfg = deep_merge(base, raw)
    train = cfg["train"]
    for key in ("trainer", "cfg"):
        if not train.get(key):
            raise ConfigError(f"{where}: train.{key} is not set (e.g. trainer='CoOp', cfg='vit_b16_ep50').")
    if train["mode"] not in MODES:
        raise ConfigError(f"{where}: train.mode is {train['mode']!r}; expected one of {MODES}.")
    gs = cfg["grid_search"]
    if gs["mode"] not in ("sequential", "grid"):
        raise ConfigError(f"{where}: grid_search.mode is {gs['mode']!r}; expected 'sequential' or 'grid'.")
    for p in gs["params"]:
        if set(p) != {"name", "alias", "values"} or not p["values"]:
            raise ConfigError(
                f"{where}: each grid_search.params entry needs exactly name, alias and a non-empty values list; "
                f"got {p!r}."
            )
    if gs["mode"] == "sequential" and len({len(p["values"]) for p in gs["params"]}) > 1:
        raise ConfigError(f"{where}: grid_search.mode 'sequential' zips the value lists, which must have equal length.")
    for key in cfg["output"]["remove_dirs"]:
        if key not in ("root", "result", "cost"):
            raise ConfigError(f"{where}: output.remove_dirs holds {key!r}; expected names among 'root', 'result', 'cost'.")

    _check_groups(cfg["data"].setdefault("groups", {}), where)
    demo = resolve_data_root(cfg) is None
    if demo:
        d = cfg["demo"]
        for key in ("datasets_base_to_new", "datasets_cross_dataset", "datasets_all", "xd_source", "dg_datasets"):
            cfg["data"][key] = copy.deepcopy(d[key])
        train["seeds"] = list(d["seeds"])
        if d.get("cfg"):
            train["cfg"] = d["cfg"]
        train["opts"] = list(train["opts"]) + list(d["opts"]) + list(d["trainer_opts"])
        cfg["output"] = deep_merge(cfg["output"], d["output"])
    cfg["name"] = name
    task = Task(name=name, cfg=cfg, pipeline=pipeline, gpu_ids=list(gpu_ids or []), demo=demo)
    check_files(task)
    return task


def _check_groups(groups: Any, where: str) -> None:
    """data.groups: {label: [dataset, ...]}, each label a new row of the accuracy table."""
    ok = isinstance(groups, dict) and all(
        isinstance(k, str) and isinstance(v, (list, tuple)) and all(isinstance(d, str) for d in v)
        for k, v in groups.items())
    if not ok:
        raise ConfigError(f"{where}: data.groups must map a row label to a list of dataset names, "
                          f"e.g. dict(natural=['vtab_cifar', 'vtab_dtd']); got {groups!r}.")
    clash = {"average", "average_xd", "average_dg"} & set(groups)
    if clash:
        raise ConfigError(f"{where}: data.groups uses the reserved row label(s) {sorted(clash)}; rename the group.")


def trainer_config_path(train: dict) -> str:
    """configs/trainers/<Trainer>/<cfg>.yaml; a cfg with a '/' is taken relative to configs/trainers."""
    cfg = train["cfg"]
    rel = f"{cfg}.yaml" if "/" in cfg else f"{train['trainer']}/{cfg}.yaml"
    return os.path.join("configs", "trainers", rel)


def dataset_config_path(dataset: str) -> str:
    return os.path.join("configs", "datasets", f"{dataset}.yaml")


def check_files(task: Task) -> None:
    """Every trainer and dataset config a task's jobs will name exists (checked before anything starts)."""
    data = task.cfg["data"]
    datasets = {
        "b2n": data["datasets_base_to_new"],
        "xd": [data["xd_source"], *data["datasets_cross_dataset"]],
        "all": data["datasets_all"],
    }[task.mode]
    missing = [p for p in [trainer_config_path(task.train)] + [dataset_config_path(d) for d in datasets]
               if not os.path.isfile(os.path.join(REPO_ROOT, p))]
    if missing:
        raise ConfigError(
            f"Task '{task.name}'{' (demo mode)' if task.demo else ''} names config files that do not exist: {missing}. "
            "Fix train.trainer / train.cfg or the dataset lists in the sweep file."
        )


def build_pipeline(module: ModuleType, only: list[str] | None = None, gpu_ids: list[int] | None = None,
                   source: str = "configs.py") -> list[Task]:
    """The tasks to run, each with its pipeline index and GPU ids.

    With `only` (``--cfg``), just those tasks, in one pipeline, on `gpu_ids` or the GPUs of the
    first pipeline entry that lists them (else the first entry's)."""
    pipeline = module.pipeline
    if not isinstance(pipeline, list) or not all(isinstance(p, dict) and set(p) == {"gpu_ids", "tasks"} for p in pipeline):
        raise ConfigError(f"{source}: pipeline must be a list of dicts with exactly 'gpu_ids' and 'tasks'.")
    tasks: list[Task] = []
    problems: list[str] = []  # every task is checked, so one run of the runner names every problem

    def add(name: str, index: int, ids: list[int]) -> None:
        try:
            tasks.append(build_task(module, name, index, ids, source))
        except ConfigError as e:
            problems.append(str(e))

    if only:
        for name in only:
            ids = gpu_ids
            if ids is None:
                owner = next((p for p in pipeline if name in p["tasks"]), pipeline[0] if pipeline else {"gpu_ids": []})
                ids = owner["gpu_ids"]
            add(name, 0, ids)
    else:
        for i, p in enumerate(pipeline):
            for name in p["tasks"]:
                add(name, i, p["gpu_ids"] if gpu_ids is None else gpu_ids)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems in {source}:\n" + "\n".join(f"- {p}" for p in problems))
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{source}: task(s) {dupes} appear more than once; each task's jobs would collide.")
    return tasks


def check_gpu_ids(tasks: list[Task], device_count: int | None = None, explicit: bool = False) -> bool:
    """True when the tasks' GPU ids are to be used, False for CPU slots; a ConfigError when they cannot be.

    `explicit`: the ids come from ``--gpus`` (the user asked for them on this machine), not from
    the sweep file's pipeline. Ids the machine does not have are an error; so is ``--gpus`` on a
    machine without CUDA. A sweep file's ``gpu_ids`` on a machine without CUDA (configs.py's
    default ``[0]`` on a laptop) fall back to CPU slots: the sweep says so when it starts."""
    wanted = sorted({g for t in tasks for g in t.gpu_ids}, key=str)
    if not wanted:
        return False  # nothing asks for a GPU: CPU slots, and no need to import torch
    if device_count is None:
        device_count = cuda_device_count()
    where = "--gpus" if explicit else "gpu_ids in the pipeline"
    if device_count == 0:
        if explicit:
            raise ConfigError(
                f"--gpus {' '.join(map(str, wanted))} asks for GPU(s), but this machine has no usable CUDA device "
                "(check `nvidia-smi` and that torch was built with CUDA). Leave out --gpus to run on CPU slots."
            )
        return False
    for t in tasks:
        bad = [g for g in t.gpu_ids if not isinstance(g, int) or isinstance(g, bool) or g < 0 or g >= device_count]
        if bad:
            raise ConfigError(
                f"Task '{t.name}' asks for GPU id(s) {bad} ({where}), but this machine has {device_count} CUDA "
                f"device(s) (ids 0..{device_count - 1}). Fix {where}."
            )
    return True


def cuda_device_count() -> int:
    """CUDA devices torch can use here (0 without CUDA); imports torch only when called."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def get_by_path(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node
