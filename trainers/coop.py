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
import torch.nn.functional as F
from engine.config import CfgNode as CN

import clip
from engine import TRAINER_REGISTRY, TrainerX
from engine.checkpoint import load_pretrained_weights
from engine.evaluation import compute_accuracy
from engine.optim import build_lr_scheduler, build_optimizer
from engine.errors import ConfigValueError
from trainers.common import (
    autocast_context,
    check_precision,
    clean_classname,
    cosine_logits,
    load_clip_to_cpu,
    make_grad_scaler,
)

logger = logging.getLogger(__name__)

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


class PromptLearner(nn.Module):
    """Learned context vectors plus the frozen token embeddings around them."""

    def __init__(self, cfg, classnames: list[str], clip_model: nn.Module) -> None:
        super().__init__()
        opts = cfg.TRAINER.COOP
        n_cls = len(classnames)
        n_ctx = opts.N_CTX
        ctx_init = opts.CTX_INIT
        dtype = clip_model.dtype
        ctx_dim = clip_model.ln_final.weight.shape[0]

        if ctx_init:
            # Word initialisation: N_CTX becomes the number of words (each word is one BPE token);
            # the context is always shared across classes on this path, as in the original.
            ctx_init = ctx_init.replace("_", " ")
            n_ctx = len(ctx_init.split(" "))
            with torch.no_grad():
                embedding = clip_model.token_embedding(clip.tokenize(ctx_init)).type(dtype)
            ctx_vectors = embedding[0, 1 : 1 + n_ctx, :].clone()
            prompt_prefix = ctx_init
        else:
            shape = (n_cls, n_ctx, ctx_dim) if opts.CSC else (n_ctx, ctx_dim)
            ctx_vectors = torch.empty(*shape, dtype=dtype)
            nn.init.normal_(ctx_vectors, std=0.02)
            prompt_prefix = " ".join(["X"] * n_ctx)
        logger.info('Initial context: "%s" (%d context words, %s)', prompt_prefix, n_ctx,
                    "class-specific" if ctx_vectors.dim() == 3 else "unified")
        self.ctx = nn.Parameter(ctx_vectors)

        names = [clean_classname(name) for name in classnames]
        self.name_lens = [len(clip.encode_text_tokens(name)) for name in names]
        tokenized = clip.tokenize([f"{prompt_prefix} {name}." for name in names])
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized).type(dtype)
        # Saved in the checkpoint (as the original does) but rebuilt from the current class names on load.
        self.register_buffer("token_prefix", embedding[:, :1, :])  # SOS
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :, :])  # class, ".", EOS, padding
        # EOS has the largest id, so argmax finds it; not saved (derived from the class names).
        self.register_buffer("eot_indices", tokenized.argmax(dim=-1), persistent=False)
        self.n_cls = n_cls
        self.n_ctx = n_ctx
        self.class_token_position = opts.CLASS_TOKEN_POSITION

    def forward(self) -> torch.Tensor:
        """Prompt token embeddings [n_cls, context_length, width] (without positional embedding)."""
        ctx = self.ctx
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


class CustomCLIP(nn.Module):
    """Frozen CLIP + CoOp prompt learner."""

    def __init__(self, cfg, classnames: list[str], clip_model: nn.Module) -> None:
        super().__init__()
        self.prompt_learner = PromptLearner(cfg, classnames, clip_model)
        self.clip_model = clip_model
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image_features = self.clip_model.encode_image(image.type(self.dtype))
        prompts = self.prompt_learner()
        text_features = self.clip_model.encode_text_embeddings(prompts, self.prompt_learner.eot_indices)
        return cosine_logits(image_features, text_features, self.logit_scale)


@TRAINER_REGISTRY.register()
class CoOp(TrainerX):
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
        check_precision(cfg.TRAINER.COOP.PREC, "TRAINER.COOP.PREC")
        if cfg.TRAINER.COOP.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            raise ConfigValueError(
                f"TRAINER.COOP.CLASS_TOKEN_POSITION must be one of {CLASS_TOKEN_POSITIONS}, "
                f"got '{cfg.TRAINER.COOP.CLASS_TOKEN_POSITION}'"
            )

    def build_model(self) -> None:
        cfg = self.cfg
        prec = cfg.TRAINER.COOP.PREC
        classnames = self.dm.dataset.classnames
        logger.info("Loading CLIP (backbone: %s)", cfg.MODEL.BACKBONE.NAME)
        clip_model = load_clip_to_cpu(cfg)
        if prec in ("fp32", "amp"):
            clip_model.float()
        logger.info("Building custom CLIP")
        self.model = CustomCLIP(cfg, classnames, clip_model)
        for name, param in self.model.named_parameters():
            param.requires_grad_("prompt_learner" in name)
        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(self.model.prompt_learner, cfg.MODEL.INIT_WEIGHTS)
        self.model.to(self.device)
        self.optim = build_optimizer(self.model.prompt_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)
        self.scaler = make_grad_scaler(prec, self.device)
        # Class-name buffers are rebuilt for the current classes (base -> new, other datasets).
        self.checkpoint_ignored_keys = ("token_prefix", "token_suffix")

    def forward_backward(self, batch) -> dict:
        image, label = self.parse_batch_train(batch)
        prec = self.cfg.TRAINER.COOP.PREC
        with autocast_context(prec, self.device):
            output = self.model(image)
            loss = F.cross_entropy(output, label)
        if self.scaler is not None:
            self.model_zero_grad()
            self.detect_anomaly(loss)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            self.model_backward_and_update(loss)
        loss_summary = {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return loss_summary

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)
