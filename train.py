"""One run: CoOp-style flags -> config -> trainer -> train and/or test -> results files.

Example (zero-shot CLIP on Caltech101):
    python train.py --root DATA --trainer ZeroshotCLIP \
        --dataset-config-file configs/datasets/caltech101.yaml \
        --config-file configs/trainers/CoOp/vit_b16.yaml --output-dir output/zsclip --eval-only
"""
from __future__ import annotations

import argparse
import logging
import os

import torch

import datasets  # noqa: F401  (registers the datasets)
import trainers  # noqa: F401  (registers the trainers)
from engine import TRAINER_REGISTRY, build_trainer, get_cfg_default
from engine.config import cfg_to_yaml, merge_from_file, merge_from_list
from engine.utils import collect_env_info, mkdir_if_missing, set_random_seed, setup_logger
from trainers.common import resolve_input_size

logger = logging.getLogger("train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--no-train", action="store_true", help="build the trainer (data, caches, model) and exit")
    parser.add_argument(
        "opts", default=None, nargs=argparse.REMAINDER,
        help="modify config options as KEY VALUE pairs, after all flags",
    )
    return parser


def extend_cfg(cfg) -> None:
    """Add every registered trainer's TRAINER.<NAME>.* keys, so any trainer config merges."""
    for name in TRAINER_REGISTRY.registered_names():
        extend = getattr(TRAINER_REGISTRY.get(name), "extend_cfg", None)
        if extend is not None:
            extend(cfg)


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


def setup_cfg(args: argparse.Namespace):
    """defaults -> trainer keys -> dataset file -> method file -> flags -> KEY VALUE opts."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        merge_from_file(cfg, args.dataset_config_file)
    if args.config_file:
        merge_from_file(cfg, args.config_file)
    reset_cfg(cfg, args)
    merge_from_list(cfg, args.opts or [])
    resolve_input_size(cfg)  # the demo CLIP's input size comes from its checkpoint unless set
    cfg.freeze()
    return cfg


def main(args: argparse.Namespace) -> dict | None:
    cfg = setup_cfg(args)
    if cfg.SEED >= 0:
        set_random_seed(cfg.SEED)
    setup_logger(cfg.OUTPUT_DIR)
    if cfg.SEED >= 0:
        logger.info("Setting fixed seed: %d", cfg.SEED)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True

    logger.info("** Arguments **")
    for key in sorted(vars(args)):
        logger.info("%s: %s", key, getattr(args, key))
    logger.info("** Config **\n%s", cfg)
    mkdir_if_missing(cfg.OUTPUT_DIR)
    _write_text_atomic(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg_to_yaml(cfg))
    logger.info("Collecting env info ...\n%s", collect_env_info())

    trainer = build_trainer(cfg)
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        return trainer.save_results()
    if args.no_train:
        return None
    trainer.train()
    if trainer.last_test is not None:
        return trainer.save_results()
    return None


def _write_text_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main(build_parser().parse_args())
