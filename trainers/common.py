"""Pieces every CLIP trainer shares: loading CLIP for a config, templates, text features, logits.

Methods compose these instead of copying them (the originals copy CLIP and the text encoder into
every method file).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint

import clip
from clip.model import prompts_fit_prefix, shared_prefix_length
from engine.errors import ConfigValueError
from trainers.prompts import clean_classname

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

# PromptSRC's `IMAGENET_TEMPLATES` (trainers/imagenet_templates.py of muzairkhattak/PromptSRC): 60 of the
# templates of CLIP's ImageNet prompt-engineering notebook, in that file's order.
IMAGENET_TEMPLATES = [
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "the origami {}.", "the {} in a video game.",
    "a sketch of a {}.", "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.",
    "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.",
    "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.",
    "itap of the {}.",
]

PRECISIONS = ("fp16", "fp32", "amp")
# TRAIN.TEXT_CHUNK_MB's default (see `chunked_text_forward`): a step of CoOp on 100 classes (ViT-B/16) is one chunk.
DEFAULT_TEXT_CHUNK_MB = 8192.0


def template_for(dataset_name: str) -> str:
    """The dataset's zero-shot template; datasets not in the table use 'a photo of a {}.'."""
    return CUSTOM_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)


def load_clip(cfg, precision: str) -> nn.Module:
    """The CLIP named by MODEL.BACKBONE.NAME (a known name or a checkpoint path), on CPU.

    precision "fp16": OpenAI's mixed precision (fp16 matmul weights), as CoOp's `load_clip_to_cpu`;
    "fp32"/"amp": fp32 weights holding the file's values (an fp32 file is not rounded through fp16).
    The input size must equal the model's resolution; `train.py` takes it from the backbone
    (`ClipMethod.backbone_preprocess`) unless the configuration sets another one.
    """
    name = cfg.MODEL.BACKBONE.NAME
    clip.check_model_name(name)
    model = clip.build_model(clip.load_state_dict(name), precision="fp16" if precision == "fp16" else "fp32")
    resolution = model.visual.input_resolution
    size = tuple(cfg.INPUT.SIZE)
    if size[0] != resolution:
        raise ConfigValueError(
            f"INPUT.SIZE {size} does not match the input resolution {resolution} of CLIP '{name}'. "
            f"Set 'INPUT.SIZE ({resolution}, {resolution})'."
        )
    return model


def autocast_enabled(prec: str, fast: bool = False) -> bool:
    """Whether forward passes run under autocast: PREC amp, or fast mode (TRAIN.FAST_MODE)."""
    return prec == "amp" or fast


# Set while a fast-mode step or evaluation runs: the classifier head (`cosine_logits`) stays fp32.
_FAST_MODE_HEAD = contextvars.ContextVar("fast_mode_head", default=False)


def autocast_context(prec: str, device: torch.device, fast: bool = False):
    """Autocast for PREC amp or fast mode: fp16 on CUDA, bf16 on CPU (CPU has no fast fp16); a no-op
    otherwise. Fast mode also keeps the classifier head in fp32 (`fast_mode_head`); PREC amp alone
    autocasts it, as the originals do."""
    if not autocast_enabled(prec, fast):
        return contextlib.nullcontext()
    return (FastModeAutocast if fast else torch.autocast)(device_type=device.type, dtype=autocast_dtype(device))


