"""PromptSRC: Khattak et al., "Self-regulating Prompts: Foundational Model Adaptation without Forgetting"
(ICCV 2023).

Independent deep prompts in both towers (the IVLP design, no coupling): text context vectors after SOS
(initialised from "a photo of a") and, before text blocks 1..J_t-1, fresh vectors replacing them; vision
vectors appended after the patch tokens and, before vision blocks 1..J_v-1, fresh vectors replacing the
last N_v tokens. CLIP stays frozen. Three self-consistency terms hold the prompted model near the frozen
one, computed by the same CLIP without prompts (no second copy):

    L = CE + KL(p_zs || p) / (B C) + TEXT_LOSS_WEIGHT * mean|t - t_zs| + IMAGE_LOSS_WEIGHT * mean|f - f_zs|

with all features L2-normalised, t_zs the normalised mean of the raw frozen text features over the 60
`IMAGENET_TEMPLATES` (computed once per class set, before training), f_zs the frozen image features of
the same batch and p_zs their softmax logits. Gaussian prompt aggregation (GPA) keeps sum_e w_e θ_e over
the epochs' learned tensors θ_e, w_e ∝ N(e; GPA_MEAN, GPA_STD²) over e = 1..MAX_EPOCH, and loads it after
the last epoch, so the final test and checkpoint hold the aggregate. Checkpoints: the learned tensors
under `VLPromptLearner/`, named as the original's whole-model checkpoint names them.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from engine import TRAINER_REGISTRY
from engine.config import CfgNode as CN
from engine.errors import ConfigValueError
from trainers.base import ClipMethod, Features, Loss, MethodModel
from trainers.common import (DEFAULT_TEXT_CHUNK_MB, IMAGENET_TEMPLATES, TextActivation, cosine_logits, encode_token_ids,
                             text_activation)
from trainers.prompts import ClassPrompts, clean_classname, leading_token_context

logger = logging.getLogger(__name__)

# Keys of the original's whole-model checkpoints that are frozen CLIP (or its second image tower): not loaded.
FROZEN_CHECKPOINT_KEYS = (
    "prompt_learner.ZS_image_encoder.*", "logit_scale", "*.resblocks.*.attn.*", "*.resblocks.*.ln_[12].*",
    "*.resblocks.*.mlp.*", "image_encoder.conv1.*", "image_encoder.class_embedding",
    "image_encoder.positional_embedding", "image_encoder.ln_pre.*", "image_encoder.ln_post.*", "image_encoder.proj",
    "text_encoder.positional_embedding", "text_encoder.ln_final.*", "text_encoder.text_projection",
)


@torch.no_grad()
def mean_template_features(clip_model: nn.Module, classnames: list[str], templates: list[str],
                           device: torch.device, budget_mb: float = DEFAULT_TEXT_CHUNK_MB) -> torch.Tensor:
    """The frozen raw text features [C, D] averaged over the templates, not normalised (the original's
    `fixed_embeddings`, normalised at use); the T x C prompts in chunks within `budget_mb` (no gradients)."""
    names = [clean_classname(name) for name in classnames]
    tokens = clip.tokenize([template.format(name) for template in templates for name in names]).to(device)
    features = encode_token_ids(clip_model, tokens, budget_mb)
    return features.view(len(templates), len(names), -1).mean(dim=0)


def prompt_vectors(n_ctx: int, width: int, std: float = 0.02) -> nn.Parameter:
    """fp32 vectors from N(0, std²), as the original's `VPT` tensors (cast to the tower's dtype at use)."""
    return nn.Parameter(torch.empty(n_ctx, width).normal_(std=std))


class LayerPrompt(nn.Module):
    def __init__(self, n_ctx: int, width: int) -> None:
        super().__init__()
        self.VPT_shallow = prompt_vectors(n_ctx, width)


class Blocks(nn.Module):
    def __init__(self, blocks: dict[str, nn.Module]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleDict(blocks)


class DeepPrompts(nn.Module):
    """Prompts replacing the previous block's prompt tokens before blocks 1..depth-1, saved as the
    original's ``transformer.resblocks.<i>.VPT_shallow``."""

    def __init__(self, n_ctx: int, width: int, depth: int) -> None:
        super().__init__()
        self.transformer = Blocks({str(i): LayerPrompt(n_ctx, width) for i in range(1, depth)})

    def layer_prompts(self) -> dict[int, torch.Tensor]:
        return {int(i): block.VPT_shallow for i, block in self.transformer.resblocks.items()}


