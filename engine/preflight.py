"""The preflight: the first training steps of a run, measured and extrapolated, and a memory fit check.

After the first `PREFLIGHT_STEPS` steps an invocation trains, the trainer records their time and
memory, extrapolates the time to the epoch and the run, and compares the memory with what the
device offers (or `TRAIN.MEMORY_LIMIT_MB`). A run that does not fit stops with a `MemoryFitError`
that names the measured numbers and suggests a batch size (and a method's own setting, such as a
text chunk size, through the trainer's `memory_advice` hook); an out-of-memory error in those steps
becomes the same kind of message.

Timing: step 1 pays one-time costs (data-loader workers starting, kernel selection, allocator
growth, lazy initialisation), so the extrapolation uses step 2 where the epoch has one, and says
when it had to use step 1. A step's time is its wall time in the epoch loop (waiting for the batch
included), synchronised on CUDA; per-epoch validation, checkpoints and caches are not in it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch

from engine.errors import UserError
from engine.memory import memory_in_use_mb, peak_memory_mb, proc_kb_field

__all__ = [
    "PREFLIGHT_STEPS",
    "OUT_OF_MEMORY_ERRORS",
    "MemoryCapacity",
    "MemoryShortfall",
    "MemoryFitError",
    "PreflightRecord",
    "PreflightProbe",
    "device_memory_capacity",
    "memory_capacity",
    "fit_memory_mb",
    "fixed_step_memory_mb",
    "batch_that_fits",
    "summary_line",
    "fit_error",
    "eval_warning",
    "out_of_memory_error",
]

PREFLIGHT_STEPS = 2  # step 1 with its warm-up, step 2 as a steady step
BATCH_KEY = "DATALOADER.TRAIN_X.BATCH_SIZE"
TEST_BATCH_KEY = "DATALOADER.TEST.BATCH_SIZE"
LIMIT_KEY = "TRAIN.MEMORY_LIMIT_MB"
# torch.OutOfMemoryError is torch.cuda.OutOfMemoryError (a RuntimeError); MemoryError is the CPU's.
OUT_OF_MEMORY_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError, MemoryError)


class MemoryFitError(UserError, RuntimeError):
    """The run does not fit the device's memory (or TRAIN.MEMORY_LIMIT_MB); the message says what would."""


@dataclass(frozen=True)
class MemoryCapacity:
    """Memory the run may use, in MB, and where the number comes from."""

    mb: float
    kind: str


@dataclass(frozen=True)
class MemoryShortfall:
    """What a method's `memory_advice` hook is told when a step does not fit.

    `excess_mb` is how much the step's peak must come down; None after an out-of-memory error,
    where the step never finished and its peak is unknown."""

    capacity_mb: float | None  # None: unknown
    resident_mb: float
    batch_size: int
    excess_mb: float | None


@dataclass
class PreflightRecord:
    """The preflight entry of results.json (and preflight.json)."""

    measured_in_epoch: int  # 1-based epoch whose first steps were measured (> 1: a resumed invocation)
    steps_timed: int
    first_step_time_s: float  # includes the warm-up
    step_time_s: float  # the step the extrapolation uses (step 2, or step 1 in a one-step epoch)
    step_time_includes_warmup: bool
    batch_size: int
    steps_per_epoch: int
    epochs: int
    epoch_time_s: float  # step_time_s x steps_per_epoch
    run_time_s: float  # epoch_time_s x epochs
    resident_memory_mb: float
    peak_memory_mb: float  # over the measured steps (the kind results.json's peak_memory_kind names)
    step_memory_mb: float  # peak - resident
    fixed_step_memory_mb: float  # gradients and optimiser state: what does not shrink with the batch
    memory_per_image_mb: float  # (step - fixed) / batch
    fit_memory_mb: float  # what the fit check compares: the peak, or on CUDA the allocator's reserved peak
    capacity_mb: float | None
    capacity_kind: str | None
    fits: bool | None  # None: the capacity is unknown
    eval_batch_size: int
    eval_peak_bound_mb: float | None  # resident + per-image x eval batch, when the eval batch is larger

    def to_json(self) -> dict:
        return {k: (round(v, 1) if k.endswith("_mb") and v is not None else v) for k, v in asdict(self).items()}


