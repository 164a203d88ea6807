"""Random-weight CLIP checkpoints in OpenAI's exact format, for tests.

The key layout is written out here from OpenAI's checkpoint description (not
taken from our model), so loading these files checks our model's key names.
Values follow CLIP's initialisation recipe, plus small random perturbations of
every LayerNorm/BatchNorm affine and every bias, so that an implementation that
drops one cannot match by accident. ``logit_scale`` is ln(100) like the released
weights, and the three int64 scalars of OpenAI's TorchScript state dicts are included.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

# An entry of the layout: (key, shape, init) where init is a float std or a tag.
Entry = Tuple[str, Tuple[int, ...], Union[float, str]]


def _ln(prefix: str, width: int) -> List[Entry]:
    return [(f"{prefix}.weight", (width,), "ln_weight"), (f"{prefix}.bias", (width,), "bias")]


def _bn(prefix: str, width: int, zero_init: bool = False) -> List[Entry]:
    return [
        (f"{prefix}.weight", (width,), "bn_weight_zero" if zero_init else "bn_weight"),
        (f"{prefix}.bias", (width,), "bias"),
        (f"{prefix}.running_mean", (width,), "running_mean"),
        (f"{prefix}.running_var", (width,), "running_var"),
        (f"{prefix}.num_batches_tracked", (), "num_batches_tracked"),
    ]


def _transformer(prefix: str, width: int, layers: int) -> List[Entry]:
    attn_std = width**-0.5
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    fc_std = (2 * width) ** -0.5
    entries: List[Entry] = []
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}"
        entries += [
            (f"{p}.attn.in_proj_weight", (3 * width, width), attn_std),
            (f"{p}.attn.in_proj_bias", (3 * width,), "bias"),
            (f"{p}.attn.out_proj.weight", (width, width), proj_std),
            (f"{p}.attn.out_proj.bias", (width,), "bias"),
            *_ln(f"{p}.ln_1", width),
            (f"{p}.mlp.c_fc.weight", (4 * width, width), fc_std),
            (f"{p}.mlp.c_fc.bias", (4 * width,), "bias"),
            (f"{p}.mlp.c_proj.weight", (width, 4 * width), proj_std),
            (f"{p}.mlp.c_proj.bias", (width,), "bias"),
            *_ln(f"{p}.ln_2", width),
        ]
    return entries


def _vit(resolution: int, width: int, layers: int, patch: int, embed_dim: int) -> List[Entry]:
    if resolution % patch:
        raise ValueError(f"image_resolution {resolution} must be a multiple of vision_patch_size {patch}.")
    grid = resolution // patch
    scale = width**-0.5
    return [
        ("visual.class_embedding", (width,), scale),
        ("visual.positional_embedding", (grid * grid + 1, width), scale),
        ("visual.proj", (width, embed_dim), scale),
        ("visual.conv1.weight", (width, 3, patch, patch), (3 * patch * patch) ** -0.5),
        *_ln("visual.ln_pre", width),
        *_transformer("visual.transformer", width, layers),
        *_ln("visual.ln_post", width),
    ]


def _conv(key: str, out_ch: int, in_ch: int, k: int) -> Entry:
    return (key, (out_ch, in_ch, k, k), math.sqrt(2.0 / (in_ch * k * k)))  # He init keeps activations O(1)


def _resnet(resolution: int, width: int, layers: Sequence[int], embed_dim: int) -> List[Entry]:
    if resolution % 32:
        raise ValueError(f"image_resolution {resolution} must be a multiple of 32 for a ResNet tower.")
    half = width // 2
    entries: List[Entry] = [
        _conv("visual.conv1.weight", half, 3, 3), *_bn("visual.bn1", half),
        _conv("visual.conv2.weight", half, half, 3), *_bn("visual.bn2", half),
        _conv("visual.conv3.weight", width, half, 3), *_bn("visual.bn3", width),
    ]
    inplanes = width
    for stage, blocks in enumerate(layers, start=1):
        planes = width * 2 ** (stage - 1)
        for j in range(blocks):
            p = f"visual.layer{stage}.{j}"
            entries += [
                _conv(f"{p}.conv1.weight", planes, inplanes, 1), *_bn(f"{p}.bn1", planes),
                _conv(f"{p}.conv2.weight", planes, planes, 3), *_bn(f"{p}.bn2", planes),
                _conv(f"{p}.conv3.weight", 4 * planes, planes, 1), *_bn(f"{p}.bn3", 4 * planes, zero_init=True),
            ]
            if j == 0:  # stride > 1 or inplanes != 4 * planes holds for block 0 of every stage
                entries += [_conv(f"{p}.downsample.0.weight", 4 * planes, inplanes, 1), *_bn(f"{p}.downsample.1", 4 * planes)]
            inplanes = 4 * planes
    pool_width = 32 * width
    out = resolution // 32
    std = pool_width**-0.5
    entries += [
        ("visual.attnpool.positional_embedding", (out * out + 1, pool_width), std),
        ("visual.attnpool.k_proj.weight", (pool_width, pool_width), std),
        ("visual.attnpool.k_proj.bias", (pool_width,), "bias"),
        ("visual.attnpool.q_proj.weight", (pool_width, pool_width), std),
        ("visual.attnpool.q_proj.bias", (pool_width,), "bias"),
        ("visual.attnpool.v_proj.weight", (pool_width, pool_width), std),
        ("visual.attnpool.v_proj.bias", (pool_width,), "bias"),
        ("visual.attnpool.c_proj.weight", (embed_dim, pool_width), std),
        ("visual.attnpool.c_proj.bias", (embed_dim,), "bias"),
    ]
    return entries


def _defaults(kind: str, image_resolution, vision_width, vision_layers):
    if kind == "vit":
        return image_resolution or 32, vision_width or 64, 2 if vision_layers is None else vision_layers
    if kind == "rn":
        # 32 * width is the attention-pool width: 16 keeps it at 512 (8 heads); 64 px gives a 2x2 final grid.
        return image_resolution or 64, vision_width or 16, (1, 1, 1, 1) if vision_layers is None else tuple(vision_layers)
    raise ValueError(f"kind must be 'vit' or 'rn', got {kind!r}.")


def openai_layout(
    kind: str = "vit",
    *,
    image_resolution: Optional[int] = None,
    vision_width: Optional[int] = None,
    vision_layers: Union[int, Sequence[int], None] = None,
    vision_patch_size: int = 8,
    embed_dim: int = 32,
    text_width: int = 64,
    text_layers: int = 2,
    context_length: int = 77,
    vocab_size: int = 49408,
) -> List[Entry]:
    """OpenAI's keys and shapes (in module order) with each tensor's init rule."""
    resolution, width, layers = _defaults(kind, image_resolution, vision_width, vision_layers)
    if kind == "vit":
        visual = _vit(resolution, width, int(layers), vision_patch_size, embed_dim)  # type: ignore[arg-type]
    else:
        visual = _resnet(resolution, width, layers, embed_dim)  # type: ignore[arg-type]
    return [
        ("positional_embedding", (context_length, text_width), 0.01),
        ("text_projection", (text_width, embed_dim), text_width**-0.5),
        ("logit_scale", (), "logit_scale"),
        *visual,
        *_transformer("transformer", text_width, text_layers),
        ("token_embedding.weight", (vocab_size, text_width), 0.02),
        *_ln("ln_final", text_width),
    ]


def openai_state_dict_shapes(kind: str = "vit", **geometry) -> "OrderedDict[str, Tuple[int, ...]]":
    """Key -> shape of an OpenAI checkpoint with this geometry (no tensors allocated)."""
    return OrderedDict((key, shape) for key, shape, _ in openai_layout(kind, **geometry))


def meta_state_dict(kind: str = "vit", **geometry) -> "OrderedDict[str, Tensor]":
    """A state dict of meta tensors: full-size geometries at no memory cost (for shape inference tests)."""
    return OrderedDict((k, torch.empty(s, device="meta")) for k, s in openai_state_dict_shapes(kind, **geometry).items())


def _is_fp16_in_release(key: str) -> bool:
    """Whether OpenAI's convert_weights made this tensor fp16 (conv/linear params, attention projections, proj)."""
    if key in ("text_projection", "visual.proj") or key.endswith((".in_proj_weight", ".in_proj_bias")):
        return True
    module = key.rsplit(".", 1)[0]
    last = module.rsplit(".", 1)[-1]
    linear_or_conv = {"out_proj", "c_fc", "c_proj", "q_proj", "k_proj", "v_proj", "conv1", "conv2", "conv3"}
    return last in linear_or_conv or module.endswith("downsample.0")


