"""Cost of one training step (and one eval batch) of a trainer on the real ViT-B/16 geometry.

    python -m benchmarks.train_step --trainer SkipTuning [--batch 4] [--classes 100] [--image-size 224]
        [--steps 5] [--device cpu|cuda] [--mode exact|fast|both] [--gemm-size 2048] [--json out.json]
    python -m benchmarks.train_step --trainer all --json all.json   # every registered trainer, one process each
    python -m benchmarks.train_step --trainer CoOp,ExtrasLinearProbeCoOp   # some trainers, one process each
    python -m benchmarks.train_step --trainer all --mode both --classes 10 100 1000   # each mode and class count

CLIP gets random weights with ViT-B/16's geometry (nothing is downloaded) and the data are random
tensors on a synthetic C-class dataset, so only cost is measured, never accuracy. Every trainer in
TRAINER_REGISTRY is built by the real code path (`train.setup_cfg` + `build_trainer`) with its own
recipe (`ClipMethod.recipe`) and precision key, and `forward_backward` is called on one batch: its
wall time (median over --steps after one warm-up step), its FLOPs
(`torch.utils.flop_counter.FlopCounterMode`, forward + backward; attention counted as its four
products, also where the CPU's fused kernel computes it) and memory.

* A trainer without training (zero-shot CLIP): its "step" is one eval batch.
* A method whose steps take a frozen image prefix (`trains_on_image_prefix`: Skip Tuning's cached
  hidden states) gets it from `model.image_prefix`; its cost is reported separately
  (`cache_s_per_batch`, `cache_flops_per_batch`; it runs once per image per epoch) and added in
  `median_step_incl_cache_s`.
* An eval batch reuses the class text features of the evaluation, as `test()` does.
* All labels of a batch are one class (Skip Tuning's batches with >= 4 shots; no effect on the others).
* Memory: on CUDA `torch.cuda.max_memory_allocated` (`peak_memory_kind` cuda_max_allocated); on CPU
  the process's peak resident set size (VmHWM, reset through /proc/self/clear_refs just before the
  steps; `cpu_peak_rss`). Both include the weights; `step_memory_mb` is the peak minus the memory in
  use before the first step (activations, gradients and optimizer state).
* `--mode`: exact (the run's precision, default fp32 on CPU and fp16 on CUDA as the originals), fast
  (TRAIN.FAST_MODE: bf16 autocast on CPU, fp16 on CUDA, fp32 weights), or both. `--classes` takes one
  or more class counts. Each (trainer, mode, class count) is one record, measured in its own process
  when there is more than one.
* Efficiency: `gflops_per_s` is the step's FLOPs over its median time; `gemm_fraction` divides it by
  this machine's rate for a square GEMM (`--gemm-size`, median of a few, measured once per run in
  the dtype the step computes in: `compute_dtype`, fp32 or the autocast dtype).
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
from dataclasses import dataclass
from typing import Any, Callable

import torch
import yaml

import trainers  # noqa: F401  (registers the methods)
from engine import TRAINER_REGISTRY
from engine.config import cfg_to_yaml
from engine.errors import ConfigValueError, run_cli
from engine.memory import memory_in_use_mb, memory_kind, peak_memory_mb, reset_peak_memory
from engine.registry import closest_matches

# CLIP constructor arguments (image_resolution comes from --image-size).
GEOMETRIES = {
    "vit_b16": dict(embed_dim=512, vision_layers=12, vision_width=768, vision_patch_size=16, context_length=77,
                    vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12),
    # For tests only: seconds instead of minutes. ViT-B/16's depth, so every recipe's layer settings fit.
    "tiny": dict(embed_dim=32, vision_layers=12, vision_width=64, vision_patch_size=8, context_length=77,
                 vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=12),
}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET_NAME = "BenchmarkSynthetic"
MODES = ("exact", "fast")
GEMM_REPEATS = 5  # timed GEMMs after one warm-up; the median is reported

logger = logging.getLogger(__name__)


def runnable_trainer_names() -> list[str]:
    """Every registered trainer that can run in this checkout, in registration order (DePT's alias of a
    host that is not merged yet cannot)."""
    names = []
    for name in TRAINER_REGISTRY.registered_names():
        reason = getattr(TRAINER_REGISTRY.get(name), "unavailable_reason", lambda: None)()
        if reason:
            logger.info("Not measured: %s", reason)
        else:
            names.append(name)
    return names


def trainer_names() -> list[str]:
    """What `--trainer all` measures: the runnable trainers, a name declared to run exactly what another
    name runs (`same_run_as`: `DePT` with its default host) only under that other name."""
    return [n for n in runnable_trainer_names() if getattr(TRAINER_REGISTRY.get(n), "same_run_as", None) is None]


def register_synthetic_dataset(n_classes: int) -> None:
    """A C-class dataset of non-existent image paths: loaders are built but never read."""
    from engine.data import DATASET_REGISTRY, DatasetBase, Datum

    class BenchmarkSynthetic(DatasetBase):
        def __init__(self, cfg) -> None:
            items = [Datum(f"/synthetic/{c}_{i}.jpg", c, 0, f"object {c}", check_exists=False)
                     for c in range(n_classes) for i in range(4)]
            super().__init__(train_x=items, val=items[:n_classes], test=items[:n_classes])

    DATASET_REGISTRY.register(BenchmarkSynthetic, force=True)


def write_random_clip(path: str, geometry: str, image_size: int) -> None:
    """Random CLIP weights with `geometry`, in OpenAI's mixed precision and key names."""
    from clip.model import CLIP, convert_weights

    torch.manual_seed(0)
    model = CLIP(image_resolution=image_size, **GEOMETRIES[geometry])
    convert_weights(model)
    torch.save(model.state_dict(), path)


