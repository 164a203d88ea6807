"""Pieces every CLIP trainer shares: loading CLIP for a config, templates, text features, logits.

Methods compose these instead of copying them (the originals copy CLIP and the text encoder into
every method file).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Sequence

import torch
import torch.nn as nn

import clip
from demo import DEMO_MODEL_NAME  # compat: also registers the demo CLIP and datasets until train.py imports demo
from engine.errors import ConfigValueError

logger = logging.getLogger(__name__)

# One hand-written template per dataset (CoOp's zero-shot CLIP), keyed by DATASET.NAME.
CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
DEFAULT_TEMPLATE = "a photo of a {}."

# The 7-template ensemble CoOp's ZeroshotCLIP2 uses (picked from CLIP's ImageNet prompt list).
IMAGENET_TEMPLATES_SELECT = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]

PRECISIONS = ("fp16", "fp32", "amp")


def template_for(dataset_name: str) -> str:
    """The dataset's zero-shot template; datasets not in the table use 'a photo of a {}.'."""
    return CUSTOM_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)


def clean_classname(name: str) -> str:
    """Class names are stored with underscores; prompts use spaces."""
    return name.replace("_", " ")


# INPUT.SIZE of the engine defaults and of every CLIP trainer config. For the demo CLIP this value
# means "not set for this backbone" (see `resolve_input_size`).
CLIP_DEFAULT_INPUT_SIZE = (224, 224)


def resolve_input_size(cfg) -> None:
    """For `MODEL.BACKBONE.NAME demo`, take INPUT.SIZE from the checkpoint unless set explicitly.

    "Explicitly" means any INPUT.SIZE other than (224, 224): (224, 224) is both the engine default
    and what every CLIP trainer config sets, so it is read as "not chosen for the demo CLIP" and
    replaced by the checkpoint's resolution (32 for the shipped one). Any other value is kept, and
    `load_clip_to_cpu` reports a mismatch. Other backbones are never changed. Call this on the
    unfrozen config before the data loaders are built (train.py's `setup_cfg` does).
    """
    if cfg.MODEL.BACKBONE.NAME != DEMO_MODEL_NAME:
        return
    if tuple(cfg.INPUT.SIZE) != CLIP_DEFAULT_INPUT_SIZE:
        return
    resolution = clip.infer_config(clip.load_state_dict(cfg.MODEL.BACKBONE.NAME)).image_resolution
    if resolution != CLIP_DEFAULT_INPUT_SIZE[0]:
        logger.info("INPUT.SIZE (224, 224) -> (%d, %d): the input resolution of the demo CLIP", resolution, resolution)
        cfg.INPUT.SIZE = (resolution, resolution)


def load_clip_to_cpu(cfg, precision: str = "fp16") -> nn.Module:
    """The CLIP named by MODEL.BACKBONE.NAME (a known name or a checkpoint path), on CPU.

    ``precision="fp16"`` (default): OpenAI's mixed precision (fp16 matmul weights), like CoOp's
    `load_clip_to_cpu`. ``"fp32"``: the checkpoint's values exactly, for fp32/amp training (for an
    OpenAI fp16 file this equals ``.float()`` of the fp16 model; an fp32 file is not rounded).
    The input size must equal the model's resolution (for the demo CLIP, `resolve_input_size`
    fills it in from the checkpoint).
    """
    name = cfg.MODEL.BACKBONE.NAME
    clip.check_model_name(name)
    state_dict = clip.load_state_dict(name)
    model = clip.build_model(state_dict, precision=precision)
    resolution = model.visual.input_resolution
    size = tuple(cfg.INPUT.SIZE)
    if size[0] != resolution:
        hint = (
            " (trainers.common.resolve_input_size sets it from the checkpoint when the config is built)"
            if name == DEMO_MODEL_NAME else ""
        )
        raise ConfigValueError(
            f"INPUT.SIZE {size} does not match the input resolution {resolution} of CLIP '{name}'. "
            f"Set 'INPUT.SIZE ({resolution}, {resolution})'{hint}."
        )
    return model


def check_precision(prec: str, key: str) -> None:
    if prec not in PRECISIONS:
        raise ConfigValueError(f"{key} must be one of {PRECISIONS}, got '{prec}'")


def autocast_context(prec: str, device: torch.device):
    """Autocast for PREC amp: fp16 on CUDA, bf16 on CPU (CPU has no fast fp16); a no-op otherwise."""
    if prec != "amp":
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(prec: str, device: torch.device):
    """A GradScaler for fp16 autocast on CUDA; bf16 on CPU needs none."""
    if prec == "amp" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def cosine_logits(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    text_normalized: bool = False,
) -> torch.Tensor:
    """CLIP's classifier: exp(logit_scale) * normalize(img) @ normalize(text).T.

    `text_normalized=True` skips re-normalising features that already are (as the originals do
    for precomputed class features), so fp16 results match theirs bit for bit.
    """
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    if not text_normalized:
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return logit_scale.exp() * image_features @ text_features.t()


@torch.no_grad()
def text_features_for_templates(
    clip_model: nn.Module,
    classnames: Sequence[str],
    templates: Iterable[str],
    device: torch.device,
) -> torch.Tensor:
    """L2-normalised class text features, averaged over templates and normalised again.

    With a single template this is just that template's normalised features.
    """
    per_template = []
    for template in templates:
        prompts = [template.format(clean_classname(c)) for c in classnames]
        tokens = clip.tokenize(prompts).to(device)
        features = clip_model.encode_text(tokens)
        per_template.append(features / features.norm(dim=-1, keepdim=True))
    if len(per_template) == 1:
        return per_template[0]
    mean = torch.stack(per_template).mean(dim=0)
    return mean / mean.norm(dim=-1, keepdim=True)


# --- The text tower in two parts: hidden states entering block k, and the rest from them ---
# (Skip Tuning caches the first part once per epoch; both are CLIP's own extension points.)


def text_hidden_states(
    clip_model: nn.Module, tokens: torch.Tensor, end: int, truncate: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [N, L, W] after text blocks [0:end] of token ids [N, 77], and the EOT positions.

    Same arithmetic as `CLIP.encode_text` (truncated after the last EOT in fp32 only).
    """
    tokens = tokens.long()
    eot_indices = tokens.argmax(dim=-1)
    hidden = clip_model.text_hidden_states(clip_model.token_embedding(tokens), eot_indices, end=end, truncate=truncate)
    return hidden, eot_indices


def text_features_from_hidden(
    clip_model: nn.Module, hidden: torch.Tensor, eot_indices: torch.Tensor, start: int
) -> torch.Tensor:
    """Projected text features from hidden states [N, L, W] entering block `start` (see `text_hidden_states`)."""
    return clip_model.text_features_from_hidden(hidden, eot_indices, start=start)
