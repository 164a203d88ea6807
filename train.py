"""One run: CoOp-style flags -> config -> trainer -> train and/or test -> results files.

Example (zero-shot CLIP on Caltech101):
    python train.py --root DATA --trainer ZeroshotCLIP \
        --dataset-config-file configs/datasets/caltech101.yaml \
        --config-file configs/trainers/CoOp/vit_b16.yaml --output-dir output/zsclip --eval-only

A user mistake (unknown trainer, key or value, missing file or folder, a GPU that is not there)
ends with one `error: ...` message and exit status 2. Ctrl-C or SIGTERM stops the run; the state
after the last finished epoch is on disk, and the same command continues from there.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import yaml

import clip
import datasets  # noqa: F401  (registers the datasets)
import demo  # noqa: F401  (registers the demo CLIP and datasets)
import trainers  # noqa: F401  (registers the trainers)
from engine import TRAINER_REGISTRY, build_trainer, get_cfg_default
from engine.backbone import apply_preprocess
from engine.config import added_keys, cfg_to_yaml, merge_from_file, merge_from_list
from engine.data import DATASET_REGISTRY
from engine.errors import ConfigValueError, MissingFileError, UserError, run_cli
from engine.provenance import CARD_KEY, build_card
from engine.trainer import select_device
from engine.utils import FILE_ONLY, atomic_write_bytes, collect_env_info, mkdir_if_missing, set_random_seed, setup_logger

logger = logging.getLogger("train")

# Exceptions that are the user's mistake beyond engine.errors.UserError (clip/ imports nothing of ours).
USER_ERRORS = (clip.CheckpointError,)


class _UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise (for checking many command lines in one process)."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigValueError(f"invalid command line: {message}")


def build_parser(raise_on_error: bool = False) -> argparse.ArgumentParser:
    cls = _UsageParser if raise_on_error else argparse.ArgumentParser
    parser = cls(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=str, default="", help="path to the dataset root (DATASET.ROOT)")
    parser.add_argument("--output-dir", type=str, default="", help="output directory (OUTPUT_DIR)")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from (RESUME)")
    parser.add_argument(
        "--seed", type=int, default=None,
        help="random seed; values >= 0 fix it (SEED). Unlike the original, --seed 0 works and an omitted "
        "--seed leaves the config's SEED alone",
    )
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods (INPUT.TRANSFORMS)")
    parser.add_argument("--config-file", type=str, default="", help="path to the method's config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to the dataset's config file")
    parser.add_argument("--trainer", type=str, default="", help="name of the trainer (TRAINER.NAME)")
    parser.add_argument("--backbone", type=str, default="", help="name of the CNN backbone (MODEL.BACKBONE.NAME)")
    parser.add_argument("--head", type=str, default="", help="name of the head (MODEL.HEAD.NAME)")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load the model from this directory for eval-only")
    parser.add_argument("--load-epoch", type=int, help="load the weights of this epoch (default: model-best)")
    parser.add_argument(
        "--enhanced-base", type=str, default=None,
        help="TaskRes only: file of the tuned text projection for TaskRes* (TRAINER.TaskRes.ENHANCED_BASE); "
        "'none': the regular base",
    )
    parser.add_argument("--no-train", action="store_true", help="build the trainer (data, caches, model) and exit")
    parser.add_argument(
        "--check", action="store_true",
        help="check the run's settings (trainer, config files and keys, dataset name, backbone, GPU) without "
        "loading data or weights; exit 0 if it would start, 2 with the problem otherwise",
    )
    parser.add_argument(
        "--check-commands", metavar="FILE",
        help="like --check for many runs: FILE holds one JSON list of train.py arguments per line; prints one "
        'JSON line per run ({"ok": true} or {"ok": false, "error": "..."}); exit 2 if any run fails the check',
    )
    parser.add_argument(
        "opts", default=None, nargs=argparse.REMAINDER,
        help="modify config options as KEY VALUE pairs, after all flags",
    )
    return parser


def default_cfg(trainer_name: str = ""):
    """The engine defaults plus the keys of the trainer named `trainer_name` (none if empty)."""
    cfg = get_cfg_default()
    if trainer_name:
        extend = getattr(TRAINER_REGISTRY.get(trainer_name), "extend_cfg", None)
        if extend is not None:
            extend(cfg)
    return cfg


def other_trainers_keys(trainer_name: str) -> set[str]:
    """Config keys that other registered trainers add and `trainer_name`'s does not. A config file
    shared by several trainers (CoOp's configs also serve ZeroshotCLIP) may hold them: they are
    skipped, so that only the chosen trainer's keys are in the run's config."""
    base = get_cfg_default()
    own = added_keys(default_cfg(trainer_name), base) if trainer_name else set()
    others: set[str] = set()
    for name in TRAINER_REGISTRY.registered_names():
        if name != trainer_name:
            others |= added_keys(default_cfg(name), base)
    return others - own


def named_trainer(args: argparse.Namespace) -> str:
    """--trainer, else TRAINER.NAME from the KEY VALUE options or the config files."""
    if args.trainer:
        return args.trainer
    opts = args.opts or []
    for key, value in zip(opts[0::2], opts[1::2]):
        if key == "TRAINER.NAME":
            return str(value)
    for path in (args.config_file, args.dataset_config_file):
        if path and os.path.isfile(path):
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
            name = loaded.get("TRAINER", {}).get("NAME", "") if isinstance(loaded, dict) else ""
            if name:
                return str(name)
    return ""


def reset_cfg(cfg, args: argparse.Namespace) -> None:
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head
    enhanced_base = getattr(args, "enhanced_base", None)
    if enhanced_base is not None:  # TaskRes's flag (its original train.py has it)
        if "TaskRes" in cfg.TRAINER:
            cfg.TRAINER.TaskRes.ENHANCED_BASE = enhanced_base
        elif enhanced_base != "none":
            raise ConfigValueError(
                f"--enhanced-base is TaskRes's flag; trainer '{cfg.TRAINER.NAME}' has no enhanced base. Drop the flag."
            )


FLAG_KEYS = {  # config keys the command-line flags set (see reset_cfg)
    "root": "DATASET.ROOT", "output_dir": "OUTPUT_DIR", "resume": "RESUME", "seed": "SEED",
    "source_domains": "DATASET.SOURCE_DOMAINS", "target_domains": "DATASET.TARGET_DOMAINS",
    "transforms": "INPUT.TRANSFORMS", "trainer": "TRAINER.NAME", "backbone": "MODEL.BACKBONE.NAME",
    "head": "MODEL.HEAD.NAME",
}


@dataclass
class ResolvedConfig:
    """The run's frozen config, and what resolving it decided that the run's log should say."""

    cfg: Any
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def resolve_cfg(args: argparse.Namespace) -> ResolvedConfig:
    """defaults + the chosen trainer's keys -> dataset file -> method file -> flags -> KEY VALUE opts
    -> the backbone's preprocessing for INPUT keys left unset -> the trainer's own adjustments."""
    trainer_name = named_trainer(args)
    cfg = default_cfg(trainer_name)
    foreign = other_trainers_keys(trainer_name)
    explicit: set[str] = set()
    ignored: list[str] = []
    for path in (args.dataset_config_file, args.config_file):
        if path:
            report = merge_from_file(cfg, path, ignored=foreign)
            explicit.update(report.set_keys)
            ignored += [f"{key} (in {path})" for key in report.ignored]
    reset_cfg(cfg, args)
    explicit.update(key for flag, key in FLAG_KEYS.items() if getattr(args, flag) not in (None, "", []))
    report = merge_from_list(cfg, args.opts or [], ignored=foreign)
    explicit.update(report.set_keys)
    ignored += [f"{key} (command line)" for key in report.ignored]
    resolved = ResolvedConfig(cfg)
    if ignored:
        resolved.notes.append(f"Ignored keys of other trainers than {trainer_name or '(none)'}: {', '.join(ignored)}")
    trainer_cls = TRAINER_REGISTRY.get(trainer_name) if trainer_name else None
    if trainer_cls is not None and cfg.MODEL.BACKBONE.NAME:
        preprocess = trainer_cls.backbone_preprocess(cfg)
        if preprocess is not None:
            resolved.warnings += apply_preprocess(cfg, preprocess, explicit, cfg.MODEL.BACKBONE.NAME)
    if trainer_cls is not None:
        trainer_cls.adjust_cfg(cfg)
    cfg.freeze()
    return resolved


def setup_cfg(args: argparse.Namespace):
    """The run's frozen config (see `resolve_cfg`)."""
    return resolve_cfg(args).cfg


# ----------------------------------------------------------------------------- checks
def check_run(args: argparse.Namespace, cfg=None) -> None:
    """Everything about a run that can be checked without data or weights: raise a user error if it
    would fail to start. `--model-dir` is not checked (a sweep checks eval runs before training)."""
    cfg = cfg if cfg is not None else setup_cfg(args)
    if not cfg.TRAINER.NAME:
        raise ConfigValueError(
            "No trainer given: pass --trainer NAME (one of: "
            + ", ".join(sorted(TRAINER_REGISTRY.registered_names())) + ")."
        )
    trainer_cls = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    if not args.eval_only and not trainer_cls.has_training:
        raise ConfigValueError(f"{cfg.TRAINER.NAME} has nothing to train: run it with --eval-only.")
    trainer_cls.check_cfg(cfg)
    if not cfg.DATASET.NAME:
        raise ConfigValueError("No dataset given: pass --dataset-config-file configs/datasets/<name>.yaml.")
    DATASET_REGISTRY.get(cfg.DATASET.NAME)
    if cfg.DATASET.ROOT and not os.path.isdir(os.path.expanduser(cfg.DATASET.ROOT)):
        raise MissingFileError(
            f"Data root not found: {cfg.DATASET.ROOT} (--root / DATASET.ROOT). Point it at the folder that holds "
            "the datasets (DATASETS.md)."
        )
    clip.check_model_name(cfg.MODEL.BACKBONE.NAME)
    select_device(cfg)


@dataclass
class CheckOutcome:
    ok: bool
    error: str = ""


def check_commands(path: str) -> int:
    """`--check-commands FILE`: check each run (one JSON argument list per line); 0 if all pass, else 2."""
    if not os.path.isfile(path):
        raise MissingFileError(f"--check-commands: file not found: {path}")
    outcomes = [_check_one(line) for line in _json_lines(path)]
    for outcome in outcomes:
        print(json.dumps(outcome.__dict__), flush=True)
    return 0 if all(o.ok for o in outcomes) else 2


def _json_lines(path: str) -> Iterator[str]:
    with open(path) as f:
        yield from (line for line in f if line.strip())


def _check_one(line: str) -> CheckOutcome:
    try:
        argv = json.loads(line)
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ConfigValueError(f"expected a JSON list of strings, got {line.strip()[:80]}")
        check_run(build_parser(raise_on_error=True).parse_args(argv))
    except (UserError, *USER_ERRORS) as e:
        return CheckOutcome(False, str(e))
    return CheckOutcome(True)


# ----------------------------------------------------------------------------- the run
def changed_options(cfg) -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf that differs from `default_cfg()`, in tree order."""
    out: list[tuple[str, Any]] = []

    def walk(node, default, prefix: str) -> None:
        for key, value in node.items():
            ref = default.get(key) if default is not None else None
            if hasattr(value, "items"):
                walk(value, ref, f"{prefix}{key}.")
            elif ref is None or _plain(value) != _plain(ref):
                out.append((prefix + key, value))

    walk(cfg, default_cfg(cfg.TRAINER.NAME), "")
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def run_summary(cfg, args: argparse.Namespace) -> str:
    """The few lines the console shows about a run (the full config goes to log.txt and config.yaml)."""
    subsample = cfg.DATASET.SUBSAMPLE_CLASSES
    shots = f", {cfg.DATASET.NUM_SHOTS} shots" if cfg.DATASET.NUM_SHOTS > 0 else ""
    what = "evaluate" if args.eval_only else f"train {cfg.OPTIM.MAX_EPOCH} epochs"
    headline = (
        f"{cfg.TRAINER.NAME} on {cfg.DATASET.NAME} ({subsample} classes{shots}), backbone "
        f"{cfg.MODEL.BACKBONE.NAME or '(none)'}, seed {cfg.SEED}: {what} -> {cfg.OUTPUT_DIR}"
    )
    shown = {"TRAINER.NAME", "DATASET.NAME", "MODEL.BACKBONE.NAME", "OUTPUT_DIR", "SEED"}
    changed = [f"{k} {v}" for k, v in changed_options(cfg) if k not in shown]
    return "\n".join([
        headline,
        "Settings that differ from the defaults: " + (", ".join(changed) or "none"),
        f"Full config: {os.path.join(cfg.OUTPUT_DIR, 'config.yaml')}; log: {os.path.join(cfg.OUTPUT_DIR, 'log.txt')}",
    ])


def main(args: argparse.Namespace) -> dict | None:
    """One run, in-process (tests call this); errors propagate. The command line goes through `cli`."""
    resolved = resolve_cfg(args)
    cfg = resolved.cfg
    check_run(args, cfg)
    if args.check:
        print(f"OK: {cfg.TRAINER.NAME} on {cfg.DATASET.NAME} would start (data and weights not checked).")
        return None
    if cfg.SEED >= 0:
        set_random_seed(cfg.SEED)
    setup_logger(cfg.OUTPUT_DIR)
    logger.info(run_summary(cfg, args))
    for message in resolved.warnings:
        logger.warning(message)
    for message in resolved.notes:
        logger.info(message)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    logger.info("** Arguments **\n%s", "\n".join(f"{k}: {getattr(args, k)}" for k in sorted(vars(args))),
                extra=FILE_ONLY)
    logger.info("** Config **\n%s", cfg, extra=FILE_ONLY)
    mkdir_if_missing(cfg.OUTPUT_DIR)
    atomic_write_bytes(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg_to_yaml(cfg).encode("utf-8"))
    logger.info("Collecting env info ...\n%s", collect_env_info(), extra=FILE_ONLY)

    with clip.recording_texts() as prompts:
        trainer = build_trainer(cfg)
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        return save_results_with_card(trainer, prompts, args)
    if args.no_train:
        return None
    trainer.train()
    if trainer.last_test is not None:
        return save_results_with_card(trainer, prompts, args)
    return None


def backbone_file(name: str) -> str | None:
    """The CLIP weights file that MODEL.BACKBONE.NAME loads, or None when none is on this machine."""
    if name in clip.MODEL_FILES:
        candidate = os.path.join(clip.default_cache_dir(), clip.MODEL_FILES[name][0])
        return candidate if os.path.isfile(candidate) else None
    try:
        return clip.resolve_checkpoint(name) if name else None
    except clip.CheckpointError:
        return None


def save_results_with_card(trainer, prompts: list[str], args: argparse.Namespace) -> dict:
    """results.json with the provenance card (engine/provenance.py) under "provenance", in one atomic write
    (the runner takes a results.json as the sign that a run finished)."""
    card = build_card(trainer, prompts, backbone_file(trainer.cfg.MODEL.BACKBONE.NAME),
                      model_dir=args.model_dir or None, load_epoch=args.load_epoch, trained_here=not args.eval_only)
    return trainer.save_results(extra={CARD_KEY: card})


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (a sweep runner or a cluster stopping the job)."""

    signum = signal.SIGTERM


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted()


def cli(argv: list[str] | None = None) -> int:
    """The command line: user errors as one message (exit 2); Ctrl-C/SIGTERM end with how to continue."""
    args = build_parser().parse_args(argv)
    if args.check_commands:
        return run_cli(lambda: check_commands(args.check_commands), USER_ERRORS)
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return run_cli(lambda: main(args) and None, USER_ERRORS)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        command = shlex.join(["python", "train.py", *(sys.argv[1:] if argv is None else argv)])
        print(f"Stopped by {signal.Signals(signum).name}. To continue, run the same command again "
              f"(same --output-dir): {command}", file=sys.stderr)
        return 128 + int(signum)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(cli())
