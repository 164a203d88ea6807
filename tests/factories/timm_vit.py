"""timm ViT weight files for tests: a random model's state dict in timm's formats, and the same
weights in the original JAX/Flax ``.npz`` layout of Google's ViT releases."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Union

import numpy as np
from torch import Tensor


def _np(t: Tensor) -> np.ndarray:
    return t.detach().float().numpy()


def write_jax_npz(state: Mapping[str, Tensor], num_heads: int, path: Union[str, Path]) -> Path:
    """Write a timm ViT state dict (no fc_norm, class token) as Google's ``ViT-*.npz`` arrays.

    Layout of the original release: Flax Dense kernels are [in, out] (the transpose of
    nn.Linear.weight), the patch conv kernel is HWIO, attention kernels split the heads
    ([D, heads, head_dim] for query/key/value, [heads, head_dim, D] for out).
    """
    arrays = {
        "embedding/kernel": _np(state["patch_embed.proj.weight"].permute(2, 3, 1, 0)),
        "embedding/bias": _np(state["patch_embed.proj.bias"]),
        "cls": _np(state["cls_token"]),
        "Transformer/posembed_input/pos_embedding": _np(state["pos_embed"]),
        "Transformer/encoder_norm/scale": _np(state["norm.weight"]),
        "Transformer/encoder_norm/bias": _np(state["norm.bias"]),
    }
    if "head.weight" in state:
        arrays["head/kernel"] = _np(state["head.weight"].t())
        arrays["head/bias"] = _np(state["head.bias"])
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        t, j = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        width = state[t + "norm1.weight"].shape[0]
        head_dim = width // num_heads
        qkv_w = state[t + "attn.qkv.weight"].reshape(3, width, width)  # [q|k|v] rows of [out, in]
        qkv_b = state[t + "attn.qkv.bias"].reshape(3, width)
        for n, part in enumerate(("query", "key", "value")):
            arrays[f"{j}MultiHeadDotProductAttention_1/{part}/kernel"] = _np(
                qkv_w[n].t().reshape(width, num_heads, head_dim))
            arrays[f"{j}MultiHeadDotProductAttention_1/{part}/bias"] = _np(qkv_b[n].reshape(num_heads, head_dim))
        arrays[f"{j}MultiHeadDotProductAttention_1/out/kernel"] = _np(
            state[t + "attn.proj.weight"].reshape(width, num_heads, head_dim).permute(1, 2, 0))
        arrays[f"{j}MultiHeadDotProductAttention_1/out/bias"] = _np(state[t + "attn.proj.bias"])
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            arrays[f"{j}{ln}/scale"] = _np(state[f"{t}{norm}.weight"])
            arrays[f"{j}{ln}/bias"] = _np(state[f"{t}{norm}.bias"])
        for n in range(2):
            arrays[f"{j}MlpBlock_3/Dense_{n}/kernel"] = _np(state[f"{t}mlp.fc{n + 1}.weight"].t())
            arrays[f"{j}MlpBlock_3/Dense_{n}/bias"] = _np(state[f"{t}mlp.fc{n + 1}.bias"])
    path = Path(path)
    np.savez(path, **arrays)
    return path
