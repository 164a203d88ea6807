"""What the frozen-feature cache saves: a full evaluation and a training epoch, with and without it.

    python -m benchmarks.feature_cache --trainer CoOp ZeroshotCLIP [--images 64] [--classes 8]
        [--batch 32] [--train-batch 8] [--geometry vit_b16|tiny] [--device cpu|cuda] [--eval-only]
        [--json out.json]

A folder of --images random JPEG images (256 px, decoded and transformed as real data are) and a
random CLIP with the geometry (nothing is downloaded); each trainer is built by the real code path
with its recipe and precision key and a fresh cache folder. Measured per trainer, in one process:

* evaluation (`trainer.test()` over all images): uncached (FEATURE_CACHE.ENABLED False), the first
  cached run (computes and writes the cache) and a second one in a new trainer (reads it from
  disk); `eval_logits_equal` says whether the cached logits equal the uncached ones (torch.equal).
* one training epoch (`run_epoch`, trainers that train): with the recipe's random augmentation
  (the encoder runs, as the original), and with a deterministic transform (INPUT.TRANSFORMS
  ("normalize",)) uncached, building the cache, and reading it.

Only cost is measured, never accuracy. Wall times on a shared machine vary: compare the ratios.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

import trainers  # noqa: F401  (registers the methods)
from benchmarks.train_step import GEOMETRIES, REPO_ROOT, text_table, write_random_clip
from engine import TRAINER_REGISTRY
from engine.errors import ConfigValueError, run_cli
from engine.registry import closest_matches

DATASET_NAME = "BenchmarkImages"
DETERMINISTIC = ["INPUT.TRANSFORMS", "('normalize',)"]


def write_images(folder: str, n_images: int, n_classes: int) -> list[tuple[str, int]]:
    """`n_images` random 256x256 JPEGs (smooth noise, so they decode like photos), labels round-robin."""
    rng = np.random.RandomState(0)
    os.makedirs(folder, exist_ok=True)
    items = []
    for i in range(n_images):
        small = rng.randint(0, 256, size=(16, 16, 3), dtype=np.uint8)
        path = os.path.join(folder, f"img_{i:05d}.jpg")
        Image.fromarray(small).resize((256, 256), Image.BICUBIC).save(path, quality=90)
        items.append((path, i % n_classes))
    return items


def register_image_dataset(items: list[tuple[str, int]]) -> None:
    from engine.data import DATASET_REGISTRY, DatasetBase, Datum

    class BenchmarkImages(DatasetBase):
        def __init__(self, cfg) -> None:
            data = [Datum(path, label, 0, f"object {label}") for path, label in items]
            super().__init__(train_x=data, val=data, test=data)

    DATASET_REGISTRY.register(BenchmarkImages, force=True)


def build(name: str, args, clip_path: str, out_dir: str, cache_dir: str, *opts: str):
    import train
    from engine import build_trainer
    from engine.utils import set_random_seed

    trainer_cls = TRAINER_REGISTRY.get(name)
    argv = [
        "--trainer", name, "--seed", "1", "--output-dir", out_dir,
        "--config-file", os.path.join(REPO_ROOT, "configs", "trainers", f"{trainer_cls.recipe}.yaml"),
        "DATASET.NAME", DATASET_NAME,
        "MODEL.BACKBONE.NAME", clip_path,
        "INPUT.SIZE", f"({args.image_size}, {args.image_size})",
        "DATALOADER.NUM_WORKERS", str(args.workers),
        "DATALOADER.TRAIN_X.BATCH_SIZE", str(args.train_batch),
        "DATALOADER.TEST.BATCH_SIZE", str(args.batch),
        "OPTIM.MAX_EPOCH", "1",
        "USE_CUDA", str(args.device == "cuda"),
        "FEATURE_CACHE.DIR", cache_dir,
        trainer_cls.precision_key, args.prec,
        *opts,
    ]
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    set_random_seed(1)
    return build_trainer(cfg)


def _seconds(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _epoch_seconds(trainer) -> float:
    trainer.epoch, trainer.max_epoch = 0, 1
    trainer.before_epoch()
    return _seconds(trainer.run_epoch)


def measure(name: str, args, clip_path: str, tmp: str) -> dict[str, Any]:
    cache_dir = os.path.join(tmp, f"cache_{name}")
    out = os.path.join(tmp, f"out_{name}")

    def fresh(*opts: str):
        return build(name, args, clip_path, out, cache_dir, *opts)

    record: dict[str, Any] = {"trainer": name, "images": args.images, "classes": args.classes, "batch": args.batch,
                              "train_batch": args.train_batch, "geometry": args.geometry,
                              "image_size": args.image_size, "device": args.device, "prec": args.prec}
    uncached = fresh("FEATURE_CACHE.ENABLED", "False")
    record["eval_uncached_s"] = _seconds(uncached.test)
    logits = uncached.last_test["logits"]
    first = fresh()
    record["eval_cache_build_s"] = _seconds(first.test)
    second = fresh()
    record["eval_cache_hit_s"] = _seconds(second.test)
    record["eval_cache_use"] = second.feature_cache_use.get("test", "not used")
    record["eval_logits_equal"] = bool(torch.equal(second.last_test["logits"], logits))
    if TRAINER_REGISTRY.get(name).has_training and not args.eval_only:
        record["epoch_recipe_augmentation_s"] = _epoch_seconds(fresh())
        record["epoch_deterministic_uncached_s"] = _epoch_seconds(fresh(*DETERMINISTIC, "FEATURE_CACHE.ENABLED", "False"))
        record["epoch_deterministic_cache_build_s"] = _epoch_seconds(fresh(*DETERMINISTIC))
        hit = fresh(*DETERMINISTIC)
        record["epoch_deterministic_cache_hit_s"] = _epoch_seconds(hit)
        record["epoch_cache_use"] = hit.feature_cache_use.get("train_x", "not used")
    return record


def format_table(records: list[dict]) -> str:
    header = ["trainer", "what", "uncached s", "cache build s", "cache hit s", "hit speed-up"]
    rows = []
    for r in records:
        rows.append([r["trainer"], f"eval ({r['images']} images)", f"{r['eval_uncached_s']:.2f}",
                     f"{r['eval_cache_build_s']:.2f}", f"{r['eval_cache_hit_s']:.2f}",
                     f"{r['eval_uncached_s'] / r['eval_cache_hit_s']:.1f}x"])
        if "epoch_deterministic_uncached_s" in r:
            rows.append([r["trainer"], "epoch, deterministic transform", f"{r['epoch_deterministic_uncached_s']:.2f}",
                         f"{r['epoch_deterministic_cache_build_s']:.2f}", f"{r['epoch_deterministic_cache_hit_s']:.2f}",
                         f"{r['epoch_deterministic_uncached_s'] / r['epoch_deterministic_cache_hit_s']:.1f}x"])
            rows.append([r["trainer"], "epoch, recipe augmentation", f"{r['epoch_recipe_augmentation_s']:.2f}",
                         "-", "-", "-"])
    return text_table(header, rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", nargs="+", default=["CoOp", "ZeroshotCLIP"], help="registered trainer names")
    parser.add_argument("--images", type=int, default=64, help="images in the (train = test) split")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32, help="evaluation batch size")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="DATALOADER.NUM_WORKERS")
    parser.add_argument("--image-size", type=int, default=None, help="default: 224 (vit_b16), 32 (tiny)")
    parser.add_argument("--geometry", choices=tuple(GEOMETRIES), default="vit_b16")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prec", choices=("fp16", "fp32", "amp"), default=None,
                        help="precision (default: fp16 on cuda, as the originals; fp32 on cpu)")
    parser.add_argument("--eval-only", action="store_true", help="measure evaluation only, no training epoch")
    parser.add_argument("--json", default="", help="write the records here")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    args.prec = args.prec or ("fp16" if args.device == "cuda" else "fp32")
    args.image_size = args.image_size or (224 if args.geometry == "vit_b16" else 32)
    names = list(TRAINER_REGISTRY.registered_names())
    for name in args.trainer:
        if name not in names:
            hint = closest_matches(name, names)
            raise ConfigValueError(f"--trainer {name!r}: expected registered trainers from {names}."
                                   + (f" Did you mean: {', '.join(hint)}?" if hint else ""))
    if args.images < 1 or args.classes < 1 or args.batch < 1 or args.train_batch < 1:
        raise ConfigValueError("--images, --classes, --batch and --train-batch must be >= 1.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError("--device cuda: no CUDA device is usable here; use --device cpu.")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        clip_path = os.path.join(tmp, "clip.pt")
        write_random_clip(clip_path, args.geometry, args.image_size)
        register_image_dataset(write_images(os.path.join(tmp, "images"), args.images, args.classes))
        records = [measure(name, args, clip_path, tmp) for name in args.trainer]
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    return records


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main() and None))
