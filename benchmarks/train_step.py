"""Cost of one training step (and one eval batch) of a trainer on the real ViT-B/16 geometry.

    python -m benchmarks.train_step --trainer SkipTuning [--batch 4] [--classes 100] [--image-size 224]
        [--steps 5] [--device cpu|cuda] [--json out.json]
    python -m benchmarks.train_step --trainer all --json all.json   # every trainer, one process each

CLIP gets random weights with ViT-B/16's geometry (nothing is downloaded) and the data are random
tensors on a synthetic C-class dataset, so only cost is measured, never accuracy. The trainer is built
by the real code path (`train.setup_cfg` + `build_trainer`, with the method's own config file) and
`forward_backward` is called on one batch: its wall time (median over --steps after one warm-up
step), its FLOPs (`torch.utils.flop_counter.FlopCounterMode`, forward + backward) and memory.

* ZeroshotCLIP trains nothing: its "step" is one eval batch.
* SkipTuning's step runs on cached hidden states; running the frozen prefix that produces them is
  reported separately (`cache_s_per_batch`, `cache_flops_per_batch`; it happens once per image per
  epoch) and added in `median_step_incl_cache_s`.
* All labels of a batch are one class (Skip Tuning's batches with >= 4 shots; no effect on the others).
* Memory: on CUDA `torch.cuda.max_memory_allocated` (`peak_memory_kind` cuda_max_allocated); on CPU
  the process's peak resident set size (VmHWM, reset through /proc/self/clear_refs just before the
  steps; `cpu_peak_rss`). Both include the weights; `step_memory_mb` is the peak minus the memory in
  use before the first step (activations, gradients and optimizer state).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from engine.errors import ConfigValueError, run_cli
from engine.registry import closest_matches

TRAINERS = ("ZeroshotCLIP", "CoOp", "FinetuneCLIP", "SkipTuning")
CONFIGS = {
    "ZeroshotCLIP": ("CoOp", "vit_b16.yaml"),
    "CoOp": ("CoOp", "vit_b16_ep50.yaml"),
    "FinetuneCLIP": ("FinetuneCLIP", "vit_b16_ep10_bs4.yaml"),
    "SkipTuning": ("SkipTuning", "vit_b16_bs4.yaml"),
}
PREC_KEYS = {"ZeroshotCLIP": "TRAINER.ZSCLIP.PREC", "CoOp": "TRAINER.COOP.PREC",
             "FinetuneCLIP": "TRAINER.PREC", "SkipTuning": "TRAINER.PREC"}
# CLIP constructor arguments (image_resolution comes from --image-size).
GEOMETRIES = {
    "vit_b16": dict(embed_dim=512, vision_layers=12, vision_width=768, vision_patch_size=16, context_length=77,
                    vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12),
    # For tests only: seconds instead of minutes.
    "tiny": dict(embed_dim=32, vision_layers=2, vision_width=64, vision_patch_size=8, context_length=77,
                 vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2),
}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET_NAME = "BenchmarkSynthetic"

logger = logging.getLogger(__name__)


def register_synthetic_dataset() -> None:
    """A C-class dataset of non-existent image paths: loaders are built but never read."""
    from engine.data import DATASET_REGISTRY, DatasetBase, Datum

    if DATASET_NAME in DATASET_REGISTRY.registered_names():
        return

    @DATASET_REGISTRY.register()
    class BenchmarkSynthetic(DatasetBase):
        def __init__(self, cfg) -> None:
            n_classes = int(os.environ["BENCH_CLASSES"])
            items = [Datum(f"/synthetic/{c}_{i}.jpg", c, 0, f"object {c}", check_exists=False)
                     for c in range(n_classes) for i in range(4)]
            super().__init__(train_x=items, val=items[:n_classes], test=items[:n_classes])


def write_random_clip(path: str, geometry: str, image_size: int) -> None:
    """Random CLIP weights with `geometry`, in OpenAI's mixed precision and key names."""
    from clip.model import CLIP, convert_weights

    torch.manual_seed(0)
    model = CLIP(image_resolution=image_size, **GEOMETRIES[geometry])
    convert_weights(model)
    torch.save(model.state_dict(), path)


