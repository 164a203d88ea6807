"""The world one `scripts/<method>/*.sh` run uses, resolved from the sweep file the way
`python parallel_runner.py --cfg TASK` resolves it, printed as bash assignments for
`scripts/common.sh` to eval (so the demo settings live in configs.py only)::

    python -m runner.script_settings coop --dataset caltech101 -- OPTIM.MAX_EPOCH 1

Without a data root (``data.root`` None and $DATA unset) the task's ``demo`` settings apply: the
demo trainer config, the demo opts (demo CLIP, no loader workers), the demo output root, and a demo
dataset: a demo dataset asked for is used as is; any other name is replaced by the task's demo
dataset for its protocol (b2n: the first of ``datasets_base_to_new``; all: the first of
``datasets_all``; xd: ``xd_source`` for the source, the first domain-generalisation set for a
domain-generalisation target, else the first other cross-dataset target).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from types import ModuleType

import yaml

from runner.config import (REPO_ROOT, ConfigError, Task, build_task, deep_merge, load_sweep_module,
                           resolve_data_root, trainer_config_path)

DEMO_LISTS = ("datasets_base_to_new", "datasets_cross_dataset", "datasets_all", "dg_datasets")


@dataclass
class ScriptWorld:
    """What a script run uses: data root ('' = the demo world), dataset, config, opts, output root."""

    demo: bool
    root: str
    dataset: str  # the dataset to run on ('' when none was asked: xd_train)
    xd_source: str  # xd: the dataset the model is trained on
    cfg: str  # trainer config, as train.cfg in configs.py
    opts: list[str]  # the task's KEY VALUE opts (demo: + the demo opts)
    output_root: str
    note: str  # demo: what differs from the real run, for the scripts' first line; '' otherwise


def demo_dataset_names(task: Task) -> set[str]:
    """Every dataset of the task's demo world."""
    data = task.cfg["data"]
    return {data["xd_source"], *(name for key in DEMO_LISTS for name in data[key])}


def demo_choice(task: Task, real_data: dict, asked: str, role: str) -> str:
    """The demo dataset standing in for `asked` in `role` (b2n, all, xd_source or xd_target)."""
    if asked in demo_dataset_names(task):
        return asked
    data = task.cfg["data"]
    if role == "xd_source":
        return data["xd_source"]
    if role == "xd_target":
        if asked in real_data["dg_datasets"] and data["dg_datasets"]:
            return data["dg_datasets"][0]
        others = [d for d in data["datasets_cross_dataset"] if d not in data["dg_datasets"]]
        return (others or data["datasets_cross_dataset"])[0]
    return data["datasets_base_to_new" if role == "b2n" else "datasets_all"][0]


def flat_yaml(path: str) -> dict[str, object]:
    """A trainer config file as {'OPTIM.MAX_EPOCH': 10, ...}."""
    with open(path) as f:
        tree = yaml.safe_load(f) or {}
    flat: dict[str, object] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(tree, "")
    return flat


def describe_config(task: Task, opts: list[str]) -> str:
    """'demo CLIP, config CoOp/demo: fp32, 10 epochs' (the config file with `opts` applied)."""
    flat = flat_yaml(f"{REPO_ROOT}/{trainer_config_path(task.train)}")
    flat.update(zip(opts[0::2], opts[1::2]))
    parts = []
    backbone = flat.get("MODEL.BACKBONE.NAME")
    if backbone:
        parts.append(f"{backbone} CLIP")
    details = []
    precisions = {str(v) for k, v in flat.items() if k.startswith("TRAINER.") and k.endswith(".PREC")}
    if len(precisions) == 1:
        details.append(precisions.pop())
    epochs = flat.get("OPTIM.MAX_EPOCH")
    if epochs is not None and not task.train["eval_only"]:
        details.append(f"{epochs} epoch{'' if str(epochs) == '1' else 's'}")
    parts.append(f"config {task.train['cfg']}" + (f": {', '.join(details)}" if details else ""))
    return ", ".join(parts)


def dataset_note(label: str, used: str, asked: str) -> str:
    return f"{label} {used} as given" if used == asked else f"{label} {used} instead of {asked}"


def resolve(module: ModuleType, task_name: str, dataset: str = "", xd_source: str = "",
            user_opts: list[str] | None = None, source: str = "configs.py") -> ScriptWorld:
    """The world of one script run of `task_name`; `dataset`/`xd_source` as asked ('' = the task's)."""
    task = build_task(module, task_name, source=source)
    real_data = deep_merge(module.base, getattr(module, task_name))["data"]
    xd = task.mode == "xd"
    source_asked = xd_source or real_data["xd_source"]
    opts = [str(o) for o in task.train["opts"]]
    output_root = task.cfg["output"]["root"]
    if not task.demo:
        return ScriptWorld(False, resolve_data_root(task.cfg) or "", dataset, source_asked, task.train["cfg"],
                           opts, output_root, "")
    role = {"b2n": "b2n", "all": "all", "xd": "xd_target"}[task.mode]
    used = demo_choice(task, real_data, dataset, role) if dataset else ""
    source = demo_choice(task, real_data, source_asked, "xd_source") if xd else source_asked
    notes = [dataset_note("dataset", used, dataset)] if dataset else []
    if xd:
        notes.append(dataset_note("source dataset", source, source_asked))
    notes.append(describe_config(task, opts + list(user_opts or [])))
    return ScriptWorld(True, "", used, source, task.train["cfg"], opts, output_root, ", ".join(notes))


def shell_assignments(world: ScriptWorld) -> str:
    """The world as bash assignments (WORLD_*), every value quoted."""
    q = shlex.quote
    return "\n".join([
        f"WORLD_DEMO={int(world.demo)}",
        f"WORLD_ROOT={q(world.root)}",
        f"WORLD_DATASET={q(world.dataset)}",
        f"WORLD_XD_SOURCE={q(world.xd_source)}",
        f"WORLD_CFG={q(world.cfg)}",
        f"WORLD_OPTS=({' '.join(q(o) for o in world.opts)})",
        f"WORLD_OUTPUT={q(world.output_root)}",
        f"WORLD_NOTE={q(world.note)}",
    ])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s TASK [--dataset NAME] [--xd-source NAME] [-- KEY VALUE ...]")
    p.add_argument("task", help="task name in the sweep file, e.g. coop, coop_xd, coop_all")
    p.add_argument("--dataset", default="", help="the dataset the script was given ('' for none)")
    p.add_argument("--xd-source", default="", help="xd: the source dataset asked for (default: the task's)")
    p.add_argument("--configs", metavar="PATH", help="a sweep file (default: configs.py)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Print the world as bash assignments; argv: TASK [--dataset NAME] [--xd-source NAME] [-- KEY VALUE ...]."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    args.opts = argv[split + 1:]
    try:
        world = resolve(load_sweep_module(args.configs), args.task, args.dataset, args.xd_source, args.opts,
                        args.configs or "configs.py")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(shell_assignments(world))
    return 0


if __name__ == "__main__":
    sys.exit(main())
