"""KgCoOp: Knowledge-guided Context Optimization (Yao, Zhang, Xu, "Visual-Language Prompt Tuning with
Knowledge-guided Context Optimization", CVPR 2023).

CoOp's learned context (class token at the end) plus one regulariser that keeps the class text
features of the learned prompts t_c close to those the frozen CLIP gives for a hand-written
template of the dataset, t_c^clip:

    L = CE + W * (1 - mean_c cos(t_c, t_c^clip)),   W = TRAINER.COOP.W,

the mean over the run's classes, both sides L2-normalised (so the term is mean_c ||t_c - t_c^clip||² / 2,
the paper's squared distance at half the weight). The released code's form and key: W defaults to
1.0, its scripts use 8.0. The hand-crafted features are computed once when the model is built, for
the run's classes, and kept as a buffer that is not saved (the original keeps them as a plain
attribute). Checkpoints hold `ctx`, `token_prefix`, `token_suffix` under `prompt_learner/`; the
original's also hold an unused `bias_vectors` and CoCoOp's unused `meta_net`, which loading skips.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import TRAINER_REGISTRY
from engine.config import CfgNode as CN
from engine.errors import ConfigValueError
from trainers.base import ClipMethod, Features, Loss, MethodModel
from trainers.common import CUSTOM_TEMPLATES, DEFAULT_TEMPLATE, text_features_for_templates
from trainers.coop import CoOpModel, PromptLearner

logger = logging.getLogger(__name__)

# CoOp's zero-shot templates, except DTD's (the original's own table).
KGCOOP_TEMPLATES = {**CUSTOM_TEMPLATES, "DescribableTextures": "a photo of a {}, a type of texture."}
# TRAINER.COOP.CTX_INIT is a switch in the original: any true value starts the context from these words.
CTX_INIT_WORDS = "a photo of a"


def knowledge_guidance(text_features: torch.Tensor, clip_text_features: torch.Tensor) -> torch.Tensor:
    """1 - mean over classes of cos(t_c, t_c^clip), features [C, D]; both normalised first, as the original
    (its cosine has eps 1e-7)."""
    text = text_features / text_features.norm(dim=-1, keepdim=True)
    clip_text = clip_text_features / clip_text_features.norm(dim=-1, keepdim=True)
    return 1.0 - F.cosine_similarity(text, clip_text, dim=1, eps=1e-7).mean()


class KgCoOpModel(CoOpModel):
    """CoOp's model plus the knowledge-guidance regulariser against fixed hand-crafted class features."""

    def __init__(self, clip_model: nn.Module, prompt_learner: PromptLearner, clip_text_features: torch.Tensor,
                 weight: float) -> None:
        super().__init__(clip_model, prompt_learner)
        # The original's `ori_embedding`: rebuilt with the classes, never saved.
        self.register_buffer("clip_text_features", clip_text_features, persistent=False)
        self.weight = weight

    def checkpoint_skip_patterns(self) -> tuple[str, ...]:
        return (*super().checkpoint_skip_patterns(), "bias_vectors", "meta_net.*")  # unused in the original

    def loss(self, features: Features, logits: torch.Tensor, labels: torch.Tensor) -> Loss:
        loss = super().loss(features, logits, labels)
        loss.regularisers["kg"] = self.weight * knowledge_guidance(features.text, self.clip_text_features)
        return loss


@TRAINER_REGISTRY.register()
class KgCoOp(ClipMethod):
    precision_key = "TRAINER.COOP.PREC"
    recipe = "KgCoOp/vit_b16_ep100_ctxv1"

    @staticmethod
    def extend_cfg(cfg) -> None:
        # The original's keys live under TRAINER.COOP (its TRAINER.COCOOP and LOSS keys set nothing used).
        cfg.TRAINER.COOP = CN()
        cfg.TRAINER.COOP.N_CTX = 16  # number of context vectors (4 with CTX_INIT)
        cfg.TRAINER.COOP.CSC = False  # class-specific context (random init only)
        cfg.TRAINER.COOP.CTX_INIT = False  # True: start from "a photo of a"
        cfg.TRAINER.COOP.W = 1.0  # weight of the knowledge-guidance term (the original's scripts: 8.0)
        cfg.TRAINER.COOP.PREC = "fp16"  # fp16, fp32, amp
        cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # only end (the original reads it, always uses end)
        cfg.TRAINER.COOP.ALPHA = 1.0  # unused, as in the original

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        if cfg.TRAINER.COOP.CLASS_TOKEN_POSITION != "end":
            raise ConfigValueError(
                f"KgCoOp puts the class token at the end; TRAINER.COOP.CLASS_TOKEN_POSITION is "
                f"'{cfg.TRAINER.COOP.CLASS_TOKEN_POSITION}'. Set it to end (the original ignores other values)."
            )

    def build_method(self, clip_model: nn.Module, classnames: list[str]) -> MethodModel:
        opts = self.cfg.TRAINER.COOP
        prompt_learner = PromptLearner(clip_model, classnames, opts.N_CTX, CTX_INIT_WORDS if opts.CTX_INIT else "",
                                       opts.CSC)
        template = KGCOOP_TEMPLATES.get(self.cfg.DATASET.NAME, DEFAULT_TEMPLATE)
        logger.info('Hand-crafted prompts for the knowledge guidance: "%s"', template)
        clip_model.to(self.device)  # the frozen text tower runs once here, on the run's device
        clip_text = text_features_for_templates(clip_model, classnames, [template], self.device,
                                                self.text_chunk_mb(self.cfg))
        return KgCoOpModel(clip_model, prompt_learner, clip_text, opts.W)
