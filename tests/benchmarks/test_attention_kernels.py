"""benchmarks.attention_kernels: both kernels compute the same attention, and the table has a row
for every shape, dtype and kernel."""
from __future__ import annotations

import torch

from benchmarks import attention_kernels
from tests.tolerances import fp32_atol

TINY = (attention_kernels.AttentionShape("tiny", 2, 2, 5, 8, True),)


def test_the_two_kernels_compute_the_same_causal_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    mask = torch.full((5, 5), float("-inf")).triu(1)
    fused, plain = (attention_kernels.KERNELS[name](q, k, v, mask) for name in ("fused", "plain"))
    # Two fp32 orders of the same sums: the head width (8) for the scores, 2 for the softmax
    # normaliser and the weighted sum over 5 tokens; values O(1).
    assert (fused - plain).abs().max() <= fp32_atol(float(v.abs().max()), 8 + 2 * 5)


def test_the_table_has_every_shape_dtype_and_kernel(capsys):
    rows = attention_kernels.main(["--repeats", "1"], shapes=TINY)
    assert {(r["dtype"], r["kernel"]) for r in rows} == {(d, k) for d in ("float32", "bfloat16") for k in ("fused", "plain")}
    assert all(r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 for r in rows)
    assert capsys.readouterr().out.count("tiny") == 4