# A method on a timm ViT (`backbone_kind = "timm_vit"`, DyT) gets a random timm ViT of the geometry.
TIMM_ARCHS = {"vit_b16": "vit_base_patch16_224", "tiny": "vit_tiny_patch16_224"}


def write_random_vit(path: str, geometry: str, image_size: int) -> None:
    """Random weights of the timm ViT of `geometry` at `image_size`, as a timm state dict."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(TIMM_ARCHS[geometry], img_size=image_size, num_classes=0)
    torch.save(model.state_dict(), path)


def backbone_kind(trainer_name: str) -> str:
    return getattr(TRAINER_REGISTRY.get(trainer_name), "backbone_kind", "clip")


def write_random_backbone(trainer_name: str, path: str, geometry: str, image_size: int) -> None:
    """Random weights of the backbone `trainer_name` loads (a CLIP, or DyT's timm ViT)."""
    write = write_random_vit if backbone_kind(trainer_name) == "timm_vit" else write_random_clip
    write(path, geometry, image_size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """The CPU fused attention kernel's forward, which torch's counter leaves out: q k^T and p v."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """Its backward: the four products of the gradients (of p, v, q and k), twice the forward's, as
    the plain ops count them; the kernel's recomputation of q k^T is the kernel's choice, not counted."""
    return 2 * _cpu_attention_flops(query_shape, key_shape, value_shape)


def _flops(fn: Callable[[], Any]) -> int:
    """FLOPs of `fn` (multiply-adds x 2), attention counted whichever kernel computes it."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    cpu_attention = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
                     aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        fn()
    return int(counter.get_total_flops())


def build(trainer_name: str, args, backbone_path: str, out_dir: str, fast_mode: bool = False):
    """The trainer through the real code path, on the synthetic dataset; `fast_mode`: TRAIN.FAST_MODE."""
    import train
    from engine import build_trainer

    trainer_cls = TRAINER_REGISTRY.get(trainer_name)
    register_synthetic_dataset(args.classes)
    argv = [
        "--trainer", trainer_name, "--seed", "1", "--output-dir", out_dir,
        "--config-file", os.path.join(REPO_ROOT, "configs", "trainers", f"{trainer_cls.recipe}.yaml"),
        "DATASET.NAME", DATASET_NAME,
        "MODEL.BACKBONE.NAME", backbone_path,
        "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", str(args.batch),
        "DATALOADER.TEST.BATCH_SIZE", str(args.batch),
        "USE_CUDA", str(args.device == "cuda"),
        trainer_cls.precision_key, args.prec,
        "TRAIN.FAST_MODE", str(fast_mode),
        # Settings a method needs to train on the synthetic classes (DePT: its head on all of them).
        *getattr(trainer_cls, "benchmark_opts", ()),
    ]
    text_chunk_mb = getattr(args, "text_chunk_mb", None)  # other benchmarks build through here without the flag
    if text_chunk_mb is not None:  # every CLIP method's text budget (default: the config's)
        argv += ["TRAIN.TEXT_CHUNK_MB", str(text_chunk_mb)]
    if backbone_kind(trainer_name) == "timm_vit":
        size = f"({args.image_size}, {args.image_size})"
        argv += [trainer_cls.arch_key, TIMM_ARCHS[args.geometry], "INPUT.SIZE", size]
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    return build_trainer(cfg)


class MemoryMeter:
    """Peak memory over a block of work, and that peak minus the memory in use when it started."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        self.kind = memory_kind(self.device, reset_peak_memory(self.device))
        self.before = memory_in_use_mb(self.device)

    def stop(self) -> tuple[float, float]:
        peak = peak_memory_mb(self.device)
        return peak, peak - self.before


def measure(trainer_name: str, args) -> dict[str, Any]:
    """Build the trainer and measure its step; returns the JSON record."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        backbone_path = os.path.join(tmp, "backbone.pt")
        write_random_backbone(trainer_name, backbone_path, args.geometry, args.image_size)
        trainer = build(trainer_name, args, backbone_path, os.path.join(tmp, "out"), fast_mode=args.mode == "fast")
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    labels = torch.zeros(args.batch, dtype=torch.long, device=device)
    record: dict[str, Any] = {"trainer": trainer_name, "mode": args.mode}
    extra: dict[str, Any] = {}
    model = trainer.model

    # Eval batch (for a method without training this is its step), inside one evaluation.
    trainer.set_model_mode("eval")
    with trainer.evaluation():
        def eval_batch():
            with torch.no_grad():
                trainer.model_inference(images)

        eval_batch()  # warm-up (and the once-per-evaluation text features)
        eval_times = _timed(eval_batch, device, args.steps)
        eval_flops = _flops(eval_batch)
        if not trainer.has_training:
            meter = MemoryMeter(device)
            meter.start()
            step_times = _timed(eval_batch, device, args.steps)
            peak, step_mem = meter.stop()
            step_flops, step_kind = eval_flops, "eval_batch"

    if trainer.has_training:
        trainer.set_model_mode("train")
        with trainer.autocast():
            model.prepare_training()
        inputs = images
        if model.trains_on_image_prefix:
            with trainer.autocast():
                inputs = model.image_prefix(images)
                cache_times = _timed(lambda: model.image_prefix(images), device, args.steps)
                extra["cache_s_per_batch"] = statistics.median(cache_times)
                extra["cache_flops_per_batch"] = _flops(lambda: model.image_prefix(images))
        batch = {"img": inputs, "label": labels, "domain": torch.zeros_like(labels), "impath": [""] * args.batch}
        trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 1
        meter = MemoryMeter(device)
        meter.start()
        summary = trainer.forward_backward(batch)  # warm-up: allocates gradients and optimizer state
        step_times = _timed(lambda: trainer.forward_backward(batch), device, args.steps)
        peak, step_mem = meter.stop()
        step_flops, step_kind = _flops(lambda: trainer.forward_backward(batch)), "train_step"
        if "classes" in summary:
            extra["classes_per_step"] = int(summary["classes"])
        if "cache_s_per_batch" in extra:
            extra["median_step_incl_cache_s"] = statistics.median(step_times) + extra["cache_s_per_batch"]
    extra["trainer_cfg"] = yaml.safe_load(cfg_to_yaml(trainer.cfg.TRAINER))  # the method's settings, e.g. Skip Tuning's ω

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
        "device": args.device, "precision": args.prec, "compute_dtype": dtype_name(compute_dtype(trainer)),
        "geometry": args.geometry, "text_chunk_mb": trainer.text_chunk_mb(trainer.cfg),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    })
    return record


