"""benchmarks.fast_mode_accuracy's aggregation (the runs themselves take minutes and are not tested here)."""
from __future__ import annotations

import math

from benchmarks import fast_mode_accuracy as fma


def test_summaries_are_mean_and_sample_std_and_the_verdict_uses_the_exact_spread():
    exact = fma.summarise("exact", [1, 2, 3], [70.0, 72.0, 77.0])
    # mean 73; sample variance ((-3)^2 + (-1)^2 + 4^2) / 2 = 13.
    assert exact.mean == 73.0 and math.isclose(exact.std, math.sqrt(13.0), rel_tol=1e-12)
    close = fma.summarise("fast", [1, 2, 3], [74.0, 75.0, 76.0])  # mean 75: 2 points < sqrt(13)
    far = fma.summarise("fast", [1, 2, 3], [77.0, 77.0, 77.0])  # mean 77: 4 points > sqrt(13)
    assert fma.within_seed_spread(exact, close) and not fma.within_seed_spread(exact, far)
    assert fma.summarise("exact", [1], [70.0]).std == 0.0
    text = fma.report(exact, far)
    assert "exact   73.00 ± 3.61" in text and "fast    77.00 ± 0.00" in text
    assert "fast - exact: +4.00 points, outside the exact runs' seed-to-seed spread (3.61)" in text


def test_run_arguments_switch_only_fast_mode():
    exact, fast = (fma.run_argv(mode, 2, "/out", "") for mode in ("exact", "fast"))
    assert [a for a, b in zip(exact, fast) if a != b] == ["False"]
    assert fast[fast.index("TRAIN.FAST_MODE") + 1] == "True" and "--root" not in fast
    assert fma.run_argv("exact", 2, "/out", "/data")[:2] == ["--root", "/data"]
