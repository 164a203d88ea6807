"""Memory a run holds, and the peak over a stretch of work: allocated CUDA memory, or on the CPU the
resident set size (Linux /proc; the peak, VmHWM, can be reset by writing to /proc/self/clear_refs)."""
from __future__ import annotations

import ctypes
import resource

import torch

__all__ = ["memory_in_use_mb", "reset_peak_memory", "peak_memory_mb", "memory_kind", "release_freed_memory"]


def memory_kind(device: torch.device, peak_was_reset: bool = True) -> str:
    """What `peak_memory_mb` measures on `device`."""
    if device.type == "cuda":
        return "cuda_max_allocated"
    return "cpu_peak_rss" if peak_was_reset else "cpu_peak_rss_process_lifetime"


def memory_in_use_mb(device: torch.device) -> float:
    """Memory the process holds now: allocated CUDA memory, or the resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return _proc_status_kb("VmRSS") / 1024


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak measurement; False where the peak cannot be reset (then it is the process's)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    release_freed_memory()  # else memory freed earlier (a build, an evaluation) hides the new work's own
    try:  # Linux: writing 5 resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> bool:
    """Return the C heap's freed pages to the OS (glibc's `malloc_trim`), so that the resident set is
    what the process holds now; False where there is no glibc. Without it, work that reuses memory an
    earlier step freed adds nothing to the resident set, and its own memory reads as zero."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def peak_memory_mb(device: torch.device) -> float:
    """Peak since the last `reset_peak_memory` (CUDA allocations, or the CPU's peak RSS)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _proc_status_kb("VmHWM")
    # ru_maxrss is in KiB on Linux; it is the process's lifetime peak (never reset).
    return (hwm if hwm > 0 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def proc_kb_field(path: str, field: str) -> float | None:
    """A `kB` field of a /proc file such as /proc/self/status or /proc/meminfo (None where there is
    none, e.g. not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _proc_status_kb(field: str) -> float:
    """A `kB` field of /proc/self/status (0 where there is none)."""
    return proc_kb_field("/proc/self/status", field) or 0.0