def compute_dtype(trainer) -> torch.dtype:
    """The dtype the step's matmuls run in: autocast's, else the model's weights' (fp16 CLIP) or fp32."""
    context = trainer.autocast()
    if isinstance(context, torch.autocast):
        return context.fast_dtype
    return getattr(trainer.model, "dtype", torch.float32)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class GemmRate:
    """This machine's rate for a square GEMM of `size` in `dtype`: the yardstick of `gemm_fraction`."""

    dtype: str
    size: int
    gflops_per_s: float


def measure_gemm(device: torch.device, dtype_label: str, size: int, repeats: int = GEMM_REPEATS) -> GemmRate:
    """Median rate of `size`^3 GEMMs (2 size^3 FLOPs each) after one warm-up."""
    dtype = getattr(torch, dtype_label)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    torch.mm(a, b)
    seconds = statistics.median(_timed(lambda: torch.mm(a, b), device, repeats))
    return GemmRate(dtype_label, size, 2 * size**3 / seconds / 1e9)


def add_efficiency(records: list[dict], device: torch.device, gemm_size: int) -> None:
    """Each record's achieved GFLOP/s and its fraction of the GEMM rate in its compute dtype (one GEMM
    measurement per dtype)."""
    rates = {d: measure_gemm(device, d, gemm_size) for d in sorted({r["compute_dtype"] for r in records})}
    for r in records:
        rate = rates[r["compute_dtype"]]
        achieved = r["flops_per_step"] / r["median_step_s"] / 1e9
        r.update({"gflops_per_s": achieved, "gemm_gflops_per_s": rate.gflops_per_s, "gemm_size": rate.size,
                  "gemm_fraction": achieved / rate.gflops_per_s})