def random_openai_state_dict(
    kind: str = "vit",
    *,
    image_resolution: Optional[int] = None,
    vision_width: Optional[int] = None,
    vision_layers: Union[int, Sequence[int], None] = None,
    vision_patch_size: int = 8,
    embed_dim: int = 32,
    text_width: int = 64,
    text_layers: int = 2,
    context_length: int = 77,
    vocab_size: int = 49408,
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> "OrderedDict[str, Tensor]":
    """A random CLIP state dict with OpenAI's key names and shapes.

    Defaults: ``vit`` 32 px, width 64, 2 layers, patch 8; ``rn`` 64 px, width 16,
    layers (1, 1, 1, 1). ``dtype=torch.float16`` reproduces the released mixed
    precision (only the tensors OpenAI's convert_weights touches are fp16);
    ``torch.float32`` makes everything fp32.
    """
    layout = openai_layout(
        kind,
        image_resolution=image_resolution,
        vision_width=vision_width,
        vision_layers=vision_layers,
        vision_patch_size=vision_patch_size,
        embed_dim=embed_dim,
        text_width=text_width,
        text_layers=text_layers,
        context_length=context_length,
        vocab_size=vocab_size,
    )
    gen = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=gen)

    state: "OrderedDict[str, Tensor]" = OrderedDict()
    for key, shape, init in layout:
        if isinstance(init, float):
            value = randn(shape) * init
        elif init == "ln_weight":
            value = 1.0 + 0.1 * randn(shape)
        elif init == "bn_weight":
            value = 1.0 + 0.1 * randn(shape)
        elif init == "bn_weight_zero":  # CLIP zero-inits bn3; perturbed so the residual branch still matters
            value = 0.2 * randn(shape)
        elif init == "bias":
            value = 0.02 * randn(shape)
        elif init == "running_mean":
            value = 0.1 * randn(shape)
        elif init == "running_var":
            value = 1.0 + 0.1 * torch.rand(shape, generator=gen)
        elif init == "num_batches_tracked":
            state[key] = torch.tensor(0, dtype=torch.long)
            continue
        elif init == "logit_scale":
            value = torch.tensor(math.log(100.0))
        else:  # pragma: no cover - layout and this table are written together
            raise AssertionError(f"unknown init rule {init!r} for {key}")
        cast = dtype if dtype != torch.float16 or _is_fp16_in_release(key) else torch.float32
        state[key] = value.to(cast)
    resolution, _, _ = _defaults(kind, image_resolution, vision_width, vision_layers)
    state["input_resolution"] = torch.tensor(resolution, dtype=torch.long)
    state["context_length"] = torch.tensor(context_length, dtype=torch.long)
    state["vocab_size"] = torch.tensor(vocab_size, dtype=torch.long)
    return state


