"""The CPU memory meter: a peak reset returns freed memory first, so new work is counted."""
from __future__ import annotations

import sys

import pytest
import torch

from engine.memory import memory_in_use_mb, peak_memory_mb, release_freed_memory, reset_peak_memory

CPU = torch.device("cpu")
CHUNK_MB, CHUNKS = 4, 100  # small allocations come from the C heap, which keeps freed pages


def _allocate() -> list[torch.Tensor]:
    return [torch.ones(CHUNK_MB * 2**20 // 4) for _ in range(CHUNKS)]  # pages touched: resident


@pytest.mark.skipif(not sys.platform.startswith("linux") or not release_freed_memory(),
                    reason="the CPU meter reads Linux /proc and trims glibc's heap")
def test_work_that_reuses_freed_memory_is_counted_after_a_reset():
    # Free a 16 MB block first: glibc then raises its mmap threshold to 16 MB (its maximum is 32), so
    # the 4 MB chunks below are heap memory, which free() keeps resident unless it is trimmed.
    big = torch.ones(16 * 2**20 // 4)
    del big
    chunks = _allocate()
    del chunks  # ~400 MB freed, still resident in the heap without a trim
    assert reset_peak_memory(CPU)
    before = memory_in_use_mb(CPU)
    chunks = _allocate()
    step_mb = peak_memory_mb(CPU) - before
    del chunks
    # The second allocation's own memory shows: at least most of its 400 MB (without the trim it
    # reuses the freed pages and reads about 50 MB here).
    assert step_mb > 0.75 * CHUNK_MB * CHUNKS