class VisionPrompts(DeepPrompts):
    """`VPT` appended after the patch tokens (depth >= 1), then the deep prompts; none at depth 0."""

    def __init__(self, n_ctx: int, width: int, depth: int) -> None:
        shallow = prompt_vectors(n_ctx, width) if depth >= 1 else None  # drawn before the deep ones, as the original
        super().__init__(n_ctx, width, depth)
        self.VPT = shallow


class TextPromptLearner(ClassPrompts):
    """The learned text context ``ctx`` after SOS (CLIP's dtype) and the frozen rest of the class prompts."""

    def __init__(self, clip_model: nn.Module, classnames: list[str], n_ctx: int, ctx_init: str) -> None:
        context = leading_token_context(clip_model, n_ctx, ctx_init)
        logger.info('Initial text context: "%s" (%d vectors)', context.prefix_text, context.n_ctx)
        super().__init__(clip_model, classnames, context.n_ctx, context.prefix_text)
        self.ctx = nn.Parameter(context.vectors)

    def forward(self) -> torch.Tensor:
        return self.assemble(self.ctx)


class VLPromptLearner(nn.Module):
    """Everything PromptSRC learns; state-dict keys as in the original's checkpoint (`prompt_learner.ctx`,
    `image_encoder.VPT`, `{image,text}_encoder.transformer.resblocks.<i>.VPT_shallow`)."""

    def __init__(self, clip_model: nn.Module, classnames: list[str], opts: Any) -> None:
        super().__init__()
        # Drawn in the original's order: vision prompts, then text ones (the context is word-initialised).
        self.image_encoder = VisionPrompts(opts.N_CTX_VISION, clip_model.visual.conv1.weight.shape[0],
                                           opts.PROMPT_DEPTH_VISION)
        self.text_encoder = DeepPrompts(opts.N_CTX_TEXT, clip_model.ln_final.weight.shape[0], opts.PROMPT_DEPTH_TEXT)
        self.prompt_learner = TextPromptLearner(clip_model, classnames, opts.N_CTX_TEXT, opts.CTX_INIT)


@dataclass
class PromptSRCFeatures(Features):
    """Features, plus (while training) the frozen CLIP's image features of the same images."""

    frozen_image: torch.Tensor | None = None


@dataclass
class SelfConsistency:
    """PromptSRC's three terms, unweighted, from L2-normalised features."""

    text: torch.Tensor  # mean |t - t_zs| over all elements
    image: torch.Tensor  # mean |f - f_zs|
    logits: torch.Tensor  # sum KL(p_zs || p) / (B C)


def self_consistency(text: torch.Tensor, frozen_text: torch.Tensor, image: torch.Tensor, frozen_image: torch.Tensor,
                     logits: torch.Tensor, frozen_logits: torch.Tensor) -> SelfConsistency:
    kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(frozen_logits, dim=1), reduction="sum", log_target=True)
    return SelfConsistency(F.l1_loss(text, frozen_text), F.l1_loss(image, frozen_image), kl / logits.numel())


