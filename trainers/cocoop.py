"""CoCoOp: Conditional Context Optimization (Zhou et al., "Conditional Prompt Learning for
Vision-Language Models", CVPR 2022).

CoOp's shared context, shifted per image: a meta-net (Linear vis_dim -> vis_dim/16, ReLU, Linear ->
ctx_dim) maps each image's L2-normalised feature to one vector added to every context token, so
each image has its own prompts for all classes and its own class text features [B, C, D].
Checkpoints hold `ctx`, `meta_net.linear{1,2}.*`, `token_prefix`, `token_suffix` under
`prompt_learner/`, as the original's.

The original encodes the C prompts of each image in a Python loop over the batch, 77 tokens each.
Here the B x C prompts go through the text tower in one call, cut after the last EOT in fp32
(exact), and in chunks within TRAIN.TEXT_CHUNK_MB of activation memory (ours; `TRAINER.COCOOP.TEXT_CHUNK_MB`,
when set, overrides it for CoCoOp).
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import torch
import torch.nn as nn

from engine import TRAINER_REGISTRY
from engine.config import CfgNode as CN
from trainers.base import ClipMethod, MethodModel, PromptLearnerModel
from trainers.common import DEFAULT_TEXT_CHUNK_MB
from trainers.prompts import ClassPrompts, initial_context

logger = logging.getLogger(__name__)

COCOOP_CHUNK_KEY = "TRAINER.COCOOP.TEXT_CHUNK_MB"


class PromptLearner(ClassPrompts):
    """A shared context `ctx` [n_ctx, W] and the meta-net that shifts it per image."""

    def __init__(self, clip_model: nn.Module, classnames: list[str], n_ctx: int = 16, ctx_init: str = "") -> None:
        context = initial_context(clip_model, n_ctx, ctx_init)  # drawn before the meta-net, as the original
        logger.info('Initial context: "%s" (%d context words)', context.prefix_text, context.n_ctx)
        super().__init__(clip_model, classnames, context.n_ctx, context.prefix_text)
        self.ctx = nn.Parameter(context.vectors)
        vis_dim, ctx_dim = clip_model.visual.output_dim, context.vectors.shape[-1]
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, ctx_dim)),
        ])).to(clip_model.dtype)  # fp16 under PREC fp16, as the original's .half()

    def context_per_image(self, image_features: torch.Tensor) -> torch.Tensor:
        """Context [B, n_ctx, W]: `ctx` plus the meta-net's bias of each (normalised) image feature."""
        return self.ctx.unsqueeze(0) + self.meta_net(image_features).unsqueeze(1)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Prompt token embeddings [B, n_cls, context_length, width] (without positional embedding)."""
        return self.assemble_per_image(self.context_per_image(image_features))


class CoCoOpModel(PromptLearnerModel):
    """Frozen CLIP + CoCoOp's prompt learner; class text features per image [B, C, D]."""

    text_depends_on_image = True
    autocast_at_test = False  # the original evaluates amp runs without autocast
    frozen_image_features = True  # the meta-net reads the frozen features; the image tower takes no prompt

    def __init__(self, clip_model: nn.Module, prompt_learner: PromptLearner,
                 text_chunk_mb: float = DEFAULT_TEXT_CHUNK_MB) -> None:
        super().__init__(clip_model, prompt_learner)
        self.text_chunk_mb = text_chunk_mb

    def encode_texts(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        if image_features is None:
            raise ValueError("CoCoOp's class text features depend on the image: pass the image features.")
        # The meta-net reads the L2-normalised image features, as the original.
        normalised = image_features / image_features.norm(dim=-1, keepdim=True)
        prompts = self.prompt_learner(normalised)  # [B, C, L, W]
        batch, n_cls = prompts.shape[:2]
        eot_indices = self.prompt_learner.eot_indices.repeat(batch)
        return self.encode_prompts(prompts.flatten(0, 1), eot_indices).view(batch, n_cls, -1)


@TRAINER_REGISTRY.register()
class CoCoOp(ClipMethod):
    precision_key = "TRAINER.COCOOP.PREC"
    recipe = "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1"

    @staticmethod
    def extend_cfg(cfg) -> None:
        cfg.TRAINER.COCOOP = CN()
        cfg.TRAINER.COCOOP.N_CTX = 16  # number of context vectors (ignored when CTX_INIT is set)
        cfg.TRAINER.COCOOP.CTX_INIT = ""  # e.g. "a photo of a"
        cfg.TRAINER.COCOOP.PREC = "fp16"  # fp16, fp32, amp
        # Ours: activation memory (MB) of one text-tower call for CoCoOp; None: TRAIN.TEXT_CHUNK_MB (every
        # CLIP method's key, default 8192). A number overrides it for CoCoOp (the key of an earlier version).
        cfg.TRAINER.COCOOP.TEXT_CHUNK_MB = None

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        if cfg.TRAINER.COCOOP.TEXT_CHUNK_MB is not None:
            cls.check_text_chunk_mb(COCOOP_CHUNK_KEY, cfg.TRAINER.COCOOP.TEXT_CHUNK_MB)

    @classmethod
    def text_chunk_key(cls, cfg) -> str:
        """TRAINER.COCOOP.TEXT_CHUNK_MB when set (it overrides TRAIN.TEXT_CHUNK_MB for CoCoOp), else the general key."""
        return COCOOP_CHUNK_KEY if cfg.TRAINER.COCOOP.TEXT_CHUNK_MB is not None else super().text_chunk_key(cfg)

    def build_method(self, clip_model: nn.Module, classnames: list[str]) -> MethodModel:
        opts = self.cfg.TRAINER.COCOOP
        logger.info("Building custom CLIP")
        prompt_learner = PromptLearner(clip_model, classnames, opts.N_CTX, opts.CTX_INIT)
        return CoCoOpModel(clip_model, prompt_learner)  # its budget: ClipMethod.build_model sets it
