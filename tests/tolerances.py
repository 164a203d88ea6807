"""Tolerances for comparing two floating-point evaluations of the same maths, derived from the
arithmetic so that they hold whichever kernels a CPU picks.

Two fp32 evaluations of one formula differ when their sums are added in different orders: BLAS,
convolution and attention kernels choose blockings and vector widths by CPU (AVX2, AVX-512),
thread count and tensor shape. A tolerance must therefore bound the effect of *any* order, not
measure the order this machine happens to use.

The model (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1): with unit
roundoff u, a sum of n terms evaluated in any order has relative error at most γ_n = n·u/(1 - n·u),
about n·u. We take it relative to the size of the values (``magnitude``) rather than Σ|terms|: for
the random-sign terms of random-weight models Σ|terms| is about √n times the values, but
independent rounding errors grow like √n·u, not n·u (Higham & Mary, SIAM J. Sci. Comput. 41(5),
2019), so n·u·|value| stays above the actual error by a factor of about √(6n), i.e. 20 or more
standard deviations for the sums here. Errors of successive layers add: CLIP's initialisation keeps
each layer's output on the scale of its input and LayerNorm renormalises, so a relative error passes
through a layer neither amplified nor damped by more than O(1).

On the tiny CLIPs of the tests these bounds are about 1e-3 on O(1) features, ~1000x the differences
measured on x86 (1e-6), and 10-1000x below what a real bug causes (an exact GELU for QuickGELU moves
features by 1e-2, a missing LayerNorm or a shifted causal mask by 0.2..2).
"""
from __future__ import annotations

from torch import nn

FP64_UNIT_ROUNDOFF = 2.0**-53
FP32_UNIT_ROUNDOFF = 2.0**-24
FP16_UNIT_ROUNDOFF = 2.0**-11
BF16_UNIT_ROUNDOFF = 2.0**-8


def fp32_atol(
    magnitude: float, accumulation: int, layers: int = 1, unit_roundoff: float = FP32_UNIT_ROUNDOFF
) -> float:
    """Bound on |a - b| for two evaluations of the same maths that differ only in summation order.

    ``magnitude``: the size of the values compared and of the values feeding their sums (LayerNorm
    keeps CLIP's activations O(1)). ``accumulation``: the total length of the sums one layer performs
    one after another (a projection of width W adds W terms, an MLP's second matmul 4W, attention's
    weighted sum one term per token, an elementwise step 1). ``layers``: how many such layers run in
    sequence. Each evaluation is within layers·accumulation·u·magnitude of the exact result, so two
    are within twice that. ``unit_roundoff`` selects another precision (e.g. `FP64_UNIT_ROUNDOFF`).
    """
    return float(2.0 * layers * accumulation * unit_roundoff * magnitude)


def transformer_atol(
    magnitude: float, width: int, length: int, blocks: int, unit_roundoff: float = FP32_UNIT_ROUNDOFF
) -> float:
    """`fp32_atol` for a CLIP tower: `blocks` pre-LN transformer blocks of `width` on `length` tokens.

    One block sums 12W + 2L terms in sequence: two LayerNorms (mean and variance over the width,
    4W), the q/k/v projection (W), attention scores (the head width, at most W), the softmax
    normaliser and the weighted sum over the sequence (2L), the output projection (W) and the MLP
    (W, then 4W). The tower's embedding (a patch convolution of 3·p² ≤ 12W terms plus LayerNorm) and
    head (LayerNorm plus projection) are each no longer, so a tower counts blocks + 2 layers.
    """
    return fp32_atol(magnitude, 12 * width + 2 * length, blocks + 2, unit_roundoff)


def clip_image_relative_atol(model: nn.Module) -> float:
    """Relative error bound (values of size 1) of two fp32 evaluations of a CLIP image tower.

    ViT: `transformer_atol` over the class token and the patches. ModifiedResNet: every
    convolution's and projection's fan-in as if all ran in sequence (the downsample branch runs in
    parallel, so this over-counts), plus attention pooling's scores and its softmax-weighted sum;
    BatchNorm (eval) and average pooling add a handful of roundings, well inside that.
    """
    visual = model.visual
    if hasattr(visual, "attnpool"):
        fan_in = sum(m.weight[0].numel() for m in visual.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        pool = visual.attnpool
        attention = pool.c_proj.in_features // pool.num_heads + 2 * pool.positional_embedding.shape[0]
        return fp32_atol(1.0, fan_in + attention)
    return transformer_atol(1.0, visual.width, 1 + visual.grid_size**2, visual.transformer.layers)


def clip_text_relative_atol(model: nn.Module) -> float:
    """Relative error bound of two fp32 evaluations of a CLIP text tower (up to the full context)."""
    return transformer_atol(1.0, model.transformer.width, model.context_length, model.transformer.layers)


def cosine_logit_atol(logit_scale: float, *relative_errors: float) -> float:
    """Bound on the change of CLIP logits, scale·cos(a, b), when a and b carry relative errors.

    cos(a + da, b + db) differs from cos(a, b) by at most |da|/|a| + |db|/|b|; the normalising and
    the final dot product add a relative error of a few times embed_dim·u, far below the towers'.
    Pass each tower's bound as `fp32_atol`/`transformer_atol` with magnitude 1 (a relative error).
    """
    return logit_scale * sum(relative_errors)


def low_precision_relative_error(roundings: int, unit_roundoff: float) -> float:
    """Relative error bound of an fp16/bf16 forward against fp32 on the same weights.

    Each operation rounds its result to the low precision (relative error ≤ u), and a matmul or
    convolution also reads weights rounded once (≤ u relative to Σ|terms|, again about the value's
    size): count 2 roundings for those and 1 for elementwise steps (LayerNorm output, softmax,
    activation, residual add). Products are accumulated in fp32 by PyTorch's CPU kernels and by
    cuBLAS (which may round a few split-K partial sums to fp16: one more rounding per matmul, inside
    the slack of counting every elementwise step as a rounding), so their order adds ~n·2^-24,
    negligible here. Errors add over the steps, as for `fp32_atol`.
    """
    return roundings * unit_roundoff
