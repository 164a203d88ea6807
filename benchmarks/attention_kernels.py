"""Attention's two kernels on this machine: PyTorch's fused `scaled_dot_product_attention` against
three plain ops (`q k^T`, softmax, `p v`), in fp32 and bf16, forward alone and forward + backward.

    python -m benchmarks.attention_kernels [--repeats 15] [--threads 2]

The shapes are ViT-B/16's image tower at batch 4 (197 tokens, 12 heads of 64) and its text tower at
100 classes (8 heads of 64, causal, 20 tokens as a cut prompt and the full 77). `clip.model.attention`
takes the plain ops where they are faster (`math_attention_is_faster`): bf16 on a CPU, fast mode.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from clip.model import plain_attention
from engine.errors import run_cli


@dataclass(frozen=True)
class AttentionShape:
    name: str
    batch: int
    heads: int
    length: int
    head_dim: int
    causal: bool


SHAPES = (
    AttentionShape("image tower, batch 4", 4, 12, 197, 64, False),
    AttentionShape("text tower, 100 prompts of 20 tokens", 100, 8, 20, 64, True),
    AttentionShape("text tower, 100 prompts of 77 tokens", 100, 8, 77, 64, True),
)


def fused_attention(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


KERNELS = {"fused": fused_attention, "plain": plain_attention}


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(shape: AttentionShape, dtype: torch.dtype, kernel: str, repeats: int) -> dict:
    """Median forward and forward + backward times of one kernel at one shape and dtype."""
    size = (shape.batch, shape.heads, shape.length, shape.head_dim)
    q, k, v = (torch.randn(size, dtype=dtype) for _ in range(3))
    mask = torch.full((shape.length, shape.length), float("-inf")).triu(1).to(dtype) if shape.causal else None
    attend = KERNELS[kernel]
    with torch.no_grad():
        forward = median_ms(lambda: attend(q, k, v, mask), repeats)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    backward = median_ms(lambda: attend(*leaves, mask).float().sum().backward(), repeats)
    return {"shape": shape.name, "dtype": str(dtype).removeprefix("torch."), "kernel": kernel,
            "forward_ms": forward, "forward_backward_ms": backward}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return parser


def main(argv: list[str] | None = None, shapes: tuple[AttentionShape, ...] = SHAPES) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [measure(s, d, kernel, args.repeats)
            for s in shapes for d in (torch.float32, torch.bfloat16) for kernel in KERNELS]
    print(f"{'shape':40} {'dtype':9} {'kernel':6} {'forward ms':>11} {'fwd+bwd ms':>11}")
    for r in rows:
        print(f"{r['shape']:40} {r['dtype']:9} {r['kernel']:6} {r['forward_ms']:11.2f} {r['forward_backward_ms']:11.2f}")
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main() and None))
