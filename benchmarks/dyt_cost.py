"""DyT's cost against the plain ViT it tunes, side by side in one run (random weights, nothing read).

    python -m benchmarks.dyt_cost [--arch vit_base_patch16_224] [--batch 8] [--eval-batch 32]
        [--steps 3] [--rate 0.49] [--threads N] [--json out.json]

* Training step: full fine-tuning of the ViT (AdamW on every parameter, CE) against DyT's step
  (`DyTViT.training_step`: the dynamic and the complete pass, the released code's four loss terms,
  AdamW on the adapters, dispatchers and head), and against DyT's one-pass step (DISTILL False: the
  March 2024 loss, CE + rate on the dynamic pass only); and DyT's step against the original's own
  full-tuning baseline (`--fulltune` of its main_vtab.py: the same model and two-pass loss with every
  parameter trainable). Median wall time over --steps after one warm-up step.
* Inference: the plain ViT's forward against DyT's real-skipping forward at activation rate --rate
  (the paper's trained rate, ~0.49). Random dispatchers keep about half of the tokens by chance, so
  the rate is forced: one calibration pass on the benchmark batch shifts each dispatcher's bias by
  the (1 - rate) quantile of its logits, layer after layer, so that a fraction `rate` of the patch
  tokens has a positive logit (the measured rate is printed). Images per second, median of --steps.
* FLOPs per image of both inference paths (torch's FlopCounterMode, multiply-adds x 2; explicit
  attention, as fused CPU attention is not counted) give the speed-up the FLOPs allow.

CPU, fp32; on a shared machine the times vary from run to run: ratios come from the same run.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from engine.errors import ConfigValueError, run_cli
from trainers.backbones import explicit_attention
from trainers.dyt import DyTSettings, DyTViT


@dataclass
class DyTCost:
    """One run's measurements; times in seconds, throughput in images per second."""

    arch: str
    batch: int
    eval_batch: int
    threads: int
    full_ft_step_s: float
    dyt_step_s: float
    step_speedup: float
    dyt_one_pass_step_s: float  # DISTILL False: the March 2024 loss, the dynamic pass only
    one_pass_step_speedup: float
    fulltune_step_s: float  # DyT's loss with every parameter trainable (the original's --fulltune)
    fulltune_step_speedup: float
    full_ft_trainable_params: int
    dyt_trainable_params: int
    activation_rate: float
    vit_images_per_s: float
    dyt_images_per_s: float
    inference_speedup: float
    vit_gflops_per_image: float
    dyt_gflops_per_image: float
    flops_ratio: float


