"""Class prompts with learned context: the piece every prompt learner of CoOp's kind shares.

A class prompt is ``[SOS] [V1]..[VM] <class name> . [EOS]`` in CLIP's token-embedding space: the
M context vectors come from the method (learned, shared or per class, or shifted per image as in
CoCoOp), the rest is the frozen embedding of the tokenized text. `ClassPrompts` holds that frozen
part for a list of class names and assembles full prompts from any context; a method's prompt
learner subclasses it, so its checkpoint keys stay the originals' (``ctx``, ``token_prefix``,
``token_suffix`` at the top level). Everything is passed as arguments: nothing reads the config.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

import clip
from clip.model import shared_prefix_length
from engine.errors import ConfigValueError

__all__ = ["CLASS_TOKEN_POSITIONS", "ClassPrompts", "Context", "clean_classname", "initial_context",
           "leading_token_context"]

logger = logging.getLogger(__name__)

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def clean_classname(name: str) -> str:
    """Class names are stored with underscores; prompts use spaces."""
    return name.replace("_", " ")


@dataclass
class Context:
    """Initial context vectors and the text that stands for them in the tokenized prompts."""

    vectors: torch.Tensor  # [n_ctx, W], or [n_cls, n_ctx, W] for class-specific context
    prefix_text: str  # "a photo of a" (word init) or "X X ... X" (random init)

    @property
    def n_ctx(self) -> int:
        return self.vectors.shape[-2]


def initial_context(
    clip_model: nn.Module, n_ctx: int, init_words: str = "", n_cls: int = 0, std: float = 0.02
) -> Context:
    """CoOp's context initialisation, shared by its successors.

    With `init_words` ("a photo of a"; underscores count as spaces) the context is those words'
    token embeddings and their number replaces `n_ctx`. Otherwise `n_ctx` vectors are drawn from
    N(0, std²), one set per class when `n_cls` > 0 (class-specific context).
    """
    dtype = clip_model.dtype
    width = clip_model.ln_final.weight.shape[0]
    if init_words:
        words = init_words.replace("_", " ")
        n_ctx = len(words.split(" "))
        with torch.no_grad():
            embedding = clip_model.token_embedding(clip.tokenize(words)).type(dtype)
        return Context(embedding[0, 1 : 1 + n_ctx, :].clone(), words)
    if n_ctx < 1:
        raise ConfigValueError(f"The number of context vectors must be >= 1, got {n_ctx}.")
    shape = (n_cls, n_ctx, width) if n_cls > 0 else (n_ctx, width)
    vectors = torch.empty(*shape, dtype=dtype)
    nn.init.normal_(vectors, std=std)
    return Context(vectors, " ".join(["X"] * n_ctx))


def leading_token_context(clip_model: nn.Module, n_ctx: int, init_words: str = "", max_init_ctx: int = 4,
                          std: float = 0.02) -> Context:
    """The context of MaPLe and of IVLP / PromptSRC (their `VLPromptLearner`), unlike CoOp's.

    With `init_words` and `n_ctx` <= `max_init_ctx`, the context is the embeddings of the first `n_ctx`
    tokens of the words while the prompt text keeps all of them: with "a photo of a" and 2 vectors the
    prompt is ``[SOS] [V1] [V2] of a <class>.``. Otherwise `n_ctx` vectors from N(0, std²) stand for "X .. X".
    """
    if n_ctx < 1:
        raise ConfigValueError(f"The number of context vectors must be >= 1, got {n_ctx}.")
    if init_words and n_ctx <= max_init_ctx:
        words = init_words.replace("_", " ")
        with torch.no_grad():
            embedding = clip_model.token_embedding(clip.tokenize(words)).type(clip_model.dtype)
        return Context(embedding[0, 1 : 1 + n_ctx, :].clone(), words)
    vectors = torch.empty(n_ctx, clip_model.ln_final.weight.shape[0], dtype=clip_model.dtype)
    nn.init.normal_(vectors, std=std)
    return Context(vectors, " ".join(["X"] * n_ctx))


class ClassPrompts(nn.Module):
    """The frozen parts of the class prompts ``<prefix_text> <class name>.``, and their assembly.

    Buffers: ``token_prefix`` [C, 1, W] (SOS) and ``token_suffix`` [C, L - 1 - n_ctx, W] (class
    name, ".", EOS, padding), saved in checkpoints as the originals do and rebuilt for the current
    classes on load; ``eot_indices`` [C] (not saved).
    """

    def __init__(self, clip_model: nn.Module, classnames: list[str], n_ctx: int, prefix_text: str,
                 class_token_position: str = "end") -> None:
        super().__init__()
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ConfigValueError(
                f"The class token position must be one of {CLASS_TOKEN_POSITIONS}, got '{class_token_position}'."
            )
        names = [clean_classname(name) for name in classnames]
        self.name_lens = [len(clip.encode_text_tokens(name)) for name in names]
        tokenized = clip.tokenize([f"{prefix_text} {name}." for name in names])
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized).type(clip_model.dtype)
        self.register_buffer("token_prefix", embedding[:, :1, :])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :, :])
        # EOS has the largest token id, so argmax finds it.
        self.register_buffer("eot_indices", tokenized.argmax(dim=-1), persistent=False)
        # Frozen words after the context that every class's prompt has ("of a" in MaPLe's "[V1] [V2] of a <class>.").
        self.common_suffix_length = shared_prefix_length(tokenized[:, 1 + n_ctx:])
        self.n_cls = len(names)
        self.n_ctx = n_ctx
        self.class_token_position = class_token_position

    def shared_prefix_length(self, ctx: torch.Tensor) -> int:
        """How many leading tokens of the prompts `assemble(ctx)` are the same in every class: SOS,
        then a shared context [n_ctx, W] up to the class name (all of it at the end, and the frozen
        words after it that every prompt has; its first half in the middle). The context is one tensor
        and the rest frozen buffers, so their gradients may be summed once. The text tower computes
        them once (`CLIP.encode_text_embeddings`)."""
        if ctx.dim() != 2:  # class-specific context: only the SOS buffer is shared
            return 1
        if self.class_token_position == "end":
            return 1 + self.n_ctx + self.common_suffix_length
        return 1 + {"middle": self.n_ctx // 2, "front": 0}[self.class_token_position]

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompts [C, L, W] from a shared context [n_ctx, W] or a class-specific one [C, n_ctx, W]."""
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.class_token_position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        prompts = []
        half = self.n_ctx // 2
        for i, name_len in enumerate(self.name_lens):
            class_i = suffix[i : i + 1, :name_len]
            rest_i = suffix[i : i + 1, name_len:]
            ctx_i = ctx[i : i + 1]
            if self.class_token_position == "middle":
                parts = [prefix[i : i + 1], ctx_i[:, :half], class_i, ctx_i[:, half:], rest_i]
            else:  # front
                parts = [prefix[i : i + 1], class_i, ctx_i, rest_i]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0)

    def assemble_per_image(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompts [B, C, L, W] from one context per image [B, n_ctx, W] (CoCoOp; class token at the end)."""
        if self.class_token_position != "end":
            raise ConfigValueError("Per-image context supports the class token at the end only (as CoCoOp).")
        batch = ctx.shape[0]
        prefix = self.token_prefix.unsqueeze(0).expand(batch, -1, -1, -1)
        suffix = self.token_suffix.unsqueeze(0).expand(batch, -1, -1, -1)
        ctx = ctx.unsqueeze(1).expand(-1, self.n_cls, -1, -1)
        return torch.cat([prefix, ctx, suffix], dim=2)
