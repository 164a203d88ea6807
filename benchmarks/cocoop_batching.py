"""CoCoOp's training step with batched text encoding (ours) against the original's per-image loop.

    python -m benchmarks.cocoop_batching [--batch 4] [--classes 100] [--image-size 224] [--steps 3]
        [--chunk-mb 256] [--device cpu|cuda] [--prec fp32|fp16] [--geometry vit_b16] [--json out.json]

One CoCoOp trainer (the real code path, recipe `vit_b16_c4_ep10_batch1_ctxv1`, random CLIP with the
chosen geometry, a synthetic C-class dataset) and one batch of random images; three ways to compute
the same logits, each timed as a training step (forward, cross-entropy, backward, SGD step):

* `batched`: ours, the B x C prompts through the text tower in one call, cut after the last EOT
  (fp32);
* `batched, chunked`: the same with the text budget (TRAIN.TEXT_CHUNK_MB) = --chunk-mb, so the prompts go in
  chunks, each recomputed in the backward pass (activation checkpointing);
* `per-image loop`: the original's arithmetic, for each image its C prompts at all 77 tokens.

Before timing, the three give the logits of the same weights, which must agree within the fp32
bound of two text-tower evaluations (`tests/tolerances.py`). Reported per variant: the median step
time over --steps after one warm-up step, time per image, the speed-up over the loop, the memory of
the step (CUDA max allocated, or the CPU's peak RSS, minus what was in use before it), and the same
for one evaluation batch (no gradients).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from benchmarks.train_step import GEOMETRIES, MemoryMeter, _timed, build, text_table_lines, write_random_clip
from engine.errors import ConfigValueError, run_cli

TRAINER = "CoCoOp"


def per_image_logits(model, images: torch.Tensor) -> torch.Tensor:
    """The original's arithmetic: for each image, its C prompts ([C, 77, W], no EOT cut) through the
    text tower, then scaled cosine similarity with that image's normalised feature."""
    image_features = model.encode_images(images)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    learner = model.prompt_learner
    contexts = learner.context_per_image(image_features)
    scale = model.clip_model.logit_scale.exp()
    rows = []
    for context, feature in zip(contexts, image_features):
        text = model.clip_model.encode_text_embeddings(learner.assemble(context), learner.eot_indices, truncate=False)
        text = text / text.norm(dim=-1, keepdim=True)
        rows.append(scale * feature @ text.t())
    return torch.stack(rows)


@dataclass
class VariantResult:
    """One way of computing CoCoOp's logits, timed."""

    variant: str
    text_calls_per_step: int  # forward, and the recomputation of checkpointed chunks in the backward
    tokens_per_prompt: int
    max_abs_logit_diff: float  # against the per-image loop, same weights
    median_step_s: float
    step_s_per_image: float
    step_memory_mb: float
    peak_memory_mb: float
    median_eval_s: float
    speedup_step: float = 1.0  # per-image loop time / this time
    speedup_eval: float = 1.0


