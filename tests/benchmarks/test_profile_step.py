"""benchmarks.profile_step on the tiny geometry: the profile covers a whole Skip Tuning step."""
from __future__ import annotations

from benchmarks import profile_step


def test_profile_covers_forward_backward_and_the_fused_optimizer_step():
    args = profile_step.build_parser().parse_args(
        ["--trainer", "SkipTuning", "--geometry", "tiny", "--image-size", "32", "--classes", "8", "--batch", "2"])
    counts = {event.key: event.count for event in profile_step.profile_events(args)}
    # Forward linears are addmm, their backward mm; fp32 SGD runs the fused kernel, once per parameter group.
    assert counts["aten::addmm"] > 0 and counts["aten::mm"] > 0
    assert counts.get("aten::_fused_sgd_", 0) >= 1