def normalized(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class PromptSRCModel(MethodModel):
    """Frozen CLIP with PromptSRC's deep prompts in both towers and its self-consistency terms."""

    autocast_at_test = False  # the original evaluates without autocast

    def __init__(self, clip_model: nn.Module, vl_prompt_learner: VLPromptLearner, classnames: list[str],
                 text_weight: float, image_weight: float) -> None:
        super().__init__(clip_model)
        self.vl_prompt_learner = vl_prompt_learner
        self.classnames = classnames
        self.text_weight, self.image_weight = text_weight, image_weight
        # t_zs for the current classes (the original's `fixed_embeddings`): built by `prepare_training`, never saved.
        self.register_buffer("frozen_text", None, persistent=False)

    def learnable_modules(self) -> dict[str, nn.Module]:
        return {"VLPromptLearner": self.vl_prompt_learner}

    def checkpoint_skip_patterns(self) -> tuple[str, ...]:
        return ("prompt_learner.token_prefix", "prompt_learner.token_suffix", *FROZEN_CHECKPOINT_KEYS)

    @torch.no_grad()
    def prepare_training(self) -> None:
        """The mean of the frozen raw text features over the templates (t_zs once normalised), once per class set."""
        if self.frozen_text is not None:
            return
        device = self.clip_model.logit_scale.device
        with torch.autocast(device.type, enabled=False):  # the weights' precision (fp32 under amp), not autocast's
            self.frozen_text = mean_template_features(self.clip_model, self.classnames, IMAGENET_TEMPLATES, device,
                                                      self.text_chunk_mb)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        vision = self.vl_prompt_learner.image_encoder
        if vision.VPT is None:
            return super().encode_images(images)
        return self.clip_model.encode_image(images.type(self.dtype), prompts=vision.VPT,
                                            layer_prompts=vision.layer_prompts())

    def encode_texts(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        learner = self.vl_prompt_learner
        return self.encode_prompts(learner.prompt_learner(), learner.prompt_learner.eot_indices,
                                   learner.text_encoder.layer_prompts(), shared_prefix=self.text_shared_prefix())

    def text_shared_prefix(self) -> int:
        # SOS + the shared context; the deep prompts replace tokens inside it, the same in every class.
        learner = self.vl_prompt_learner.prompt_learner
        return learner.shared_prefix_length(learner.ctx)

    def text_activation(self, batch_size: int) -> TextActivation | None:
        return text_activation(self.clip_model, self.vl_prompt_learner.prompt_learner.eot_indices,
                               shared_prefix=self.text_shared_prefix())

    def features(self, images: torch.Tensor, text: torch.Tensor | None = None) -> PromptSRCFeatures:
        base = super().features(images, text)
        frozen = None
        if self.vl_prompt_learner.training:  # the original's test: its prompt learner's mode
            with torch.no_grad():
                frozen = self.clip_model.encode_image(images.type(self.dtype))
        return PromptSRCFeatures(base.image, base.text, frozen)

    def loss(self, features: Features, logits: torch.Tensor, labels: torch.Tensor) -> Loss:
        loss = super().loss(features, logits, labels)
        frozen_image = getattr(features, "frozen_image", None)
        if frozen_image is None:
            raise RuntimeError("PromptSRC's loss needs the frozen image features: compute the features in training "
                               "mode (the prompt learner's .train()).")
        self.prepare_training()
        frozen_text = normalized(self.frozen_text)
        frozen_image = normalized(frozen_image)
        with torch.no_grad():
            frozen_logits = cosine_logits(frozen_image, frozen_text, self.clip_model.logit_scale, text_normalized=True)
        terms = self_consistency(normalized(features.text), frozen_text, normalized(features.image), frozen_image,
                                 logits, frozen_logits)
        loss.regularisers.update(scl_text=self.text_weight * terms.text, scl_image=self.image_weight * terms.image,
                                 scl_logits=terms.logits)
        return loss


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """w_e = N(e; mean, std²) / sum_a N(a; mean, std²) for e = 1..epochs (the original's normalised Gaussian
    density), from log-densities so that a far-off mean gives a one-hot weight instead of 0/0."""
    logs = [-0.5 * ((e - mean) / std) ** 2 for e in range(1, epochs + 1)]
    top = max(logs)
    densities = [math.exp(v - top) for v in logs]
    total = sum(densities)
    return [d / total for d in densities]


class GaussianPromptAggregation:
    """The running sum over finished epochs e of w_e θ_e, in fp32, for named tensors θ."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = weights
        self.total: dict[str, torch.Tensor] = {}
        self.epochs_added = 0

    def add(self, epoch: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """Add w_{epoch+1} θ (`epoch` counts from 0, as the engine's)."""
        weight = self.weights[epoch]
        for name, value in tensors.items():
            term = value.detach().float() * weight
            self.total[name] = self.total[name] + term if name in self.total else term
        self.epochs_added += 1

    @torch.no_grad()
    def load_into(self, tensors: Mapping[str, torch.Tensor]) -> None:
        for name, value in tensors.items():
            value.copy_(self.total[name])

    def state_dict(self) -> dict:
        return {"epochs_added": self.epochs_added, "total": {k: v.cpu() for k, v in self.total.items()}}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        self.epochs_added = int(state["epochs_added"])
        self.total = {k: v.to(device) for k, v in state["total"].items()}


@TRAINER_REGISTRY.register()
class PromptSRC(ClipMethod):
    precision_key = "TRAINER.PROMPTSRC.PREC"
    recipe = "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx"

    @staticmethod
    def extend_cfg(cfg) -> None:
        cfg.TRAINER.PROMPTSRC = CN()
        cfg.TRAINER.PROMPTSRC.N_CTX_VISION = 4  # vision prompt tokens
        cfg.TRAINER.PROMPTSRC.N_CTX_TEXT = 4  # text context vectors
        cfg.TRAINER.PROMPTSRC.CTX_INIT = "a photo of a"  # its first N_CTX_TEXT tokens start the text context
        cfg.TRAINER.PROMPTSRC.PREC = "fp16"  # fp16, fp32, amp
        cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION = 9  # blocks with vision prompts (0: none)
        cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT = 9  # blocks with text prompts (>= 1)
        cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT = 25  # weight of mean|t - t_zs|
        cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT = 10  # weight of mean|f - f_zs|
        cfg.TRAINER.PROMPTSRC.GPA_MEAN = 15  # GPA: Gaussian over epochs 1..MAX_EPOCH
        cfg.TRAINER.PROMPTSRC.GPA_STD = 1

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        opts = cfg.TRAINER.PROMPTSRC
        if opts.PROMPT_DEPTH_TEXT < 1:
            raise ConfigValueError(f"TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT must be >= 1 (the text context is always "
                                   f"learned), got {opts.PROMPT_DEPTH_TEXT}.")
        for key in ("N_CTX_TEXT", "N_CTX_VISION", "PROMPT_DEPTH_VISION"):
            if opts[key] < (0 if key == "PROMPT_DEPTH_VISION" else 1):
                raise ConfigValueError(f"TRAINER.PROMPTSRC.{key} must be >= {0 if 'DEPTH' in key else 1}, "
                                       f"got {opts[key]}.")
        if opts.GPA_STD <= 0:
            raise ConfigValueError(f"TRAINER.PROMPTSRC.GPA_STD must be > 0, got {opts.GPA_STD}.")

    def build_method(self, clip_model: nn.Module, classnames: list[str]) -> MethodModel:
        opts = self.cfg.TRAINER.PROMPTSRC
        for key, tower in (("PROMPT_DEPTH_VISION", clip_model.visual), ("PROMPT_DEPTH_TEXT", clip_model)):
            layers = tower.transformer.layers if hasattr(tower, "transformer") else 0
            if opts[key] > layers:
                raise ConfigValueError(f"TRAINER.PROMPTSRC.{key} is {opts[key]} but this CLIP's tower has {layers} "
                                       f"transformer blocks{' (a ResNet: use a ViT backbone)' if not layers else ''}. "
                                       f"Set it to at most {layers}.")
        prompts = VLPromptLearner(clip_model, classnames, opts)
        self.gpa = GaussianPromptAggregation(gpa_weights(self.cfg.OPTIM.MAX_EPOCH, opts.GPA_MEAN, opts.GPA_STD))
        return PromptSRCModel(clip_model, prompts, classnames, opts.TEXT_LOSS_WEIGHT, opts.IMAGE_LOSS_WEIGHT)

    def gpa_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_trainable_parameters())

    def before_epoch(self) -> None:
        super().before_epoch()
        self.model.prepare_training()

    def after_epoch(self) -> None:
        """GPA before the engine's checkpointing: add this epoch's tensors, and after the last epoch load the
        aggregate, so that the final checkpoint and test hold it (as the original)."""
        if self.gpa.epochs_added != self.epoch:
            logger.warning("GPA has %d epoch(s) where %d finished (resumed without the resume point?): the "
                           "aggregate lacks the missing ones.", self.gpa.epochs_added, self.epoch)
        self.gpa.add(self.epoch, self.gpa_tensors())
        if self.epoch + 1 == self.max_epoch:
            logger.info("Using the GPA model (Gaussian over epochs, mean %g, std %g) for the final checkpoint and test",
                        self.cfg.TRAINER.PROMPTSRC.GPA_MEAN, self.cfg.TRAINER.PROMPTSRC.GPA_STD)
            self.gpa.load_into(self.gpa_tensors())
        super().after_epoch()

    def resume_state(self) -> dict:
        return {**super().resume_state(), "gpa": self.gpa.state_dict()}

    def load_resume_state(self, state) -> None:
        super().load_resume_state(state)
        if state.get("gpa") is not None:
            self.gpa.load_state_dict(state["gpa"], self.device)
