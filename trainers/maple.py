"""MaPLe: Multi-modal Prompt Learning (Khattak et al., CVPR 2023, arXiv 2210.03117).

CLIP stays frozen. N learned text tokens `ctx` ([N, W_t], N = N_CTX) sit after SOS in every class
prompt; a linear map `proj` (W_t -> W_v) turns the same tokens into N vision prompts appended after
the patch tokens (before ln_pre, no positional embedding). For J = PROMPT_DEPTH, J-1 further text
prompt sets P_1..P_{J-1} replace the text prompt tokens (positions 1..N) before text block i, and
their projections F_i(P_i) (one Linear each, all starting as copies of one init) replace the last N
vision tokens before vision block i, i = 1..J-1. Logits are CLIP's scaled cosine similarities;
the loss is cross-entropy.

As the original, the context starts from the first N tokens of CTX_INIT ("a photo" of "a photo of a",
so the prompt reads `[SOS] [ctx1] [ctx2] of a <class>. [EOS]`), `ctx` and `proj` are in CLIP's
precision and the deep prompts and their projections in fp32. Checkpoints use the original's layout:
folder `MultiModalPromptLearner/`, keys `prompt_learner.*`; the original saves its whole CustomCLIP
there, and loading skips those frozen CLIP weights (and the class-name buffers, rebuilt here).
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

import clip
from clip import VisionTransformer
from engine import TRAINER_REGISTRY
from engine.config import CfgNode as CN
from engine.errors import ConfigValueError
from trainers.base import ClipMethod, MethodModel
from trainers.common import TextActivation, text_activation
from trainers.prompts import ClassPrompts, Context, initial_context

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "MultiModalPromptLearner"  # the name the original registers its model under
MAX_WORD_INIT_TOKENS = 4  # the original initialises from CTX_INIT only when N_CTX <= 4


def maple_context(clip_model: nn.Module, n_ctx: int, ctx_init: str) -> Context:
    """The original's initial context: the embeddings of the first `n_ctx` tokens of `ctx_init`
    (the whole phrase stays the prompt's text), or N(0, 0.02²) vectors with "X X ..." as the text."""
    if not ctx_init or n_ctx > MAX_WORD_INIT_TOKENS:
        return initial_context(clip_model, n_ctx)
    words = ctx_init.replace("_", " ")
    n_tokens = len(clip.encode_text_tokens(words))
    if n_tokens < n_ctx:
        raise ConfigValueError(
            f"TRAINER.MAPLE.CTX_INIT '{ctx_init}' has {n_tokens} tokens, fewer than TRAINER.MAPLE.N_CTX={n_ctx}: "
            "use a longer phrase, a smaller N_CTX, or CTX_INIT '' (random init)."
        )
    with torch.no_grad():
        embedding = clip_model.token_embedding(clip.tokenize(words)).type(clip_model.dtype)
    return Context(embedding[0, 1 : 1 + n_ctx, :].clone(), words)


class MultiModalPromptLearner(ClassPrompts):
    """Shared text/vision prompts (`ctx`, `proj`) and the deep compound prompts of layers 1..depth-1."""

    def __init__(self, clip_model: nn.Module, classnames: list[str], n_ctx: int = 2,
                 ctx_init: str = "a photo of a", prompt_depth: int = 9) -> None:
        text_width = clip_model.ln_final.weight.shape[0]
        vision_width = clip_model.visual.width
        # Random draws in the original's order: context, proj, deep text prompts, one deep projection.
        context = maple_context(clip_model, n_ctx, ctx_init)
        proj = nn.Linear(text_width, vision_width)
        deep_text = [nn.init.normal_(torch.empty(n_ctx, text_width), std=0.02) for _ in range(prompt_depth - 1)]
        deep_projection = nn.Linear(text_width, vision_width)
        logger.info('MaPLe: initial context "%s", %d context tokens, prompt depth %d',
                    context.prefix_text, context.n_ctx, prompt_depth)
        super().__init__(clip_model, classnames, context.n_ctx, context.prefix_text)
        self.ctx = nn.Parameter(context.vectors)
        self.proj = proj.to(clip_model.dtype)  # CLIP's precision, like ctx (the original: fp16 always)
        self.compound_prompts_text = nn.ParameterList([nn.Parameter(p) for p in deep_text])
        self.compound_prompt_projections = nn.ModuleList(
            [copy.deepcopy(deep_projection) for _ in range(prompt_depth - 1)]
        )

    def text_prompts(self) -> torch.Tensor:
        """Class prompt embeddings [C, L, W_t]."""
        return self.assemble(self.ctx)

    def text_layer_prompts(self) -> dict[int, torch.Tensor]:
        """Text block index -> prompts [N, W_t] that replace tokens 1..N before it."""
        return {i + 1: prompts for i, prompts in enumerate(self.compound_prompts_text)}

    def vision_prompts(self) -> torch.Tensor:
        """Vision prompts [N, W_v] appended to the patch tokens."""
        return self.proj(self.ctx)

    def vision_layer_prompts(self) -> dict[int, torch.Tensor]:
        """Vision block index -> prompts [N, W_v] that replace the last N tokens before it."""
        pairs = zip(self.compound_prompt_projections, self.compound_prompts_text)
        return {i + 1: projection(prompts) for i, (projection, prompts) in enumerate(pairs)}


class MaPLeModel(MethodModel):
    """Frozen CLIP whose two towers take MaPLe's coupled prompts."""

    autocast_at_test = False  # the original evaluates amp runs without autocast

    def __init__(self, clip_model: nn.Module, prompt_learner: MultiModalPromptLearner) -> None:
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner

    def learnable_modules(self) -> dict[str, nn.Module]:
        # A container so that the saved keys are the original's `prompt_learner.*`.
        return {CHECKPOINT_NAME: nn.ModuleDict({"prompt_learner": self.prompt_learner})}

    def checkpoint_skip_patterns(self) -> tuple[str, ...]:
        # Class-name buffers are rebuilt for the current classes; the original's checkpoints also
        # hold the whole frozen CLIP (image_encoder, text_encoder, logit_scale), which we keep as loaded.
        return ("prompt_learner.token_prefix", "prompt_learner.token_suffix", "image_encoder.*", "text_encoder.*",
                "logit_scale")

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        learner = self.prompt_learner
        return self.clip_model.encode_image(images, prompts=learner.vision_prompts(),
                                            layer_prompts=learner.vision_layer_prompts())

    def encode_texts(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        learner = self.prompt_learner
        return self.encode_prompts(learner.text_prompts(), learner.eot_indices, learner.text_layer_prompts(),
                                   shared_prefix=self.text_shared_prefix())

    def text_shared_prefix(self) -> int:
        # SOS + the shared context; the deep prompts replace tokens inside it, the same in every class.
        return self.prompt_learner.shared_prefix_length(self.prompt_learner.ctx)

    def text_activation(self, batch_size: int) -> TextActivation | None:
        return text_activation(self.clip_model, self.prompt_learner.eot_indices, shared_prefix=self.text_shared_prefix())


@TRAINER_REGISTRY.register()
class MaPLe(ClipMethod):
    precision_key = "TRAINER.MAPLE.PREC"
    recipe = "MaPLe/vit_b16_c2_ep5_batch4_2ctx"

    @staticmethod
    def extend_cfg(cfg) -> None:
        cfg.TRAINER.MAPLE = CN()
        cfg.TRAINER.MAPLE.N_CTX = 2  # number of prompt tokens per layer
        cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"  # its first N_CTX tokens start the context
        cfg.TRAINER.MAPLE.PREC = "fp16"  # fp16, fp32, amp
        cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9  # layers with prompts (1 = input only); at most the towers' depth

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        opts = cfg.TRAINER.MAPLE
        if opts.N_CTX < 1:
            raise ConfigValueError(f"TRAINER.MAPLE.N_CTX must be >= 1, got {opts.N_CTX}.")
        if opts.PROMPT_DEPTH < 1:
            raise ConfigValueError(f"TRAINER.MAPLE.PROMPT_DEPTH must be >= 1 (1 = prompts at the input only), "
                                   f"got {opts.PROMPT_DEPTH}.")

    def build_method(self, clip_model: nn.Module, classnames: list[str]) -> MethodModel:
        opts = self.cfg.TRAINER.MAPLE
        if not isinstance(clip_model.visual, VisionTransformer):
            raise ConfigValueError(f"MaPLe prompts the image transformer: MODEL.BACKBONE.NAME "
                                   f"'{self.cfg.MODEL.BACKBONE.NAME}' has a ResNet image encoder; use a ViT (ViT-B/16).")
        depth = min(clip_model.visual.transformer.layers, clip_model.transformer.layers)
        if opts.PROMPT_DEPTH > depth:
            raise ConfigValueError(f"TRAINER.MAPLE.PROMPT_DEPTH {opts.PROMPT_DEPTH} exceeds the {depth} blocks of "
                                   f"this CLIP's towers; use at most {depth}.")
        prompt_learner = MultiModalPromptLearner(clip_model, classnames, opts.N_CTX, opts.CTX_INIT, opts.PROMPT_DEPTH)
        return MaPLeModel(clip_model, prompt_learner)
