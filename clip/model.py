"""CLIP (ViT and modified ResNet) that loads OpenAI's released weights unchanged.

Reads top to bottom: building blocks -> transformer -> the two image towers ->
the joint model -> weight conversion and construction from a state dict.

Layout is batch-first ([N, L, W]) everywhere. Parameter names match OpenAI's
state-dict keys exactly (e.g. ``attn.in_proj_weight``), although attention is
implemented here with ``F.scaled_dot_product_attention`` (plain ops in bf16 on a CPU: ``attention``).

Extension points for prompt-learning methods (nobody needs to fork this file):

* ``Transformer.forward(..., start, end, layer_prompts, prompt_slot)`` runs a
  slice of blocks and replaces tokens with per-layer prompts (deep prompts).
* ``CLIP.encode_text_embeddings`` encodes token *embeddings* (learned context).
* ``VisionTransformer.embed / run_blocks / head`` split the image forward so
  prompts can be appended and hidden states cached (Skip Tuning).
* ``CLIP.encode_image(image, prompts=, layer_prompts=)`` takes shallow and deep
  vision prompts (MaPLe, PromptSRC) in one call.
* ``Transformer.forward_rows(x, rows, start=, prefix=)`` runs blocks whose last
  one computes only the pooled rows (class token, EOT), optionally with a
  prefix shared by all sequences computed once (Skip Tuning's training step).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .preprocess import openai_preprocess_cfg

logger = logging.getLogger(__name__)

# Entries of OpenAI's TorchScript state dicts that are not model parameters.
EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


def math_attention_is_faster(dtype: torch.dtype, device: torch.device) -> bool:
    """bf16 on a CPU (fast mode): PyTorch's fused CPU attention kernel is then slower than three plain
    ops, 2x forward and 2.5-5x forward + backward at ViT-B/16's and the text tower's shapes
    (`python -m benchmarks.attention_kernels`). In fp32, and on CUDA, the fused kernel is faster."""
    return dtype == torch.bfloat16 and device.type == "cpu"


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
    """softmax(q k^T / sqrt(head_dim) + attn_mask) v, with the faster kernel for the dtype and device
    (`math_attention_is_faster`). The plain path rounds the scores to bf16 where the fused kernel keeps
    them in fp32: fast mode's bf16 precision, not the exact mode's."""
    if math_attention_is_faster(q.dtype, q.device):
        return plain_attention(q, k, v, attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def plain_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
    """`attention` as three plain ops: the scores q k^T / sqrt(head_dim) + attn_mask, their softmax,
    and its product with v."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if attn_mask is not None:
        scores = scores + attn_mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back to the input dtype (as OpenAI's)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation all OpenAI CLIP models were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class MultiheadSelfAttention(nn.Module):
    """Self-attention whose parameters are named like ``nn.MultiheadAttention``.

    Keeping the packed ``in_proj_weight`` / ``in_proj_bias`` and the ``out_proj``
    Linear makes OpenAI checkpoints load without any key remapping.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"Attention width {width} is not divisible by heads {heads}.")
        self.width, self.heads = width, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def project(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of x ([N, L, W]), each [N, heads, L, head_dim]."""
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        # [N, L, 3W] -> 3 x [N, heads, L, head_dim]
        q, k, v = qkv.view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def attend_heads(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        """Attention of queries q to keys k / values v ([N, heads, *, head_dim]), heads merged and
        projected: [N, Q, W]. ``attn_mask``: additive, [Q, K] or [N, 1, Q, K]."""
        if attn_mask is not None:
            attn_mask = attn_mask.to(dtype=q.dtype, device=q.device)
        out = attention(q, k, v, attn_mask)
        n, _, n_queries, _ = q.shape
        return self.out_proj(out.transpose(1, 2).reshape(n, n_queries, self.width))

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        return self.attend_heads(*self.project(x), attn_mask)

    def forward_with_prefix(self, tokens: Tensor, prefix_length: int, n: int, attn_mask: Tensor) -> Tensor:
        """``forward`` of N sequences cat([prefix, x_i]) sharing a prefix of P tokens, given as the rows
        [prefix; x_0; ...; x_{N-1}] ([P + N·S, W]): the same rows out, the prefix computed once (each
        linear layer is one matrix product over all rows). ``attn_mask``: the causal [P + S, P + S] mask."""
        width, heads = self.width, self.heads
        qkv = F.linear(tokens, self.in_proj_weight, self.in_proj_bias).view(-1, 3, heads, width // heads)
        q_prefix, k_prefix, v_prefix = qkv[:prefix_length].permute(1, 2, 0, 3).unsqueeze(1)  # [1, heads, P, hd]
        q, k, v = qkv[prefix_length:].view(n, -1, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        k = torch.cat([k_prefix.expand(n, -1, -1, -1), k], dim=2)
        v = torch.cat([v_prefix.expand(n, -1, -1, -1), v], dim=2)
        mask = attn_mask.to(dtype=q.dtype, device=q.device)
        out_prefix = attention(q_prefix, k_prefix, v_prefix, mask[:prefix_length, :prefix_length])
        out = attention(q, k, v, mask[prefix_length:])
        out = torch.cat([out_prefix[0].transpose(0, 1).reshape(prefix_length, width), out.transpose(1, 2).reshape(-1, width)])
        return self.out_proj(out)

    def forward_rows(self, tokens: Tensor, prefix_length: int, n: int, rows: Tensor,
                     attn_mask: Optional[Tensor] = None) -> Tensor:
        """Attention output ([N, W]) at one query row per sequence, the sequences given as in
        `forward_with_prefix` (``prefix_length`` 0: no prefix, rows [x_0; ...]); ``rows`` index x_i.
        Keys and values still come from every token; query i uses row ``P + rows[i]`` of ``attn_mask``."""
        width, heads, head_dim = self.width, self.heads, self.width // self.heads
        length = (tokens.shape[0] - prefix_length) // n
        query_rows = prefix_length + torch.arange(n, device=tokens.device) * length + rows
        q = F.linear(tokens[query_rows], self.in_proj_weight[:width], self.in_proj_bias[:width])
        q = q.view(n, 1, heads, head_dim).transpose(1, 2)  # [N, heads, 1, head_dim]
        kv = F.linear(tokens, self.in_proj_weight[width:], self.in_proj_bias[width:]).view(-1, 2, heads, head_dim)
        k, v = kv[prefix_length:].view(n, length, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        if prefix_length:
            k_prefix, v_prefix = kv[:prefix_length].permute(1, 2, 0, 3).unsqueeze(1).expand(-1, n, -1, -1, -1)
            k, v = torch.cat([k_prefix, k], dim=2), torch.cat([v_prefix, v], dim=2)
        if attn_mask is not None:  # each query's own row of the mask, for every head
            attn_mask = attn_mask[rows + prefix_length].view(n, 1, 1, attn_mask.shape[1])
        return self.attend_heads(q, k, v, attn_mask).squeeze(1)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = MultiheadSelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm(width)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))

    def forward_with_prefix(self, tokens: Tensor, prefix_length: int, n: int, attn_mask: Tensor) -> Tensor:
        """``forward`` of N sequences sharing a prefix, as rows [prefix; x_0; ...; x_{N-1}] (see
        `MultiheadSelfAttention.forward_with_prefix`). Exact: a causal prefix sees nothing after it."""
        tokens = tokens + self.attn.forward_with_prefix(self.ln_1(tokens), prefix_length, n, attn_mask)
        return tokens + self.mlp(self.ln_2(tokens))

    def forward_rows(self, tokens: Tensor, prefix_length: int, n: int, rows: Tensor,
                     attn_mask: Optional[Tensor] = None) -> Tensor:
        """The block's output ([N, W]) at row ``rows[i]`` of each sequence x_i (rows laid out as in
        `forward_with_prefix`): attention output, residual and MLP for those rows only (the rest of
        the output would be thrown away)."""
        length = (tokens.shape[0] - prefix_length) // n
        x_rows = tokens[prefix_length + torch.arange(n, device=tokens.device) * length + rows]
        x_rows = x_rows + self.attn.forward_rows(self.ln_1(tokens), prefix_length, n, rows, attn_mask)
        return x_rows + self.mlp(self.ln_2(x_rows))


class Transformer(nn.Module):
    """A stack of residual attention blocks, with deep-prompt and slicing hooks."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(
        self,
        x: Tensor,
        attn_mask: Optional[Tensor] = None,
        *,
        start: int = 0,
        end: Optional[int] = None,
        layer_prompts: Optional[Mapping[int, Tensor]] = None,
        prompt_slot: str = "last",
    ) -> Tensor:
        """Run ``resblocks[start:end]`` on ``x`` ([N, L, W]).

        ``layer_prompts`` maps a block index i to prompts P ([n, W] or [N, n, W]);
        before block i runs, n tokens of x are replaced by P: the last n tokens
        (``prompt_slot="last"``, vision deep prompts) or tokens 1..n
        (``"after_sos"``, text deep prompts). ``attn_mask`` is an additive float
        mask of shape [L, L] or None.
        """
        if x.dim() != 3:
            raise ValueError(f"Transformer input must be [N, L, W], got shape {tuple(x.shape)}.")
        if prompt_slot not in ("last", "after_sos"):
            raise ValueError(f"prompt_slot must be 'last' or 'after_sos', got {prompt_slot!r}.")
        n_blocks = len(self.resblocks)
        end = n_blocks if end is None else end
        if not 0 <= start <= end <= n_blocks:
            raise ValueError(f"Block range [{start}:{end}] is invalid for a transformer with {n_blocks} blocks.")
        if layer_prompts:
            bad = [i for i in layer_prompts if not 0 <= int(i) < n_blocks]
            if bad:
                raise ValueError(f"layer_prompts keys {bad} are outside the block indices 0..{n_blocks - 1}.")
        for i in range(start, end):
            if layer_prompts is not None and i in layer_prompts:
                x = replace_prompt_tokens(x, layer_prompts[i], prompt_slot)
            x = self.resblocks[i](x, attn_mask)
        return x

    def forward_rows(self, x: Tensor, rows: Tensor, attn_mask: Optional[Tensor] = None, *, start: int = 0,
                     prefix: Optional[Tensor] = None, layer_prompts: Optional[Mapping[int, Tensor]] = None,
                     prompt_slot: str = "last") -> Tensor:
        """``forward(x, attn_mask, start=start)[arange(N), rows]`` ([N, W]), the last block computing
        only the row of each sequence that is read (a pooled token: the class token, the EOT token).

        ``prefix`` ([1, P, W]): the sequences are cat([prefix, x_i]), sharing their first P tokens,
        which are computed once (`ResidualAttentionBlock.forward_with_prefix`; causal ``attn_mask``
        [P + S, P + S] needed) and ``rows`` index x. Exact: the last block's other rows feed nothing,
        and a causal prefix sees nothing after it. Equal to the full forward to float rounding (the
        same sums, split differently into matrix products, and the shared prefix's gradients summed
        over the sequences before, not after, its weight products). ``layer_prompts`` / ``prompt_slot``
        as in `forward`; with a shared prefix only text deep prompts shared by every sequence ([n, W],
        ``"after_sos"``) that lie inside the prefix (1 + n <= P): they replace the prefix's tokens 1..n.
        """
        n_blocks = len(self.resblocks)
        if not 0 <= start <= n_blocks:
            raise ValueError(f"start={start} is invalid for a transformer with {n_blocks} blocks.")
        if prefix is not None and (attn_mask is None or prefix.dim() != 3 or prefix.shape[0] != 1):
            raise ValueError("A shared prefix must be [1, P, W] and needs the causal attn_mask.")
        if prefix is not None and layer_prompts:
            check_prompts_inside_prefix(layer_prompts, prompt_slot, prefix.shape[1])
        rows = rows.to(device=x.device, dtype=torch.long)
        if start == n_blocks:
            return x[torch.arange(x.shape[0], device=x.device), rows]
        n, width = x.shape[0], x.shape[2]
        if prefix is None:
            prefix_length = 0
            x = self.forward(x, attn_mask, start=start, end=n_blocks - 1, layer_prompts=layer_prompts,
                             prompt_slot=prompt_slot)
            if layer_prompts is not None and n_blocks - 1 in layer_prompts:
                x = replace_prompt_tokens(x, layer_prompts[n_blocks - 1], prompt_slot)
            tokens = x.reshape(-1, width)
        else:  # rows [prefix; x_0; ...; x_{N-1}]: every linear layer is one matrix product
            prefix_length = prefix.shape[1]
            tokens = torch.cat([prefix[0], x.reshape(-1, width)])
            for i in range(start, n_blocks):
                if layer_prompts and i in layer_prompts:  # the prefix's tokens 1..n (every sequence's)
                    prompts = layer_prompts[i].to(tokens.dtype)
                    tokens = torch.cat([tokens[:1], prompts, tokens[1 + prompts.shape[0]:]])
                if i < n_blocks - 1:
                    tokens = self.resblocks[i].forward_with_prefix(tokens, prefix_length, n, attn_mask)
        return self.resblocks[n_blocks - 1].forward_rows(tokens, prefix_length, n, rows, attn_mask)


def shared_prefix_length(tokens: Tensor) -> int:
    """How many leading tokens every row of token ids [N, L] has in common (a template's start),
    stopping before the first EOT (the largest id)."""
    same = (tokens == tokens[:1]).all(dim=0)
    length = int(same.long().cumprod(dim=0).sum())
    return min(length, int(tokens.argmax(dim=-1).min()))


def check_prompts_inside_prefix(layer_prompts: Mapping[int, Tensor], slot: str, prefix_length: int) -> None:
    """Deep prompts a shared prefix can take: the same [n, W] for every sequence, replacing tokens
    1..n after SOS, all inside the prefix."""
    if slot != "after_sos" or not prompts_fit_prefix(layer_prompts, prefix_length):
        raise ValueError(f"A shared prefix of {prefix_length} tokens takes only deep prompts [n, W] shared by every "
                         f"sequence after SOS with 1 + n <= {prefix_length} (got slot {slot!r}, shapes "
                         f"{sorted({tuple(p.shape) for p in layer_prompts.values()})}).")


def prompts_fit_prefix(layer_prompts: Optional[Mapping[int, Tensor]], prefix_length: int) -> bool:
    """Whether text deep prompts (slot ``"after_sos"``) leave a shared prefix of this length shared."""
    return not layer_prompts or all(p.dim() == 2 and 1 + p.shape[0] <= prefix_length for p in layer_prompts.values())


def replace_prompt_tokens(x: Tensor, prompts: Tensor, slot: str = "last") -> Tensor:
    """Return x ([N, L, W]) with n tokens replaced by ``prompts`` ([n, W] or [N, n, W])."""
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0).expand(x.shape[0], -1, -1)
    if prompts.dim() != 3 or prompts.shape[0] != x.shape[0] or prompts.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"Prompts of shape {tuple(prompts.shape)} do not fit hidden states {tuple(x.shape)}; "
            "expected [n, W] or [N, n, W]."
        )
    n = prompts.shape[1]
    if n >= x.shape[1]:
        raise ValueError(f"Cannot replace {n} prompt tokens in a sequence of length {x.shape[1]}.")
    prompts = prompts.to(x.dtype)
    if slot == "last":
        return torch.cat([x[:, : x.shape[1] - n], prompts], dim=1)
    return torch.cat([x[:, :1], prompts, x[:, 1 + n :]], dim=1)


# ---------------------------------------------------------------------------
# Image towers
# ---------------------------------------------------------------------------


class VisionTransformer(nn.Module):
    """ViT image encoder: patchify, class token, transformer, project the class token."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        self.input_resolution, self.patch_size = input_resolution, patch_size
        self.width, self.output_dim = width, output_dim
        self.grid_size = input_resolution // patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def embed(self, image: Tensor, prompts: Optional[Tensor] = None) -> Tensor:
        """Tokens before the first block: [N, 1 + G² (+ n), W]."""
        x = self.conv1(image.to(self.conv1.weight.dtype))  # [N, W, G, G]
        expected = self.positional_embedding.shape[0] - 1
        if x.shape[-1] * x.shape[-2] != expected or x.shape[-1] != x.shape[-2]:
            raise ValueError(
                f"Image of size {tuple(image.shape[-2:])} gives a {x.shape[-2]}x{x.shape[-1]} patch grid, but "
                f"this model expects {self.input_resolution}x{self.input_resolution} images "
                f"({self.grid_size}x{self.grid_size} patches). Resize the input (INPUT.SIZE) to "
                f"{self.input_resolution}; positional embeddings are not interpolated."
            )
        x = x.flatten(2).transpose(1, 2)  # [N, G², W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        if prompts is not None:
            if prompts.dim() == 2:
                prompts = prompts.unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x, prompts.to(x.dtype)], dim=1)
        return self.ln_pre(x)

    def run_blocks(
        self,
        x: Tensor,
        start: int = 0,
        end: Optional[int] = None,
        layer_prompts: Optional[Mapping[int, Tensor]] = None,
    ) -> Tensor:
        """Run vision blocks [start:end] on batch-first hidden states (deep prompts replace the last tokens)."""
        return self.transformer(x, None, start=start, end=end, layer_prompts=layer_prompts, prompt_slot="last")

    def head(self, x: Tensor) -> Tensor:
        """Final features from hidden states: ln_post(class token) @ proj."""
        return self.ln_post(x[:, 0]) @ self.proj

    def features_from_hidden(self, x: Tensor, start: int = 0) -> Tensor:
        """``head(run_blocks(x, start=start))`` with the last block computing the class token only
        (see ``Transformer.forward_rows``): equal to float rounding, ~(10/12)/blocks cheaper."""
        class_token = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.ln_post(self.transformer.forward_rows(x, class_token, start=start)) @ self.proj

    def forward(
        self,
        image: Tensor,
        *,
        prompts: Optional[Tensor] = None,
        layer_prompts: Optional[Mapping[int, Tensor]] = None,
        rows_only: Optional[bool] = None,
    ) -> Tensor:
        """Image features. ``rows_only`` (default: fp32 weights): the last block computes the class
        token only (``Transformer.forward_rows``), the same features to float rounding and about
        10/12 of a block cheaper; off in fp16, where the originals' features are matched bit for bit."""
        x = self.embed(image, prompts)
        if rows_only is None:
            rows_only = self.conv1.weight.dtype == torch.float32
        if not rows_only:
            return self.head(self.run_blocks(x, layer_prompts=layer_prompts))
        class_token = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        pooled = self.transformer.forward_rows(x, class_token, layer_prompts=layer_prompts, prompt_slot="last")
        return self.ln_post(pooled) @ self.proj


class Bottleneck(nn.Module):
    """ResNet bottleneck with anti-aliased downsampling (avg-pool before stride-1 convs)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Sequential] = None
        if stride > 1 or inplanes != planes * self.expansion:
            # Child names "-1", "0", "1" give OpenAI's keys downsample.0.* / downsample.1.*.
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean token queries all tokens of the final feature map."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: Optional[int] = None):
        super().__init__()
        self.spacial_dim, self.num_heads = spacial_dim, num_heads
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if h * w + 1 != self.positional_embedding.shape[0]:
            raise ValueError(
                f"Feature map {h}x{w} does not match the attention pool's {self.spacial_dim}x{self.spacial_dim} "
                f"grid; this model expects {self.spacial_dim * 32}x{self.spacial_dim * 32} images. Resize the input "
                f"(INPUT.SIZE) to {self.spacial_dim * 32}; positional embeddings are not interpolated."
            )
        x = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        head_dim = c // self.num_heads
        q = self.q_proj(x[:, :1]).view(n, 1, self.num_heads, head_dim).transpose(1, 2)
        k = self.k_proj(x).view(n, -1, self.num_heads, head_dim).transpose(1, 2)
        v = self.v_proj(x).view(n, -1, self.num_heads, head_dim).transpose(1, 2)
        out = attention(q, k, v)  # [N, heads, 1, head_dim]
        return self.c_proj(out.transpose(1, 2).reshape(n, c))


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet: 3-conv stem, anti-aliased bottlenecks, attention pooling head."""

    def __init__(
        self, layers: Tuple[int, int, int, int], output_dim: int, heads: int, input_resolution: int = 224, width: int = 64
    ):
        super().__init__()
        self.output_dim, self.input_resolution = output_dim, input_resolution
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        embed_dim = width * 32
        self.attnpool = AttentionPool2d(input_resolution // 32, embed_dim, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, image: Tensor) -> Tensor:
        """Three 3x3 convs and an average pool: resolution / 4."""
        x = image.to(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward(self, image: Tensor) -> Tensor:
        x = self.stem(image)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


# ---------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------


class CLIP(nn.Module):
    """Image and text encoders with a shared embedding space and a learned temperature."""

    def __init__(
        self,
        embed_dim: int,
        image_resolution: int,
        vision_layers: Union[Tuple[int, int, int, int], int],
        vision_width: int,
        vision_patch_size: Optional[int],
        context_length: int,
        vocab_size: int,
        transformer_width: int,
        transformer_heads: int,
        transformer_layers: int,
    ):
        super().__init__()
        self.context_length, self.vocab_size = context_length, vocab_size
        if isinstance(vision_layers, (tuple, list)):
            self.visual: Union[ModifiedResNet, VisionTransformer] = ModifiedResNet(
                layers=tuple(vision_layers),
                output_dim=embed_dim,
                heads=vision_width * 32 // 64,
                input_resolution=image_resolution,
                width=vision_width,
            )
        else:
            if vision_patch_size is None:
                raise ValueError("A ViT image tower needs vision_patch_size (got None).")
            self.visual = VisionTransformer(
                input_resolution=image_resolution,
                patch_size=vision_patch_size,
                width=vision_width,
                layers=vision_layers,
                heads=vision_width // 64,
                output_dim=embed_dim,
            )
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.reset_buffers()
        self.initialize_parameters()

    def reset_buffers(self) -> None:
        """(Re)build the non-persistent causal mask (also after loading into a meta-device model)."""
        length, device = self.context_length, self.positional_embedding.device
        mask = torch.full((length, length), float("-inf"), device=device).triu_(1)
        # Additive causal mask; non-persistent so it never enters state dicts.
        self.register_buffer("attn_mask", mask, persistent=False)

    def initialize_parameters(self) -> None:
        """CLIP's initialisation recipe (only matters for random-weight models)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features**-0.5
            for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(linear.weight, std=std)
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for block in stage:
                    nn.init.zeros_(block.bn3.weight)
        for tower in (self.transformer, getattr(self.visual, "transformer", None)):
            if tower is None:
                continue
            proj_std = tower.width**-0.5 * (2 * tower.layers) ** -0.5
            attn_std = tower.width**-0.5
            fc_std = (2 * tower.width) ** -0.5
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def preprocess_cfg(self) -> Dict[str, Any]:
        """The input this model expects, in timm's ``pretrained_cfg`` keys (see `clip.preprocess`)."""
        return openai_preprocess_cfg(self.visual.input_resolution)

    def causal_mask(self, length: int) -> Tensor:
        """Additive [length, length] mask: position i attends to positions <= i."""
        if length > self.context_length:
            raise ValueError(f"Text length {length} exceeds the model's context length {self.context_length}.")
        return self.attn_mask[:length, :length]

    def encode_image(
        self,
        image: Tensor,
        *,
        prompts: Optional[Tensor] = None,
        layer_prompts: Optional[Mapping[int, Tensor]] = None,
        rows_only: Optional[bool] = None,
    ) -> Tensor:
        """Image features; ``prompts`` ([n, W] or [N, n, W]) are appended before ``ln_pre`` and
        ``layer_prompts`` replace the last n tokens before the given blocks (ViT only).
        ``rows_only``: see ``VisionTransformer.forward`` (ViT only; default: fp32 weights)."""
        if prompts is None and layer_prompts is None:
            if isinstance(self.visual, VisionTransformer):
                return self.visual(image.to(self.dtype), rows_only=rows_only)
            return self.visual(image.to(self.dtype))
        if not isinstance(self.visual, VisionTransformer):
            raise ValueError(
                "Vision prompts need a ViT image encoder; this CLIP has a ResNet. "
                "Choose a ViT backbone (e.g. MODEL.BACKBONE.NAME ViT-B/16)."
            )
        return self.visual(image.to(self.dtype), prompts=prompts, layer_prompts=layer_prompts, rows_only=rows_only)

    def encode_text(self, text: Tensor) -> Tensor:
        """Features of token ids [N, L]; the EOT token (largest id) of each row is projected. In fp32
        the tokens every row starts with (a template's start) are computed once (``shared_prefix``)."""
        text = text.long()
        shared = shared_prefix_length(text) if self.dtype == torch.float32 else 0
        return self.encode_text_embeddings(self.token_embedding(text), text.argmax(dim=-1), shared_prefix=shared)

    def encode_text_embeddings(
        self,
        x: Tensor,
        eot_indices: Tensor,
        *,
        layer_prompts: Optional[Mapping[int, Tensor]] = None,
        truncate: Optional[bool] = None,
        shared_prefix: int = 0,
        rows_only: Optional[bool] = None,
    ) -> Tensor:
        """Features of token embeddings x ([N, L, W], no positional embedding yet).

        Adds ``positional_embedding[:L]``, runs the causal transformer (text deep
        prompts go right after SOS), applies ``ln_final``, takes the rows at
        ``eot_indices`` and projects them. With ``truncate`` the sequence is first
        cut after the last EOT: exact, since the causal mask hides later tokens.

        ``truncate=None`` (default) truncates when the model runs in fp32, where the
        result equals the full-length forward to float rounding. In fp16 the attention
        kernels round differently for 8 and for 77 keys, so the full context is kept
        there: fp16 features then equal the original implementations' bit for bit.

        ``rows_only`` (default: ``truncate``'s value) computes the last block at the EOT rows only, and
        the first ``shared_prefix`` tokens once (``text_features_from_hidden``; with deep prompts when they
        are shared by every row and lie inside the prefix, `prompts_fit_prefix`). The caller
        vouches that those tokens are the same in every row *and* come from the same tensors (a shared
        context, a frozen SOS), so their gradients may be summed before they flow back: ``x[0]``'s
        prefix carries them all.
        """
        if truncate is None:
            truncate = self.dtype == torch.float32
        hidden = self.text_hidden_states(x, eot_indices, end=0, truncate=truncate)
        if not (truncate if rows_only is None else rows_only):
            return self.text_features_from_hidden(hidden, eot_indices, start=0, layer_prompts=layer_prompts)
        if x.shape[0] < 2 or not prompts_fit_prefix(layer_prompts, shared_prefix):  # nothing shared
            shared_prefix = 0
        return self.text_features_from_hidden(hidden, eot_indices, start=0, layer_prompts=layer_prompts,
                                              eot_rows_only=True, shared_prefix=shared_prefix)

    def text_hidden_states(
        self,
        x: Tensor,
        eot_indices: Tensor,
        *,
        end: int,
        layer_prompts: Optional[Mapping[int, Tensor]] = None,
        truncate: Optional[bool] = None,
    ) -> Tensor:
        """Hidden states entering text block ``end``, from token embeddings x ([N, L, W]).

        ``end=0`` gives the block input (embeddings + positions). With
        ``text_features_from_hidden(h, eot, start=end)`` this splits ``encode_text_embeddings``
        in two, so a frozen prefix of the tower can be computed once and cached (Skip Tuning).
        ``truncate`` as in ``encode_text_embeddings``.
        """
        if x.dim() != 3:
            raise ValueError(f"Text embeddings must be [N, L, W], got shape {tuple(x.shape)}.")
        length = x.shape[1]
        if length > self.context_length:
            raise ValueError(f"Text length {length} exceeds the model's context length {self.context_length}.")
        eot_indices = eot_indices.to(device=x.device, dtype=torch.long)
        if truncate is None:
            truncate = self.dtype == torch.float32
        if truncate:
            length = int(eot_indices.max()) + 1
            x = x[:, :length]
        x = x.to(self.dtype) + self.positional_embedding[:length].to(self.dtype)
        if end == 0:
            return x
        return self.transformer(
            x, self.causal_mask(length), end=end, layer_prompts=layer_prompts, prompt_slot="after_sos"
        )

    def text_features_from_hidden(
        self,
        hidden: Tensor,
        eot_indices: Tensor,
        *,
        start: int,
        layer_prompts: Optional[Mapping[int, Tensor]] = None,
        eot_rows_only: bool = False,
        shared_prefix: int = 0,
    ) -> Tensor:
        """Projected text features from hidden states ([N, L, W]) entering text block ``start``.

        ``eot_rows_only``: the last block computes the EOT rows only (``Transformer.forward_rows``):
        equal to float rounding, cheaper by most of a block. ``shared_prefix`` P
        (with ``eot_rows_only``): the first P tokens of every row are the same tokens (a template's
        start; P <= every EOT index), so their states are computed once, from row 0.
        """
        length = hidden.shape[1]
        if eot_rows_only:
            eot_indices = eot_indices.to(device=hidden.device, dtype=torch.long)
            mask = self.causal_mask(length)
            if shared_prefix > 0:
                if shared_prefix > int(eot_indices.min()):
                    raise ValueError(f"shared_prefix={shared_prefix} reaches past an EOT token (at {int(eot_indices.min())}).")
                x = self.transformer.forward_rows(hidden[:, shared_prefix:], eot_indices - shared_prefix, mask,
                                                  start=start, prefix=hidden[:1, :shared_prefix],
                                                  layer_prompts=layer_prompts, prompt_slot="after_sos")
            else:
                x = self.transformer.forward_rows(hidden, eot_indices, mask, start=start, layer_prompts=layer_prompts,
                                                  prompt_slot="after_sos")
            return self.ln_final(x).to(self.dtype) @ self.text_projection
        if shared_prefix:
            raise ValueError("shared_prefix needs eot_rows_only=True.")
        x = self.transformer(
            hidden, self.causal_mask(length), start=start, layer_prompts=layer_prompts, prompt_slot="after_sos"
        )
        x = self.ln_final(x).to(self.dtype)
        x = x[torch.arange(x.shape[0], device=x.device), eot_indices.to(device=x.device, dtype=torch.long)]
        return x @ self.text_projection

    def forward(self, image: Tensor, text: Tensor) -> Tuple[Tensor, Tensor]:
        """(logits_per_image [N_img, N_txt], logits_per_text [N_txt, N_img])."""
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


# ---------------------------------------------------------------------------
# Precision and construction from a state dict
# ---------------------------------------------------------------------------


def convert_weights(model: nn.Module) -> None:
    """Cast to fp16 only what OpenAI casts: conv/linear params, attention projections, ``proj``/``text_projection``.

    LayerNorm, BatchNorm, embeddings and ``logit_scale`` stay fp32.
    """

    def _convert(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.half()
            if module.bias is not None:
                module.bias.data = module.bias.data.half()
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k", "bias_v"):
            tensor = getattr(module, name, None)
            if isinstance(tensor, Tensor):
                tensor.data = tensor.data.half()
        for name in ("text_projection", "proj"):
            tensor = getattr(module, name, None)
            if isinstance(tensor, Tensor):
                tensor.data = tensor.data.half()

    model.apply(_convert)


@dataclass(frozen=True)
class CLIPConfig:
    """Architecture hyper-parameters, named as ``CLIP.__init__``'s arguments."""

    embed_dim: int
    image_resolution: int
    vision_layers: Union[Tuple[int, int, int, int], int]
    vision_width: int
    vision_patch_size: Optional[int]
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int

    @property
    def vision_heads(self) -> int:
        if isinstance(self.vision_layers, tuple):
            return self.vision_width * 32 // 64
        return self.vision_width // 64


def _require(state_dict: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state_dict:
        raise KeyError(
            f"State dict has no key {key!r}; it does not look like an OpenAI CLIP checkpoint "
            f"(first keys: {list(state_dict)[:5]}). Pass an OpenAI-format CLIP state dict."
        )
    return state_dict[key]


def infer_config(state_dict: Mapping[str, Tensor]) -> CLIPConfig:
    """Infer the architecture from tensor shapes (works with meta tensors). ViT iff ``visual.proj`` exists."""
    if "visual.proj" in state_dict:
        conv1 = _require(state_dict, "visual.conv1.weight")
        vision_width = conv1.shape[0]
        vision_layers: Union[int, Tuple[int, ...]] = len(
            [k for k in state_dict if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")]
        )
        patch = conv1.shape[-1]
        grid = round((_require(state_dict, "visual.positional_embedding").shape[0] - 1) ** 0.5)
        image_resolution = patch * grid
    else:
        vision_layers = tuple(
            len({k.split(".")[2] for k in state_dict if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)
        )
        vision_width = _require(state_dict, "visual.layer1.0.conv1.weight").shape[0]
        pos_len = _require(state_dict, "visual.attnpool.positional_embedding").shape[0]
        out = round((pos_len - 1) ** 0.5)
        if out**2 + 1 != pos_len:
            raise ValueError(f"visual.attnpool.positional_embedding has {pos_len} rows; expected a square grid + 1.")
        patch = None
        image_resolution = 32 * out
    transformer_width = _require(state_dict, "ln_final.weight").shape[0]
    return CLIPConfig(
        embed_dim=_require(state_dict, "text_projection").shape[1],
        image_resolution=int(image_resolution),
        vision_layers=vision_layers,  # type: ignore[arg-type]
        vision_width=int(vision_width),
        vision_patch_size=None if patch is None else int(patch),
        context_length=_require(state_dict, "positional_embedding").shape[0],
        vocab_size=_require(state_dict, "token_embedding.weight").shape[0],
        transformer_width=transformer_width,
        transformer_heads=transformer_width // 64,
        transformer_layers=len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")}),
    )


# What `build_model` can make of a checkpoint's tensors.
PRECISIONS = ("fp16", "fp32")


def build_model(state_dict: Mapping[str, Tensor], precision: str = "fp16") -> CLIP:
    """Build a CLIP from an OpenAI-format state dict: infer geometry, set precision, strict load, eval mode.

    ``precision="fp16"``: OpenAI's mixed precision (`convert_weights`), whatever the file's dtypes,
    so fp32 files are rounded to it. ``"fp32"``: every tensor in fp32 holding the file's values
    exactly; an OpenAI fp16 file is upcast exactly, which equals ``build_model(sd).float()``.
    The caller's dict is not modified.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    config = infer_config(state_dict)
    # Construct on the meta device and adopt the checkpoint's tensors: random init of a
    # full-size model would take seconds only to be overwritten. Cloning keeps the model
    # independent of the caller's dict.
    with torch.device("meta"):
        model = CLIP(**asdict(config))
    weights = {k: v.detach().clone() for k, v in state_dict.items() if k not in EXTRA_KEYS}
    model.load_state_dict(weights, strict=True, assign=True)
    model.reset_buffers()
    model.float()  # upcasting is exact: fp32 now holds exactly the file's values
    if precision == "fp16":
        convert_weights(model)  # exactly OpenAI's mixed precision, whatever the file's dtypes
    logger.debug("Built CLIP %s (%s)", config, precision)
    return model.eval()