def device_memory_capacity(device: torch.device) -> MemoryCapacity | None:
    """Memory this process could hold on `device` (None where it cannot be read).

    CUDA: the free memory plus what this process's allocator already reserved. CPU (Linux):
    MemAvailable from /proc/meminfo plus this process's resident set."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return MemoryCapacity((free + torch.cuda.memory_reserved(device)) / 2**20, "cuda_free_plus_reserved")
    available_kb = proc_kb_field("/proc/meminfo", "MemAvailable")
    if available_kb is None:
        return None
    return MemoryCapacity(available_kb / 1024 + memory_in_use_mb(device), "cpu_mem_available_plus_rss")


def memory_capacity(device: torch.device, limit_mb: float) -> MemoryCapacity | None:
    """The device's capacity, or TRAIN.MEMORY_LIMIT_MB (when > 0) where that is lower."""
    device_capacity = device_memory_capacity(device)
    if limit_mb > 0 and (device_capacity is None or limit_mb < device_capacity.mb):
        return MemoryCapacity(float(limit_mb), LIMIT_KEY)
    return device_capacity


def fit_memory_mb(device: torch.device, peak_mb: float) -> float:
    """What must fit: on CUDA the allocator's reserved peak (allocations plus its cache), else the peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device) / 2**20
    return peak_mb


def fixed_step_memory_mb(optimizers: Iterable[Any]) -> float:
    """Gradients of the optimised parameters plus the optimisers' state tensors, in MB: the part of a
    training step's memory that a smaller batch does not reduce."""
    total, seen = 0, set()
    for optim in optimizers:
        for group in optim.param_groups:
            for p in group["params"]:
                if id(p) in seen:  # a parameter counts once, however many optimisers list it
                    continue
                seen.add(id(p))
                state = optim.state.get(p, {})
                total += p.numel() * p.element_size()
                total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total / 2**20


def batch_that_fits(capacity_mb: float, resident_mb: float, fixed_mb: float, per_image_mb: float) -> int:
    """The largest batch whose estimated peak, resident + fixed + per-image x batch, fits (0: none)."""
    room = capacity_mb - resident_mb - fixed_mb
    if per_image_mb <= 0:
        return 0
    return max(0, math.floor(room / per_image_mb))


class PreflightProbe:
    """Collects the first steps' times; `record` turns them into a `PreflightRecord`."""

    def __init__(self, device: torch.device, resident_mb: float, epoch: int, epochs: int) -> None:
        self.device = device
        self.resident_mb = resident_mb
        self.epoch = epoch
        self.epochs = epochs
        self.step_times: list[float] = []
        self.batch_size = 0

    def done(self, steps_per_epoch: int) -> bool:
        return len(self.step_times) >= min(PREFLIGHT_STEPS, steps_per_epoch)

    def add_step(self, seconds: float, batch_size: int) -> None:
        if not self.step_times:
            self.batch_size = batch_size
        self.step_times.append(seconds)

    def record(self, steps_per_epoch: int, fixed_mb: float, capacity: MemoryCapacity | None,
               eval_batch_size: int) -> PreflightRecord:
        peak = peak_memory_mb(self.device)
        step_mb = max(0.0, peak - self.resident_mb)
        per_image = max(0.0, step_mb - fixed_mb) / self.batch_size
        fit_mb = fit_memory_mb(self.device, peak)
        step_time = self.step_times[-1]
        epoch_time = step_time * steps_per_epoch
        bound = self.resident_mb + per_image * eval_batch_size if eval_batch_size > self.batch_size else None
        return PreflightRecord(
            measured_in_epoch=self.epoch + 1, steps_timed=len(self.step_times),
            first_step_time_s=self.step_times[0], step_time_s=step_time,
            step_time_includes_warmup=len(self.step_times) == 1, batch_size=self.batch_size,
            steps_per_epoch=steps_per_epoch, epochs=self.epochs, epoch_time_s=epoch_time,
            run_time_s=epoch_time * self.epochs, resident_memory_mb=self.resident_mb, peak_memory_mb=peak,
            step_memory_mb=step_mb, fixed_step_memory_mb=fixed_mb, memory_per_image_mb=per_image,
            fit_memory_mb=fit_mb, capacity_mb=capacity.mb if capacity else None,
            capacity_kind=capacity.kind if capacity else None,
            fits=(fit_mb <= capacity.mb) if capacity else None,
            eval_batch_size=eval_batch_size, eval_peak_bound_mb=bound,
        )