def _rss_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory over a block of work: CUDA max allocated, or CPU peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            if not _reset_peak_rss():
                self.kind = "cpu_peak_rss_process_lifetime"  # could not reset: includes the build
            self.before = _rss_mb("VmRSS") or 0.0

    def stop(self) -> tuple[float, float]:
        """(peak MB, peak minus the memory in use at start)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = _rss_mb("VmHWM") or 0.0
        return peak, peak - self.before


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def build(trainer_name: str, args, clip_path: str, out_dir: str):
    import train
    from engine import build_trainer

    os.environ["BENCH_CLASSES"] = str(args.classes)
    register_synthetic_dataset()
    folder, fname = CONFIGS[trainer_name]
    argv = [
        "--trainer", trainer_name, "--seed", "1", "--output-dir", out_dir,
        "--config-file", os.path.join(REPO_ROOT, "configs", "trainers", folder, fname),
        "DATASET.NAME", DATASET_NAME,
        "MODEL.BACKBONE.NAME", clip_path,
        "INPUT.SIZE", f"({args.image_size}, {args.image_size})",
        "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", str(args.batch),
        "DATALOADER.TEST.BATCH_SIZE", str(args.batch),
        "USE_CUDA", str(args.device == "cuda"),
        PREC_KEYS[trainer_name], args.prec,
    ]
    if trainer_name == "SkipTuning":
        # ω = 6 of 12 blocks on ViT-B/16 (the original); the same half for other geometries.
        argv += ["TRAINER.SKIP.START_LAYER", str(GEOMETRIES[args.geometry]["transformer_layers"] // 2)]
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    return build_trainer(cfg)


def measure(trainer_name: str, args) -> dict[str, Any]:
    """Build the trainer and measure its step; returns the JSON record."""
    from trainers.skip_tuning import SkipTuning

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        clip_path = os.path.join(tmp, "clip.pt")
        write_random_clip(clip_path, args.geometry, args.image_size)
        trainer = build(trainer_name, args, clip_path, os.path.join(tmp, "out"))
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    labels = torch.zeros(args.batch, dtype=torch.long, device=device)
    trainer.batch_idx, trainer.num_batches, trainer.epoch = 0, 10**9, 0  # never step the LR schedule
    record: dict[str, Any] = {"trainer": trainer_name}
    extra: dict[str, Any] = {}

    # Eval batch (for ZeroshotCLIP this is its step).
    trainer.set_model_mode("eval")
    trainer._eval_text_features = None  # FinetuneCLIP/SkipTuning: text encoded once per test, reused

    def eval_batch():
        with torch.no_grad():
            trainer.model_inference(images)

    eval_batch()  # warm-up (and the once-per-test text features)
    eval_times = _timed(eval_batch, device, args.steps)
    eval_flops = _flops(eval_batch)

    if trainer_name == "ZeroshotCLIP":
        meter = MemoryMeter(device)
        meter.start()
        step_times = _timed(eval_batch, device, args.steps)
        peak, step_mem = meter.stop()
        step_flops, step_kind = eval_flops, "eval_batch"
    else:
        trainer.set_model_mode("train")
        if isinstance(trainer, SkipTuning):
            model = trainer.model
            model.cache_text()
            if model.skip_classes:
                from trainers.skip_tuning import draw_keep_mask

                model.keep_mask = draw_keep_mask(model.num_classes, model.num_top, model.lam)
            hidden = model.image_prefix(images)
            cache_times = _timed(lambda: model.image_prefix(images), device, args.steps)
            extra["cache_s_per_batch"] = statistics.median(cache_times)
            extra["cache_flops_per_batch"] = _flops(lambda: model.image_prefix(images))
            extra["classes_per_step"] = int(model.keep_mask.sum()) if model.keep_mask is not None else args.classes
            extra["skip_start_layer"] = int(trainer.cfg.TRAINER.SKIP.START_LAYER)
            batch: Any = (hidden.cpu(), labels.cpu())
        else:
            batch = {"img": images, "label": labels, "domain": torch.zeros_like(labels), "impath": [""] * args.batch}
        meter = MemoryMeter(device)
        meter.start()
        trainer.forward_backward(batch)  # warm-up: allocates gradients and optimizer state
        step_times = _timed(lambda: trainer.forward_backward(batch), device, args.steps)
        peak, step_mem = meter.stop()
        step_flops, step_kind = _flops(lambda: trainer.forward_backward(batch)), "train_step"
        if "cache_s_per_batch" in extra:
            extra["median_step_incl_cache_s"] = statistics.median(step_times) + extra["cache_s_per_batch"]

    trainable, total = trainer.parameter_counts()
    record.update({
        "median_step_s": statistics.median(step_times),
        "peak_memory_mb": round(peak, 1),
        "trainable_params": trainable,
        "flops_per_step": step_flops,
        "step_kind": step_kind,
        "step_times_s": step_times,
        "peak_memory_kind": meter.kind,
        "step_memory_mb": round(step_mem, 1),
        "total_params": total,
        "median_eval_s": statistics.median(eval_times),
        "eval_flops_per_batch": eval_flops,
        **extra,
        # Settings.
        "batch": args.batch, "classes": args.classes, "image_size": args.image_size, "steps": args.steps,
        "device": args.device, "precision": args.prec, "geometry": args.geometry,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    })
    return record


def format_table(records: list[dict]) -> str:
    """A plain-text table; ratios are against FinetuneCLIP when it is among the records."""
    base = next((r for r in records if r["trainer"] == "FinetuneCLIP"), None)
    header = ["trainer", "step", "median s", "x FT", "peak MB", "step MB", "x FT", "trainable", "GFLOPs/step", "x FT"]
    rows = []
    for r in records:
        def ratio(key: str) -> str:
            return f"{r[key] / base[key]:.2f}" if base and base[key] else "-"
        rows.append([
            r["trainer"], r["step_kind"], f"{r['median_step_s']:.4f}", ratio("median_step_s"),
            f"{r['peak_memory_mb']:.0f}", f"{r['step_memory_mb']:.0f}", ratio("step_memory_mb"),
            f"{r['trainable_params']:,}", f"{r['flops_per_step'] / 1e9:.2f}", ratio("flops_per_step"),
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [" | ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", required=True, help=f"one of {TRAINERS}, or 'all'")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prec", choices=("fp16", "fp32", "amp"), default=None,
                        help="precision (default: fp16 on cuda, as the originals; fp32 on cpu)")
    parser.add_argument("--geometry", choices=tuple(GEOMETRIES), default="vit_b16")
    parser.add_argument("--json", default="", help="write the record(s) here")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    args.prec = args.prec or ("fp16" if args.device == "cuda" else "fp32")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError("--device cuda: no CUDA device is usable here; use --device cpu.")
    if args.trainer != "all" and args.trainer not in TRAINERS:
        hint = closest_matches(args.trainer, TRAINERS)
        raise ConfigValueError(f"--trainer {args.trainer!r}: expected one of {TRAINERS} or 'all'."
                               + (f" Did you mean: {', '.join(hint)}?" if hint else ""))
    if args.batch < 1 or args.classes < 1 or args.steps < 1:
        raise ConfigValueError("--batch, --classes and --steps must be >= 1.")
    logging.basicConfig(level=logging.WARNING)
    if args.trainer == "all":
        # One process per trainer, so that peak memory is not inherited from the previous one.
        records = []
        for name in TRAINERS:
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                cmd = [sys.executable, "-m", "benchmarks.train_step", "--trainer", name, "--json", f.name,
                       "--batch", str(args.batch), "--classes", str(args.classes), "--image-size", str(args.image_size),
                       "--steps", str(args.steps), "--device", args.device, "--prec", args.prec, "--geometry", args.geometry]
                subprocess.run(cmd, check=True, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
                with open(f.name) as g:
                    records.append(json.load(g))
    else:
        records = [measure(args.trainer, args)]
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records if args.trainer == "all" else records[0], f, indent=2)
    return records


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main() and None))