def autocast_dtype(device: torch.device) -> torch.dtype:
    """What PREC amp and fast mode autocast to: fp16 on CUDA, bf16 on CPU (CPU has no fast fp16)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


class FastModeAutocast(torch.autocast):
    """torch.autocast that keeps the classifier head in fp32 while it is active (`fp32_head`)."""

    def __enter__(self):
        self._head_token = _FAST_MODE_HEAD.set(True)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            _FAST_MODE_HEAD.reset(self._head_token)


def fp32_head(*tensors: torch.Tensor) -> tuple[contextlib.AbstractContextManager, tuple[torch.Tensor, ...]]:
    """In fast mode: autocast off, and the tensors in fp32, for the cosine classifier. With CLIP's
    logit scale of 100 a bf16 cosine (8 mantissa bits) moves a logit by up to ~0.4: enough to derail
    prompt learning on some seeds (the demo CoOp's seed 3 ended at 52.7% instead of ~67%). Its cost
    is B x C x D multiply-adds. Otherwise: no change."""
    if not _FAST_MODE_HEAD.get():
        return contextlib.nullcontext(), tensors
    device = tensors[0].device.type
    return torch.autocast(device, enabled=False), tuple(t.float() for t in tensors)


def make_grad_scaler(prec: str, device: torch.device, fast: bool = False):
    """A GradScaler for fp16 autocast on CUDA (PREC amp or fast mode); bf16 on CPU needs none."""
    if autocast_enabled(prec, fast) and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def cosine_logits(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    text_normalized: bool = False,
) -> torch.Tensor:
    """CLIP's classifier: exp(logit_scale) * normalize(img) @ normalize(text).T, [B, C], from class
    text features [C, D] or per image [B, C, D] (CoCoOp).

    `text_normalized=True` skips re-normalising features that already are (as the originals do
    for precomputed class features), so fp16 results match theirs bit for bit.
    """
    context, (image_features, text_features, logit_scale) = fp32_head(image_features, text_features, logit_scale)
    with context:
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        if not text_normalized:
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        if text_features.dim() == 3:
            return logit_scale.exp() * torch.einsum("bd,bcd->bc", image_features, text_features)
        return logit_scale.exp() * image_features @ text_features.t()


@torch.no_grad()
def text_features_for_templates(
    clip_model: nn.Module,
    classnames: Sequence[str],
    templates: Iterable[str],
    device: torch.device,
    budget_mb: float = DEFAULT_TEXT_CHUNK_MB,
) -> torch.Tensor:
    """L2-normalised class text features, averaged over templates and normalised again.

    With a single template this is just that template's normalised features. Each template's prompts
    go through the text tower in chunks within `budget_mb` (TRAIN.TEXT_CHUNK_MB, no-gradient estimate).
    """
    per_template = []
    for template in templates:
        prompts = [template.format(clean_classname(c)) for c in classnames]
        tokens = clip.tokenize(prompts).to(device)
        features = encode_token_ids(clip_model, tokens, budget_mb)
        per_template.append(features / features.norm(dim=-1, keepdim=True))
    if len(per_template) == 1:
        return per_template[0]
    mean = torch.stack(per_template).mean(dim=0)
    return mean / mean.norm(dim=-1, keepdim=True)


@torch.no_grad()
def mean_text_features(
    clip_model: nn.Module,
    classnames: Sequence[str],
    templates: Iterable[str],
    device: torch.device,
    clean_names: bool = True,
    budget_mb: float = DEFAULT_TEXT_CHUNK_MB,
) -> torch.Tensor:
    """Class text features [C, D] as CLIP's `encode_text` gives them, averaged over templates WITHOUT
    normalising (TaskRes's base, CLIP-Adapter's classifier before its per-forward normalisation).
    `clean_names=False` inserts class names verbatim, underscores included (TaskRes). Chunked within
    `budget_mb` as `text_features_for_templates`."""
    per_template = []
    for template in templates:
        prompts = [template.format(clean_classname(c) if clean_names else c) for c in classnames]
        per_template.append(encode_token_ids(clip_model, clip.tokenize(prompts).to(device), budget_mb))
    return per_template[0] if len(per_template) == 1 else torch.stack(per_template).mean(dim=0)


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
    clip_model: nn.Module, hidden: torch.Tensor, eot_indices: torch.Tensor, start: int, eot_rows_only: bool = False,
    shared_prefix: int = 0,
) -> torch.Tensor:
    """Projected text features from hidden states [N, L, W] entering block `start` (see `text_hidden_states`);
    `eot_rows_only`: the last block computes the EOT rows only; `shared_prefix`: the first tokens all
    rows share are computed once (`CLIP.text_features_from_hidden`)."""
    return clip_model.text_features_from_hidden(hidden, eot_indices, start=start, eot_rows_only=eot_rows_only,
                                                shared_prefix=shared_prefix)


# --- The text tower in chunks that fit a memory budget (TRAIN.TEXT_CHUNK_MB) ---
# Every CLIP method's text forward goes through `chunked_text_forward`: the class prompts (CoOp's C,
# CoCoOp's B x C, a template ensemble's T x C) are split into chunks of rows whose activation estimate
# stays within the budget. With gradients each chunk runs under activation checkpointing, so one
# chunk's activations are held at a time and each chunk's forward runs again in the backward pass.
# When one chunk holds every row the text tower runs in one plain call (no extra cost).

# Activation memory of the text tower per token and block, in units of width x bytes. With gradients,
# CLIP's pre-LN block keeps about 14 widths per token for the backward (measured with saved-tensor
# hooks: LayerNorm inputs and outputs, q/k/v, the attention output, the MLP's 4W hidden state before
# and after QuickGELU); 16 leaves room for the backward's transient buffers. Without gradients only
# one block's intermediates are alive at a time (the MLP's 2 x 4W hidden states and a few widths).
TEXT_ACTIVATION_FACTOR = 16


@dataclass(frozen=True)
class ChunkPlan:
    """How N prompts are split: `size` prompts per chunk (the last may hold fewer), `count` chunks."""

    size: int
    count: int


def text_chunk_plan(n_prompts: int, length: int, width: int, layers: int, bytes_per_value: int,
                    budget_mb: float, with_grad: bool) -> ChunkPlan:
    """The fewest chunks whose activation estimate, n x length x width x bytes x TEXT_ACTIVATION_FACTOR x
    (layers with gradients, 1 without), stays within `budget_mb` (at least one prompt per chunk), made as
    even as possible: the peak is the largest chunk's, so 1000 prompts over a 949-prompt budget go as
    500 + 500, not 949 + 51."""
    largest = max(1, min(n_prompts, int(budget_mb * 2**20 // prompt_activation_bytes(length, width, layers,
                                                                                      bytes_per_value, with_grad))))
    count = math.ceil(n_prompts / largest)
    return ChunkPlan(math.ceil(n_prompts / count), count)


def prompt_activation_bytes(length: int, width: int, layers: int, bytes_per_value: int, with_grad: bool) -> int:
    """The planner's activation estimate of one prompt of `length` tokens through `layers` text blocks."""
    return length * width * bytes_per_value * TEXT_ACTIVATION_FACTOR * (layers if with_grad else 1)


@dataclass(frozen=True)
class TextActivation:
    """A training step's text-tower activations as the planner sees them: `prompts` rows per step, each
    `per_prompt_mb` with gradients (what the preflight's advice on TRAIN.TEXT_CHUNK_MB works from)."""

    prompts: int
    per_prompt_mb: float

    @property
    def total_mb(self) -> float:
        return self.prompts * self.per_prompt_mb


def text_length(clip_model: nn.Module, eot_indices: torch.Tensor, shared_prefix: int = 0,
                layer_prompts: Mapping[int, torch.Tensor] | None = None) -> int:
    """Tokens per row the text tower holds activations of, as `CLIP.encode_text_embeddings` runs it:
    cut after the last EOT in fp32 (the full context otherwise), less a `shared_prefix` computed once
    (fp32; with deep prompts when they lie inside it, `prompts_fit_prefix`)."""
    if clip_model.dtype != torch.float32:
        return clip_model.context_length
    return int(eot_indices.max()) + 1 - (shared_prefix if prompts_fit_prefix(layer_prompts, shared_prefix) else 0)


def text_activation(clip_model: nn.Module, eot_indices: torch.Tensor, prompts: int | None = None,
                    blocks: int | None = None, shared_prefix: int = 0) -> TextActivation:
    """The with-gradient estimate of `prompts` rows (default: one per EOT index) through `blocks` text
    blocks (default: all) of `text_length` tokens."""
    text = clip_model.transformer
    itemsize = torch.empty((), dtype=clip_model.dtype).element_size()
    length = text_length(clip_model, eot_indices, shared_prefix)
    per_prompt = prompt_activation_bytes(length, text.width, text.layers if blocks is None else blocks, itemsize, True)
    return TextActivation(len(eot_indices) if prompts is None else prompts, per_prompt / 2**20)


def builds_graph(clip_model: nn.Module, *tensors: torch.Tensor | None) -> bool:
    """Whether a text forward records an autograd graph: gradients on, and an input, a deep prompt or a
    text-tower weight requires them."""
    if not torch.is_grad_enabled():
        return False
    if any(t is not None and t.requires_grad for t in tensors):
        return True
    text_parts = (clip_model.transformer, clip_model.token_embedding, clip_model.ln_final)
    return (clip_model.text_projection.requires_grad or clip_model.positional_embedding.requires_grad
            or any(p.requires_grad for part in text_parts for p in part.parameters()))


def chunked_text_forward(forward: Callable[..., torch.Tensor], rows: Sequence[torch.Tensor], plan: ChunkPlan,
                         with_grad: bool) -> torch.Tensor:
    """`forward(*rows)` ([N, ...] each -> [N, D]) on `plan.size` rows at a time, concatenated.

    One chunk: a plain call. With gradients each chunk runs under non-reentrant activation checkpointing:
    its activations are dropped after the forward and recomputed in the backward pass (autocast state and
    RNG restored), so gradients reach the rows, anything `forward` closes over (deep prompts) and the
    weights. Each row's arithmetic is that of a one-call forward; only the matrix products' row counts
    and the order in which weight gradients of the chunks are summed differ.
    """
    if plan.count == 1:
        return forward(*rows)
    features = []
    for start in range(0, rows[0].shape[0], plan.size):
        chunk = [r[start:start + plan.size] for r in rows]
        if with_grad:
            features.append(torch.utils.checkpoint.checkpoint(forward, *chunk, use_reentrant=False))
        else:
            features.append(forward(*chunk))
    return torch.cat(features)


def encode_prompt_embeddings(clip_model: nn.Module, prompts: torch.Tensor, eot_indices: torch.Tensor,
                             budget_mb: float, layer_prompts: Mapping[int, torch.Tensor] | None = None,
                             shared_prefix: int = 0) -> torch.Tensor:
    """Text features [N, D] of prompt embeddings [N, L, W] (`CLIP.encode_text_embeddings`), in chunks
    within `budget_mb` of activations; deep `layer_prompts` (shared by all rows) go to every chunk, and
    `shared_prefix` leading tokens, the same tensors in every row, are computed once per chunk in fp32.

    Same arithmetic per prompt as one call (each chunk is cut after its own last EOT in fp32, which
    changes nothing but how many masked keys the attention skips).
    """
    prompts_list = list(layer_prompts.values()) if layer_prompts else []
    with_grad = builds_graph(clip_model, prompts, *prompts_list)
    text = clip_model.transformer
    length = text_length(clip_model, eot_indices, shared_prefix, layer_prompts)
    plan = text_chunk_plan(prompts.shape[0], length, text.width, text.layers, prompts.element_size(), budget_mb,
                           with_grad)

    def forward(x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        return clip_model.encode_text_embeddings(x, eot, layer_prompts=layer_prompts, shared_prefix=shared_prefix)

    return chunked_text_forward(forward, (prompts, eot_indices), plan, with_grad)


def encode_token_ids(clip_model: nn.Module, tokens: torch.Tensor, budget_mb: float) -> torch.Tensor:
    """`CLIP.encode_text(tokens)` ([N, 77] token ids -> [N, D]) in chunks within `budget_mb`: frozen
    features without gradients (zero-shot classifiers, templates) and FT-CLIP's trained text tower."""
    with_grad = builds_graph(clip_model)
    text = clip_model.transformer
    itemsize = torch.empty((), dtype=clip_model.dtype).element_size()
    length = text_length(clip_model, tokens.argmax(dim=-1), shared_prefix_length(tokens))  # encode_text shares it
    plan = text_chunk_plan(tokens.shape[0], length, text.width, text.layers, itemsize, budget_mb, with_grad)
    return chunked_text_forward(clip_model.encode_text, (tokens,), plan, with_grad)


def features_from_hidden_in_chunks(clip_model: nn.Module, hidden: torch.Tensor, eot_indices: torch.Tensor, start: int,
                                   budget_mb: float, eot_rows_only: bool = False, shared_prefix: int = 0
                                   ) -> torch.Tensor:
    """`text_features_from_hidden` in chunks of rows within `budget_mb` (text blocks start.. only).
    Each chunk keeps the savings: the last block computes the EOT rows only, and the shared prefix
    is computed once per chunk (from the chunk's first row: every row holds the same prefix)."""
    with_grad = builds_graph(clip_model, hidden)
    text = clip_model.transformer
    plan = text_chunk_plan(hidden.shape[0], hidden.shape[1], text.width, text.layers - start, hidden.element_size(),
                           budget_mb, with_grad)

    def forward(h: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        return text_features_from_hidden(clip_model, h, eot, start=start, eot_rows_only=eot_rows_only,
                                         shared_prefix=shared_prefix)

    return chunked_text_forward(forward, (hidden, eot_indices), plan, with_grad)
