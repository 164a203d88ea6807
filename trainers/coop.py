"""CoOp: Context Optimization (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022).

CLIP stays frozen; only M context vectors are learned. Each class prompt is
`[SOS] [V1]..[VM] <class name> . [EOS]` (class at the end, middle or front), encoded by CLIP's
text transformer; images are classified by scaled cosine similarity with cross-entropy.
Checkpoints hold `ctx`, `token_prefix`, `token_suffix` under `prompt_learner/`, as the original's.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from engine import TRAINER_REGISTRY
from engine.config import CfgNode as CN
from engine.errors import ConfigValueError
from trainers.base import ClipMethod, MethodModel, PromptLearnerModel
from trainers.prompts import CLASS_TOKEN_POSITIONS, ClassPrompts, initial_context

logger = logging.getLogger(__name__)


class PromptLearner(ClassPrompts):
    """Learned context vectors (shared, or one set per class) in front of the class names."""

    def __init__(self, clip_model: nn.Module, classnames: list[str], n_ctx: int = 16, ctx_init: str = "",
                 class_specific: bool = False, class_token_position: str = "end") -> None:
        # Word initialisation is always a shared context, as in the original.
        context = initial_context(clip_model, n_ctx, ctx_init, n_cls=len(classnames) if class_specific else 0)
        logger.info('Initial context: "%s" (%d context words, %s)', context.prefix_text, context.n_ctx,
                    "class-specific" if context.vectors.dim() == 3 else "unified")
        super().__init__(clip_model, classnames, context.n_ctx, context.prefix_text, class_token_position)
        self.ctx = nn.Parameter(context.vectors)

    def forward(self) -> torch.Tensor:
        """Prompt token embeddings [n_cls, context_length, width] (without positional embedding)."""
        return self.assemble(self.ctx)


class CoOpModel(PromptLearnerModel):
    """Frozen CLIP + CoOp's prompt learner."""

    autocast_at_test = False  # the original evaluates amp runs without autocast
    frozen_image_features = True  # CLIP's image tower is frozen and takes no prompt

    def encode_texts(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode_prompts(self.prompt_learner(), self.prompt_learner.eot_indices,
                                   shared_prefix=self.text_shared_prefix())

    def text_shared_prefix(self) -> int:
        return self.prompt_learner.shared_prefix_length(self.prompt_learner.ctx)  # SOS + a shared context


@TRAINER_REGISTRY.register()
class CoOp(ClipMethod):
    precision_key = "TRAINER.COOP.PREC"
    recipe = "CoOp/vit_b16_ep50"

    @staticmethod
    def extend_cfg(cfg) -> None:
        cfg.TRAINER.COOP = CN()
        cfg.TRAINER.COOP.N_CTX = 16  # number of context vectors
        cfg.TRAINER.COOP.CSC = False  # class-specific context
        cfg.TRAINER.COOP.CTX_INIT = ""  # e.g. "a photo of a"
        cfg.TRAINER.COOP.PREC = "fp16"  # fp16, fp32, amp
        cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end, middle, front

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        if cfg.TRAINER.COOP.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            raise ConfigValueError(
                f"TRAINER.COOP.CLASS_TOKEN_POSITION must be one of {CLASS_TOKEN_POSITIONS}, "
                f"got '{cfg.TRAINER.COOP.CLASS_TOKEN_POSITION}'"
            )

    def build_method(self, clip_model: nn.Module, classnames: list[str]) -> MethodModel:
        opts = self.cfg.TRAINER.COOP
        logger.info("Building custom CLIP")
        prompt_learner = PromptLearner(clip_model, classnames, opts.N_CTX, opts.CTX_INIT, opts.CSC,
                                       opts.CLASS_TOKEN_POSITION)
        return CoOpModel(clip_model, prompt_learner)