def summary_line(record: PreflightRecord) -> str:
    """The one log line of a preflight."""
    which = "step 1, warm-up included" if record.step_time_includes_warmup else "step 2"
    capacity = (f" of {record.capacity_mb:.0f} MB ({record.capacity_kind})" if record.capacity_mb is not None
                else " (device capacity unknown)")
    return (
        f"Preflight (epoch {record.measured_in_epoch}, batch {record.batch_size}): step {record.step_time_s:.3f} s "
        f"({which}; step 1 {record.first_step_time_s:.3f} s) x {record.steps_per_epoch} steps = epoch "
        f"~{_duration(record.epoch_time_s)}, x {record.epochs} epochs = run ~{_duration(record.run_time_s)} "
        f"(training steps only); memory peak {record.fit_memory_mb:.0f} MB{capacity} = resident "
        f"{record.resident_memory_mb:.0f} + step {record.step_memory_mb:.0f} MB"
    )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 60 else f"{minutes / 60:.1f} h"


def fit_error(record: PreflightRecord, advice: str | None) -> MemoryFitError:
    """The stop message of a measured step that does not fit."""
    assert record.capacity_mb is not None and record.capacity_kind is not None
    batch = batch_that_fits(record.capacity_mb, record.resident_memory_mb, record.fixed_step_memory_mb,
                            record.memory_per_image_mb)
    return MemoryFitError(
        f"The run will not fit: its first training step{'s' if record.steps_timed > 1 else ''} peaked at "
        f"{record.fit_memory_mb:.0f} MB, over the {record.capacity_mb:.0f} MB available ({_capacity_source(record.capacity_kind)}): "
        f"resident {record.resident_memory_mb:.0f} MB + step {record.step_memory_mb:.0f} MB at batch "
        f"{record.batch_size} (gradients and optimiser state {record.fixed_step_memory_mb:.0f} MB, about "
        f"{record.memory_per_image_mb:.1f} MB per image). {_batch_advice(batch, record.batch_size)}"
        + (f" {advice}" if advice else "")
    )


def eval_warning(record: PreflightRecord) -> str | None:
    """A warning when the evaluation batch's upper-bound peak exceeds the capacity (None: it fits)."""
    if record.eval_peak_bound_mb is None or record.capacity_mb is None or record.eval_peak_bound_mb <= record.capacity_mb:
        return None
    batch = batch_that_fits(record.capacity_mb, record.resident_memory_mb, 0.0, record.memory_per_image_mb)
    return (
        f"Evaluation at {TEST_BATCH_KEY} {record.eval_batch_size} may not fit: at the training step's "
        f"{record.memory_per_image_mb:.1f} MB per image it would peak at {record.eval_peak_bound_mb:.0f} MB, over the "
        f"{record.capacity_mb:.0f} MB available. This is an upper bound (evaluation keeps no activations for a "
        f"backward pass); if evaluation runs out of memory, set {TEST_BATCH_KEY} {max(1, batch)}."
    )


def out_of_memory_error(error: BaseException, capacity: MemoryCapacity | None, resident_mb: float, batch_size: int,
                        step: int, advice: str | None) -> MemoryFitError:
    """The stop message of an out-of-memory error in one of the first steps."""
    available = (f"the {capacity.mb:.0f} MB available ({_capacity_source(capacity.kind)})" if capacity
                 else "the memory available")
    smaller = max(1, batch_size // 2)
    return MemoryFitError(
        f"The run does not fit: training step {step} ran out of memory ({type(error).__name__}: "
        f"{_first_words(str(error))}). With {resident_mb:.0f} MB resident before "
        f"training, a step at batch {batch_size} needs more than {available}. Try {BATCH_KEY} {smaller}"
        + (f" (the preflight of that run measures the step and says which batch fits)" if smaller < batch_size else "")
        + "; a smaller batch changes the training recipe." + (f" {advice}" if advice else "")
    )


def _first_words(text: str, limit: int = 120) -> str:
    """The start of an error's text (CUDA's out-of-memory message runs over several sentences)."""
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line if len(line) <= limit else line[:limit].rstrip() + " ..."


def _capacity_source(kind: str) -> str:
    return {
        LIMIT_KEY: LIMIT_KEY,
        "cuda_free_plus_reserved": "free GPU memory plus what this run holds",
        "cpu_mem_available_plus_rss": "MemAvailable plus what this run holds",
    }.get(kind, kind)


def _batch_advice(batch: int, current: int) -> str:
    if batch >= current:  # the allocated memory fits: CUDA's cached blocks take the rest
        return ("By this estimate the batch is not what exceeds the memory, the CUDA allocator's cache is: "
                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True lowers it.")
    if batch < 1:
        return ("Even batch 1 would not fit by this estimate: the model and its gradients and optimiser "
                "state take the room.")
    return f"Try {BATCH_KEY} {batch} (an estimate; a smaller batch changes the training recipe)."
