"""Image backbones other than CLIP: timm Vision Transformers with their weights from a local file.

A backbone is named as timm names it, ``architecture.tag`` (the tag picks the weights, and with them
the preprocessing), and built with ``pretrained=False``: nothing is downloaded. Its weights come
from a file the user downloaded once, in a format timm reads itself:

- a state dict saved with ``torch.save(model.state_dict())`` (also timm training checkpoints,
  ``{"state_dict" | "model" | "state_dict_ema": ...}``, and ``module.`` prefixes), read with
  ``weights_only=True`` (timm allows ``argparse.Namespace`` entries besides tensors, nothing else);
- a ``.safetensors`` file;
- an original JAX/Flax ``.npz`` checkpoint (Google's ``ViT-B_16.npz``, as VPT and NOAH use).

timm's checkpoint filter converts foreign layouts at load time (it drops the original release's
``pre_logits`` layer and resamples position embeddings to the model's grid).

DyT (shared/specs/dyt.md §1) uses ``vit_base_patch16_224.orig_in21k``: the original Google
ImageNet-21k ViT-B/16 (the file ``jx_vit_base_patch16_224_in21k-e5005f0a.pth``). The old name
``vit_base_patch16_224_in21k`` is a trap: timm maps it to ``vit_base_patch16_224.augreg_in21k``,
other weights. Deprecated names are therefore refused, with the current name in the message.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import timm
import torch
from timm.models import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn

from engine.errors import ConfigValueError, MissingFileError, UserError
from engine.registry import closest_matches

__all__ = ["BackboneWeightsError", "build_timm_vit", "explicit_attention", "set_plain_attention", "timm_preprocess_cfg"]

logger = logging.getLogger(__name__)

# The keys of a preprocessing config (as `clip.preprocess_cfg`), in timm's pretrained_cfg vocabulary.
PREPROCESS_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")
HEAD_PREFIX = "head."
FORMATS_HINT = (
    "Expected the weights of this architecture as a torch.save'd timm state dict (.pth/.pt/.bin, read "
    "with weights_only=True), a .safetensors file or a JAX .npz checkpoint"
)


class BackboneWeightsError(UserError, ValueError):
    """A backbone weights file that cannot be read or does not fit the model; the message says the fix."""


def _check_name(name: str) -> None:
    """Raise ConfigValueError unless `name` is a current timm model name with a valid tag."""
    deprecated = timm.models.get_deprecated_models()
    arch = name.split(".", 1)[0]
    if arch in deprecated:
        current = deprecated[arch]
        instead = f"name the weights explicitly (e.g. {current!r})" if current else "it was removed from timm"
        raise ConfigValueError(
            f"timm model name {name!r} is deprecated: {instead}. (For the original Google ImageNet-21k "
            "ViT-B/16 of DyT that is 'vit_base_patch16_224.orig_in21k'; 'vit_base_patch16_224_in21k' "
            "stands for the AugReg weights instead.)"
        )
    if not timm.is_model(name):
        matches = closest_matches(name, timm.list_models(pretrained=True), cutoff=0.7)
        hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
        raise ConfigValueError(f"unknown timm model {name!r}.{hint} `timm.list_models(pretrained=True)` lists them.")
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # an unknown tag for a known architecture
        tags = sorted(timm.list_pretrained(f"{name.split('.', 1)[0]}.*"))
        raise ConfigValueError(f"timm model {name!r}: {error} Known names: {tags}.") from error


def timm_preprocess_cfg(name: str) -> dict[str, Any]:
    """The preprocessing of timm model `name` (``arch`` or ``arch.tag``), from timm's pretrained cfg
    of those weights, in the keys of `clip.preprocess_cfg`. Builds and downloads nothing."""
    _check_name(name)
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ConfigValueError(f"timm model {name!r} has no pretrained config, so its preprocessing is unknown.")
    values = cfg.to_dict()
    return {
        "input_size": tuple(values["input_size"]),
        "mean": tuple(values["mean"]),
        "std": tuple(values["std"]),
        "interpolation": values["interpolation"],
        "crop_pct": float(values["crop_pct"]),
    }


def build_timm_vit(name: str, path: str, num_classes: int = 0, **model_kwargs: Any) -> torch.nn.Module:
    """timm Vision Transformer `name` with the weights of the file `path`, in eval mode.

    ``num_classes=0`` gives a model without a head (its forward returns pooled features).
    `model_kwargs` go to ``timm.create_model`` (e.g. ``img_size``: timm's filter then resamples
    the file's position embedding to that grid). The
    file's ``head.*`` is loaded only if it fits ``num_classes``; otherwise it is dropped and the
    model's freshly initialised head kept. Any other missing, extra or misshapen tensor is a
    `BackboneWeightsError` naming the file and the keys.
    """
    _check_name(name)
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(path):
        raise MissingFileError(
            f"backbone weights file not found: {path} (for timm model {name!r}). Download the weights of "
            f"{name!r} once and point at the file. {FORMATS_HINT}."
        )
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **model_kwargs)
    if not isinstance(model, VisionTransformer):
        raise ConfigValueError(f"timm model {name!r} is a {type(model).__name__}, not a Vision Transformer.")
    if path.lower().endswith(".npz"):
        _load_npz(model, name, path)
    else:
        _load_state_dict(model, name, path)
    return model.eval()


def _load_state_dict(model: VisionTransformer, name: str, path: str) -> None:
    try:
        state = timm.models.load_state_dict(path, weights_only=True)
    except Exception as error:  # pickle, zip and safetensors readers fail in many ways
        raise BackboneWeightsError(f"could not read backbone weights {path}: {error}. {FORMATS_HINT}.") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path} holds no state dict of tensors. {FORMATS_HINT}.")
    state = checkpoint_filter_fn(dict(state), model)
    expected = model.state_dict()
    state = _drop_unfitting_head(state, expected, path)
    missing = [k for k in expected if k not in state and not k.startswith(HEAD_PREFIX)]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or misshapen:
        raise BackboneWeightsError(_misfit_message(name, path, missing, unexpected, misshapen))
    model.load_state_dict(state, strict=False)  # only an omitted head may be missing


def _drop_unfitting_head(state: dict, expected: Mapping[str, torch.Tensor], path: str) -> dict:
    head = {k: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    fits = bool(head) and all(k in expected and expected[k].shape == v.shape for k, v in head.items())
    if head and not fits:
        logger.info("Not loading the head of %s: it does not fit the requested number of classes", path)
        return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    return state


def _misfit_message(name: str, path: str, missing: list, unexpected: list, misshapen: list) -> str:
    parts = [
        f"{len(found)} {what} (e.g. {', '.join(found[:3])})"
        for what, found in (("missing", missing), ("unexpected", unexpected), ("of another shape", misshapen))
        if found
    ]
    return (
        f"backbone weights {path} do not fit timm model {name!r}: tensors {'; '.join(parts)}. "
        "Pass the weights of this architecture, or the model name these weights belong to."
    )


def _load_npz(model: VisionTransformer, name: str, path: str) -> None:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            blocks = {k.split("/")[1] for k in archive.files if k.startswith("Transformer/encoderblock_")}
    except (OSError, ValueError) as error:
        raise BackboneWeightsError(f"could not read backbone weights {path}: {error}. {FORMATS_HINT}.") from error
    # timm's reader walks the model's blocks, so extra blocks in the file would go unnoticed.
    if blocks and len(blocks) != len(model.blocks):
        raise BackboneWeightsError(_misfit_message(
            name, path, [], [], [f"{len(blocks)} transformer blocks vs {len(model.blocks)}"]))
    try:
        model.load_pretrained(path)
    except (KeyError, ValueError, RuntimeError) as error:  # a missing array or one of another shape
        raise BackboneWeightsError(
            f"backbone weights {path} do not fit timm model {name!r}: {error}. Pass the weights of this "
            "architecture, or the model name these weights belong to."
        ) from error


def _timm_attentions(vit: torch.nn.Module) -> list[torch.nn.Module]:
    return [b.attn for b in vit.blocks if hasattr(b.attn, "fused_attn")]


def set_plain_attention(vit: torch.nn.Module, plain: bool) -> None:
    """timm's plain softmax attention ops (`plain`) or its fused kernel in every block of `vit`."""
    for attn in _timm_attentions(vit):
        attn.fused_attn = not plain


@contextlib.contextmanager
def explicit_attention(vit: torch.nn.Module) -> Iterator[None]:
    """timm's explicit softmax attention in every block of `vit` for the duration (torch's
    FlopCounterMode does not count CPU fused attention)."""
    attns = _timm_attentions(vit)
    previous = [a.fused_attn for a in attns]
    set_plain_attention(vit, True)
    try:
        yield
    finally:
        for a, p in zip(attns, previous):
            a.fused_attn = p