def median_time(fn: Callable[[], None], steps: int) -> float:
    """Median wall time of `fn` over `steps` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def full_ft_step(vit: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    optim = torch.optim.AdamW(vit.parameters(), lr=1e-5, weight_decay=1e-4)

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        F.cross_entropy(vit(images), labels).backward()
        optim.step()
    return step


def dyt_step(model: DyTViT, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        model.training_step(images, labels).loss.total.backward()
        optim.step()
    return step


@torch.no_grad()
def force_activation_rate(model: DyTViT, images: torch.Tensor, rate: float) -> float:
    """Shift every dispatcher's bias so that a fraction `rate` of the patch tokens of `images` is kept
    (one pass; each layer is calibrated on the inputs the calibrated layers before it give). Returns
    the rate the skipping path then measures on `images`."""
    def shift(module: nn.Linear, _inputs, out: torch.Tensor) -> torch.Tensor:
        q = torch.quantile(out.flatten().float(), 1.0 - rate)
        module.bias -= q
        return out - q

    model.eval()
    hooks = [b.mlp_token_select.mlp_head.register_forward_hook(shift) for b in model.vit.blocks]
    try:
        model.run(images, "dynamic")
    finally:
        for h in hooks:
            h.remove()
    return float(model.run(images, "skip").gates.mean())


def gflops_per_image(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward(images)
    return counter.get_total_flops() / images.shape[0] / 1e9


def measure(arch: str, batch: int, eval_batch: int, steps: int, rate: float, image_size: int = 224,
            classes: int = 100) -> DyTCost:
    torch.manual_seed(0)
    vit = timm.create_model(arch, pretrained=False, num_classes=classes, img_size=image_size)
    model = DyTViT(copy.deepcopy(vit), DyTSettings())
    one_pass = DyTViT(copy.deepcopy(vit), DyTSettings(distill=False))
    size = vit.patch_embed.img_size
    images = torch.randn(batch, 3, *size)
    labels = torch.randint(0, classes, (batch,))
    vit.train()
    model.train()
    ft_s = median_time(full_ft_step(vit, images, labels), steps)
    dyt_s = median_time(dyt_step(model, images, labels), steps)
    one_pass.train()
    one_pass_s = median_time(dyt_step(one_pass, images, labels), steps)
    del one_pass
    fulltune = DyTViT(copy.deepcopy(vit), DyTSettings()).requires_grad_(True).train()
    fulltune_s = median_time(dyt_step(fulltune, images, labels), steps)
    del fulltune

    eval_images = torch.randn(eval_batch, 3, *size)
    vit.eval()
    measured_rate = force_activation_rate(model, eval_images, rate)  # leaves the model in eval mode
    model.real_skip = True
    with torch.no_grad():
        vit_s = median_time(lambda: vit(eval_images), steps)
        dyt_eval_s = median_time(lambda: model(eval_images), steps)
    with explicit_attention(vit), explicit_attention(model.vit):
        vit_gf = gflops_per_image(vit, eval_images)
        dyt_gf = gflops_per_image(model, eval_images)
    return DyTCost(
        arch=arch, batch=batch, eval_batch=eval_batch, threads=torch.get_num_threads(),
        full_ft_step_s=ft_s, dyt_step_s=dyt_s, step_speedup=ft_s / dyt_s,
        dyt_one_pass_step_s=one_pass_s, one_pass_step_speedup=ft_s / one_pass_s,
        fulltune_step_s=fulltune_s, fulltune_step_speedup=fulltune_s / dyt_s,
        full_ft_trainable_params=sum(p.numel() for p in vit.parameters() if p.requires_grad),
        dyt_trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        activation_rate=measured_rate, vit_images_per_s=eval_batch / vit_s,
        dyt_images_per_s=eval_batch / dyt_eval_s, inference_speedup=vit_s / dyt_eval_s,
        vit_gflops_per_image=vit_gf, dyt_gflops_per_image=dyt_gf, flops_ratio=vit_gf / dyt_gf)


def table(c: DyTCost) -> str:
    """A Markdown table: the plain ViT and DyT side by side, the ratio in the last column."""
    rows = [
        (f"training step, batch {c.batch} (s); baseline: the plain ViT fully fine-tuned (CE)",
         f"{c.full_ft_step_s:.3f}", f"{c.dyt_step_s:.3f}", f"{c.step_speedup:.2f}x"),
        (f"one-pass training step (DISTILL False), batch {c.batch} (s); baseline: the same",
         f"{c.full_ft_step_s:.3f}", f"{c.dyt_one_pass_step_s:.3f}", f"{c.one_pass_step_speedup:.2f}x"),
        (f"training step, batch {c.batch} (s); baseline: DyT's model and loss with every parameter "
         "trainable (the original's --fulltune)", f"{c.fulltune_step_s:.3f}", f"{c.dyt_step_s:.3f}",
         f"{c.fulltune_step_speedup:.2f}x"),
        ("trainable parameters; baseline: the plain ViT", f"{c.full_ft_trainable_params:,}",
         f"{c.dyt_trainable_params:,}", ""),
        (f"inference, batch {c.eval_batch} (images/s); baseline: the plain ViT", f"{c.vit_images_per_s:.1f}",
         f"{c.dyt_images_per_s:.1f}", f"{c.inference_speedup:.2f}x"),
        ("inference GFLOPs per image; baseline: the plain ViT", f"{c.vit_gflops_per_image:.2f}",
         f"{c.dyt_gflops_per_image:.2f}", f"{c.flops_ratio:.2f}x (FLOPs ratio)"),
    ]
    lines = [f"{c.arch}, random weights, CPU fp32, {c.threads} threads, DyT activation rate {c.activation_rate:.3f}",
             "", "| | baseline | DyT | DyT speed-up |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {' | '.join(r)} |" for r in rows])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="vit_base_patch16_224", help="timm ViT architecture (ViT-B/16 geometry)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8, help="training batch size")
    p.add_argument("--eval-batch", type=int, default=32, help="inference batch size")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--rate", type=float, default=0.49, help="forced activation rate of the dispatchers")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default="", help="also write the measurements to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0 < args.rate < 1:
        raise ConfigValueError(f"--rate must be in (0, 1), got {args.rate}")
    cost = measure(args.arch, args.batch, args.eval_batch, args.steps, args.rate, args.image_size)
    print(table(cost))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(asdict(cost), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