def baseline(record: dict, records: list[dict], name: str = "FinetuneCLIP") -> dict | None:
    """The record of `name` measured with the same mode and class count, the denominator of ratios."""
    return next((r for r in records if r["trainer"] == name and r.get("mode", "exact") == record.get("mode", "exact")
                 and r["classes"] == record["classes"]), None)


def text_table_lines(header: list[str], rows: list[list]) -> list[str]:
    """A plain-text table's lines: columns padded to their widest cell, a rule under the header."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [" | ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return lines


def text_table(header: list[str], rows: list[list]) -> str:
    return "\n".join(text_table_lines(header, rows))


def format_table(records: list[dict]) -> str:
    """A plain-text table; ratios are against FinetuneCLIP in the same mode and at the same class count."""
    header = ["trainer", "mode", "classes", "step", "median s", "x FT", "peak MB", "step MB", "x FT", "trainable",
              "GFLOPs/step", "x FT", "GFLOP/s", "of GEMM"]
    rows = []
    for r in records:
        base = baseline(r, records)

        def ratio(key: str) -> str:
            return f"{r[key] / base[key]:.2f}" if base and base[key] else "-"
        rows.append([
            r["trainer"], r.get("mode", "exact"), str(r["classes"]), r["step_kind"], f"{r['median_step_s']:.4f}",
            ratio("median_step_s"), f"{r['peak_memory_mb']:.0f}", f"{r['step_memory_mb']:.0f}", ratio("step_memory_mb"),
            f"{r['trainable_params']:,}", f"{r['flops_per_step'] / 1e9:.2f}", ratio("flops_per_step"),
            f"{r['gflops_per_s']:.1f}" if "gflops_per_s" in r else "-",
            f"{r['gemm_fraction']:.0%}" if "gemm_fraction" in r else "-",
        ])
    return text_table(header, rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", required=True,
                        help="a registered trainer's name, a comma-separated list of them, or 'all'")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, nargs="+", default=[100],
                        help="one or more class counts, e.g. --classes 10 100 1000")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prec", choices=("fp16", "fp32", "amp"), default=None,
                        help="precision (default: fp16 on cuda, as the originals; fp32 on cpu)")
    parser.add_argument("--geometry", choices=tuple(GEOMETRIES), default="vit_b16")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="exact",
                        help="exact: the run's precision; fast: TRAIN.FAST_MODE (bf16 autocast on cpu, fp16 on cuda, "
                             "fp32 weights); both: each")
    parser.add_argument("--gemm-size", type=int, default=2048,
                        help="side of the square GEMM measuring this machine's rate (0: not measured)")
    parser.add_argument("--text-chunk-mb", type=int, default=None,
                        help="TRAIN.TEXT_CHUNK_MB, the text tower's activation budget per call (default: the config's)")
    parser.add_argument("--json", default="", help="write the record(s) here")
    return parser


@dataclass(frozen=True)
class Run:
    """One measurement: a trainer in a mode at a class count, with the precision key's value."""

    trainer: str
    mode: str
    classes: int
    prec: str