def _as_module_tree(state: "OrderedDict[str, Tensor]") -> nn.Module:
    """A module tree holding each tensor under its dotted name (parameters; BN stats and ints as buffers)."""
    root = nn.Module()
    for key, value in state.items():
        *path, name = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part) or not isinstance(getattr(module, part), nn.Module):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        if value.is_floating_point() and not name.startswith("running_"):
            module.register_parameter(name, nn.Parameter(value.clone(), requires_grad=False))
        else:
            module.register_buffer(name, value.clone())
    return root


def write_random_clip(path: Union[str, Path], kind: str = "vit", *, fmt: str = "state_dict", **geometry) -> Path:
    """Write a random CLIP checkpoint and return its path.

    ``fmt``: ``"state_dict"`` (torch.save of the ordered dict, extras included),
    ``"jit"`` (a TorchScript archive whose ``state_dict()`` has OpenAI's keys, like
    the released ``.pt`` files), or ``"open_clip"`` (a training checkpoint as
    open_clip saves it under DDP: ``{"epoch", "name", "state_dict": {"module." + key}, "optimizer"}``).
    ``geometry`` goes to :func:`random_openai_state_dict` (including ``seed`` and ``dtype``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = random_openai_state_dict(kind, **geometry)
    if fmt == "state_dict":
        torch.save(state, path)
    elif fmt == "jit":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but is what OpenAI shipped
            torch.jit.save(torch.jit.script(_as_module_tree(state)), str(path))
    elif fmt == "open_clip":
        weights = OrderedDict((f"module.{k}", v) for k, v in state.items() if k not in EXTRA_KEYS)
        optimizer = {"state": {}, "param_groups": [{"lr": 1e-3, "weight_decay": 0.2, "params": [0, 1]}]}
        torch.save({"epoch": 1, "name": "random-clip", "state_dict": weights, "optimizer": optimizer}, path)
    else:
        raise ValueError(f"fmt must be 'state_dict', 'jit' or 'open_clip', got {fmt!r}.")
    return path