def release_freed_memory(device: torch.device) -> None:
    """Give freed memory back, so that the next variant's peak starts from what is really in use."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:  # glibc keeps freed small blocks in its heap; RSS would hide the next variant's growth
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def logit_tolerance(clip_model, precision: str) -> float:
    """Two evaluations of the text tower in other shapes (and token counts): its rounding bound."""
    from tests.tolerances import FP16_UNIT_ROUNDOFF, FP32_UNIT_ROUNDOFF, cosine_logit_atol, transformer_atol

    unit = FP16_UNIT_ROUNDOFF if precision == "fp16" else FP32_UNIT_ROUNDOFF
    text = clip_model.transformer
    relative = transformer_atol(1.0, text.width, clip_model.context_length, text.layers, unit_roundoff=unit)
    return cosine_logit_atol(clip_model.logit_scale.exp().item(), relative)


def measure(args) -> dict[str, Any]:
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        clip_path = os.path.join(tmp, "clip.pt")
        write_random_clip(clip_path, args.geometry, args.image_size)
        trainer = build(TRAINER, args, clip_path, os.path.join(tmp, "out"))
    model = trainer.model
    learner = model.prompt_learner
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    labels = torch.arange(args.batch, device=device) % args.classes
    default_budget = model.text_chunk_mb

    def batched(budget_mb: float) -> Callable[[torch.Tensor], torch.Tensor]:
        def logits(x: torch.Tensor) -> torch.Tensor:
            model.text_chunk_mb = budget_mb
            return model.logits(model.features(x))
        return logits

    full_length = learner.token_prefix.shape[1] + learner.n_ctx + learner.token_suffix.shape[1]
    cut_length = int(learner.eot_indices.max()) + 1 if model.dtype == torch.float32 else full_length
    variants = [
        ("batched", batched(default_budget), cut_length),
        (f"batched, chunks <= {args.chunk_mb:g} MB", batched(args.chunk_mb), cut_length),
        ("per-image loop (original)", lambda x: per_image_logits(model, x), full_length),
    ]

    # Same weights for all: compare the logits before any step changes them.
    trainer.set_model_mode("eval")
    with torch.no_grad():
        reference = per_image_logits(model, images).float()
        diffs = [(fn(images).float() - reference).abs().max().item() for _, fn, _ in variants]
    tolerance = logit_tolerance(model.clip_model, trainer.precision(trainer.cfg))
    if max(diffs) > tolerance:
        raise AssertionError(f"logits differ from the per-image loop by {max(diffs):.3g} > bound {tolerance:.3g}")

    results = []
    for (name, logits_fn, tokens), diff in zip(variants, diffs):
        def train_step() -> None:
            with trainer.autocast():
                loss = F.cross_entropy(logits_fn(images), labels)
            trainer.optimization_step(loss)

        def eval_batch() -> None:
            with torch.no_grad():
                logits_fn(images)

        trainer.set_model_mode("train")
        release_freed_memory(device)
        meter = MemoryMeter(device)
        meter.start()
        calls = counted_text_calls(model, train_step)  # warm-up: gradients and optimiser state
        step_times = _timed(train_step, device, args.steps)
        peak, step_mem = meter.stop()
        trainer.set_model_mode("eval")
        eval_batch()
        eval_times = _timed(eval_batch, device, args.steps)
        step_s = statistics.median(step_times)
        results.append(VariantResult(name, calls, tokens, diff, step_s, step_s / args.batch, round(step_mem, 1),
                                     round(peak, 1), statistics.median(eval_times)))
    loop = results[-1]
    for r in results:
        r.speedup_step = loop.median_step_s / r.median_step_s
        r.speedup_eval = loop.median_eval_s / r.median_eval_s
    return {
        "results": [asdict(r) for r in results], "logit_tolerance": tolerance,
        "batch": args.batch, "classes": args.classes, "image_size": args.image_size, "steps": args.steps,
        "device": args.device, "precision": args.prec, "geometry": args.geometry, "chunk_mb": args.chunk_mb,
        "memory_kind": meter.kind, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


def counted_text_calls(model, step: Callable[[], Any]) -> int:
    """Run `step` and return how many times it called the text tower."""
    calls = 0
    original = model.clip_model.encode_text_embeddings

    def counted(*a, **k):
        nonlocal calls
        calls += 1
        return original(*a, **k)

    model.clip_model.encode_text_embeddings = counted
    try:
        step()
    finally:
        del model.clip_model.encode_text_embeddings  # back to the class's method
    return calls


def format_table(record: dict[str, Any]) -> str:
    header = ["variant", "text calls", "tokens", "max |dlogit|", "train step s", "s/image", "x loop",
              "step MB", "eval batch s", "x loop"]
    rows = [[r["variant"], r["text_calls_per_step"], r["tokens_per_prompt"], f"{r['max_abs_logit_diff']:.1e}",
             f"{r['median_step_s']:.3f}", f"{r['step_s_per_image']:.3f}", f"{r['speedup_step']:.2f}",
             f"{r['step_memory_mb']:.0f}", f"{r['median_eval_s']:.3f}", f"{r['speedup_eval']:.2f}"]
            for r in record["results"]]
    lines = text_table_lines(header, rows)
    lines.append(f"(batch {record['batch']}, {record['classes']} classes, {record['geometry']} at "
                 f"{record['image_size']} px, {record['precision']} on {record['device']}, "
                 f"logit bound {record['logit_tolerance']:.1e}, memory: {record['memory_kind']})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--chunk-mb", type=float, default=256.0, help="TEXT_CHUNK_MB of the chunked variant")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--prec", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--geometry", choices=tuple(GEOMETRIES), default="vit_b16")
    parser.add_argument("--json", default="", help="write the record here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError("--device cuda: no CUDA device is usable here; use --device cpu.")
    if args.prec == "fp16" and args.device != "cuda":
        raise ConfigValueError("--prec fp16 is for --device cuda (fp16 training is slow on CPU).")
    if min(args.batch, args.classes, args.steps) < 1 or args.chunk_mb <= 0:
        raise ConfigValueError("--batch, --classes and --steps must be >= 1 and --chunk-mb > 0.")
    record = measure(args)
    print(format_table(record))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return record


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main() and None))