def run_precision(mode: str, prec: str | None, device: str) -> str:
    """--prec, else the default: fp16 on cuda as the originals (exact mode), fp32 weights otherwise.
    Fast mode autocasts fp32 weights, so it refuses fp16 ones."""
    if mode == "fast":
        if prec == "fp16":
            raise ConfigValueError("--mode fast needs fp32 weights (it autocasts them): use --prec fp32 or amp, "
                                   "or leave --prec out.")
        return prec or "fp32"
    return prec or ("fp16" if device == "cuda" else "fp32")


def planned_runs(names: list[str], mode: str, classes: list[int], prec: str | None, device: str) -> list[Run]:
    """Every (trainer, mode, class count), trainer by trainer."""
    modes = MODES if mode == "both" else (mode,)
    return [Run(name, m, c, run_precision(m, prec, device)) for name in names for m in modes for c in classes]


def run_args(args: argparse.Namespace, run: Run) -> argparse.Namespace:
    """`args` narrowed to one run (what `measure` and `build` read)."""
    return argparse.Namespace(**{**vars(args), "trainer": run.trainer, "mode": run.mode, "classes": run.classes,
                                 "prec": run.prec})


def measure_in_subprocess(run: Run, args: argparse.Namespace) -> dict:
    """One run in its own process, so that peak memory is not inherited from the previous one."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, "-m", "benchmarks.train_step", "--trainer", run.trainer, "--json", f.name,
               "--batch", str(args.batch), "--classes", str(run.classes), "--image-size", str(args.image_size),
               "--steps", str(args.steps), "--device", args.device, "--prec", run.prec, "--geometry", args.geometry,
               "--mode", run.mode, "--gemm-size", "0"]  # the GEMM is measured once, by this process
        if args.text_chunk_mb is not None:
            cmd += ["--text-chunk-mb", str(args.text_chunk_mb)]
        subprocess.run(cmd, check=True, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
        with open(f.name) as g:
            return json.load(g)


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError("--device cuda: no CUDA device is usable here; use --device cpu.")
    names = runnable_trainer_names()
    requested = trainer_names() if args.trainer == "all" else args.trainer.split(",")
    for name in requested:
        if name not in names:
            hint = closest_matches(name, names)
            raise ConfigValueError(f"--trainer {name!r}: expected one of {names}, a comma-separated list of them, "
                                   "or 'all'." + (f" Did you mean: {', '.join(hint)}?" if hint else ""))
    if args.batch < 1 or min(args.classes) < 1 or args.steps < 1 or args.gemm_size < 0:
        raise ConfigValueError("--batch, --classes and --steps must be >= 1, --gemm-size >= 0.")
    runs = planned_runs(requested, args.mode, args.classes, args.prec, args.device)
    logging.basicConfig(level=logging.WARNING)
    several = len(runs) > 1 or args.trainer == "all"
    if several:
        records = [measure_in_subprocess(run, args) for run in runs]
    else:
        records = [measure(runs[0].trainer, run_args(args, runs[0]))]
    if args.gemm_size:
        add_efficiency(records, torch.device(args.device), args.gemm_size)
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records if several else records[0], f, indent=2)
    return records


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main() and None))
