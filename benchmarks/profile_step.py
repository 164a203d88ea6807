"""Where one training step of a trainer spends its time: torch.profiler's table by self CPU time.

    python -m benchmarks.profile_step --trainer SkipTuning [--classes 100] [--batch 4] [--top 15]
        [--steps 1] [--geometry vit_b16] [--mode exact|fast] [--out profile.txt]

The trainer is built exactly as `benchmarks.train_step` builds it (random ViT-B/16 weights, synthetic
classes, its recipe); one warm-up step, then `--steps` profiled steps (forward, backward, optimizer).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.train_step import GEOMETRIES, build, write_random_backbone
from engine.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", default="SkipTuning")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=1, help="profiled steps after one warm-up step")
    parser.add_argument("--top", type=int, default=15, help="rows of the table")
    parser.add_argument("--prec", choices=("fp16", "fp32", "amp"), default="fp32")
    parser.add_argument("--mode", choices=("exact", "fast"), default="exact",
                        help="fast: TRAIN.FAST_MODE (bf16 autocast on cpu), as benchmarks.train_step --mode fast")
    parser.add_argument("--geometry", choices=tuple(GEOMETRIES), default="vit_b16")
    parser.add_argument("--out", default="", help="also write the table here")
    return parser


def profile_events(args):
    """torch.profiler's per-operator totals (`key_averages()`) over `args.steps` training steps."""
    args.device = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        backbone_path = os.path.join(tmp, "backbone.pt")
        write_random_backbone(args.trainer, backbone_path, args.geometry, args.image_size)
        trainer = build(args.trainer, args, backbone_path, os.path.join(tmp, "out"), fast_mode=args.mode == "fast")
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    labels = torch.zeros(args.batch, dtype=torch.long)
    model = trainer.model
    trainer.set_model_mode("train")
    with trainer.autocast():
        model.prepare_training()
        inputs = model.image_prefix(images) if model.trains_on_image_prefix else images
    batch = {"img": inputs, "label": labels, "domain": torch.zeros_like(labels), "impath": [""] * args.batch}
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 1
    trainer.forward_backward(batch)  # warm-up: gradients and optimizer state allocated
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            trainer.forward_backward(batch)
    return prof.key_averages()


def profile_table(args) -> str:
    """The top-`args.top` operators of `args.steps` training steps by self CPU time."""
    return profile_events(args).table(sort_by="self_cpu_time_total", row_limit=args.top)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    table = profile_table(args)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    sys.exit(run_cli(main))
