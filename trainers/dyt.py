"""DyT, Dynamic Tuning (Zhao et al., NeurIPS 2024, arXiv 2403.11808) on a frozen timm ViT.

Every block of the ViT gets, from outside (timm's modules are reused, none is forked):

- a token dispatcher ``mlp_token_select.mlp_head`` (Linear(D, 1)) on the post-attention stream
  X1: a patch token goes through the block's frozen MLP only if its gate is on. Training draws the
  gate with a Gumbel-sigmoid (temperature TAU, hard straight-through); inference uses
  ``sigmoid(z) > 0.5``. The class token always takes the MLP;
- a parallel bottleneck adapter ``adaptmlp`` (down, ReLU, dropout, up, x scale) on X1 for every token:
  ``X_out = X1 + (gate * MLP(LN2(X1)) + Adapter(X1))``;
- and the model gets a new linear head. Everything loaded from the backbone file stays frozen.

The loss is the released (NeurIPS) code's: CE on the dynamic pass + TOKEN_LOSS_RATIO x
(mean gate - TOKEN_TARGET_RATIO)^2 + CE on the complete-model pass (every token through the MLP,
same weights) + KL(teacher.detach() || student). Inference really skips: the kept tokens of the
whole batch are gathered, the MLP runs on them only, and the results are scattered back.
FLOPs per image (torch's FlopCounterMode on that path, multiply-adds as fvcore counts them) and the
activation rate per layer go to results.json. Spec: shared/specs/dyt.md; README "## DyT".
TRAINER.DYT.LINEAR_PROBE is not DyT but its baseline on the same backbone: only the head trains.

Parameter names are the original's (``blocks.{i}.adaptmlp.down_proj.weight``,
``blocks.{i}.mlp_token_select.mlp_head.weight``, ``head.weight``), so the original's
``checkpoint-<E>.pth`` loads through MODEL.INIT_WEIGHTS, and our checkpoints (only the trained
tensors, folder ``dyt/``) use the same names.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import pickle
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

import clip
from clip.model import math_attention_is_faster
from engine import TRAINER_REGISTRY
from engine.backbone import Preprocess
from engine.checkpoint import UnsafeCheckpointError
from engine.config import CfgNode as CN
from engine.data.transforms import build_transform
from engine.errors import ConfigValueError, MissingFileError
from engine.optim import build_optimizer, check_update_in_backward
from trainers.backbones import build_timm_vit, explicit_attention, set_plain_attention, timm_preprocess_cfg
from trainers.base import ClipMethod, Loss, StepOutput
from trainers.common import autocast_context, autocast_dtype, make_grad_scaler

__all__ = ["Adapter", "DyT", "DyTOutput", "DyTSchedule", "DyTSettings", "DyTViT", "DynamicBlock",
           "MoEAdapter", "TokenDispatcher", "load_original_checkpoint"]

logger = logging.getLogger(__name__)

TRAINED_PARTS = ("adaptmlp", "mlp_token_select")  # per block; plus the head
MODES = ("dynamic", "complete", "skip")


@dataclass(frozen=True)
class DyTSettings:
    """The method's knobs (TRAINER.DYT.*), passed to the modules as arguments."""

    ffn_num: int = 16
    scale: float = 1.0
    dropout: float = 0.1
    tau: float = 5.0
    target_ratio: float = 0.5
    rate_weight: float = 2.0
    distill: bool = True
    adapter: str = "ffn"
    moe_experts: int = 4
    linear_probe: bool = False  # the baseline: every token through the MLP, only the head trains


class Draws(Protocol):
    """Where a training pass takes its random numbers (the default: torch's generator)."""

    def exponentials(self, pass_index: int, block: int, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]: ...

    def dropout_keep(self, pass_index: int, block: int, shape: torch.Size) -> torch.Tensor | None: ...


class TorchDraws:
    """Exp(1) samples from torch's generator; dropout left to F.dropout (None)."""

    def exponentials(self, pass_index: int, block: int, shape: torch.Size, device=None):
        return torch.empty(shape, device=device).exponential_(), torch.empty(shape, device=device).exponential_()

    def dropout_keep(self, pass_index: int, block: int, shape: torch.Size) -> torch.Tensor | None:
        return None


class TokenDispatcher(nn.Module):
    """One logit per patch token; the gate is 1 for the class token (token 0)."""

    def __init__(self, dim: int, tau: float) -> None:
        super().__init__()
        self.mlp_head = nn.Linear(dim, 1)
        self.tau = tau
        nn.init.trunc_normal_(self.mlp_head.weight, std=0.02)
        nn.init.zeros_(self.mlp_head.bias)

    def forward(self, x: torch.Tensor, draws: Draws | None, pass_index: int, block: int):
        """(gate [B, N, 1] with the class token's 1, patch-token logits z [B, N-1, 1])."""
        z = self.mlp_head(x[:, 1:])
        if self.training:
            e1, e2 = draws.exponentials(pass_index, block, z.shape) if draws else TorchDraws().exponentials(
                pass_index, block, z.shape, z.device)
            g1, g2 = -e1.to(z.device).log(), -e2.to(z.device).log()
            soft = torch.sigmoid((z + g1 - g2) / self.tau)
            hard = (soft > 0.5).to(soft.dtype)
            gate = hard - soft.detach() + soft  # forward: exactly 0/1; backward: d soft
        else:
            gate = (torch.sigmoid(z) > 0.5).to(z.dtype)
        cls = torch.ones_like(gate[:, :1])
        return torch.cat([cls, gate], dim=1), z


class Adapter(nn.Module):
    """AdaptFormer's parallel adapter without LayerNorm: up(dropout(relu(down(x)))) * scale."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.down_proj = nn.Linear(dim, bottleneck)
        self.up_proj = nn.Linear(bottleneck, dim)
        self.scale, self.dropout = scale, dropout
        # The original's "lora" init: the adapter starts as exactly 0.
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.bias)

    def drop(self, h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if keep is not None and self.training:  # a recorded dropout draw, applied as F.dropout does
            return h * (keep.to(h.dtype) / (1 - self.dropout))
        return F.dropout(h, self.dropout, self.training)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.up_proj(self.drop(F.relu(self.down_proj(x)), keep)) * self.scale


class MoEAdapter(Adapter):
    """The paper's MoE adapter (no released code; see README "## DyT"): N experts' down/up weights
    are mixed per image with softmax router weights computed from the image's mean token, so the
    cost stays that of one adapter. Expert 0 lives in down_proj/up_proj (the plain adapter's names)."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float, experts: int) -> None:
        super().__init__(dim, bottleneck, scale, dropout)
        extra = experts - 1
        self.down_experts = nn.Parameter(torch.empty(extra, bottleneck, dim))
        self.down_bias_experts = nn.Parameter(torch.zeros(extra, bottleneck))
        self.up_experts = nn.Parameter(torch.zeros(extra, dim, bottleneck))
        self.up_bias_experts = nn.Parameter(torch.zeros(extra, dim))
        for w in self.down_experts:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.router = nn.Linear(dim, experts)
        nn.init.zeros_(self.router.weight)  # uniform mixing at the start
        nn.init.zeros_(self.router.bias)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        alpha = self.router(x.mean(dim=1)).softmax(dim=-1)  # [B, N_experts]
        down_w = torch.cat([self.down_proj.weight[None], self.down_experts])
        down_b = torch.cat([self.down_proj.bias[None], self.down_bias_experts])
        up_w = torch.cat([self.up_proj.weight[None], self.up_experts])
        up_b = torch.cat([self.up_proj.bias[None], self.up_bias_experts])
        h = torch.einsum("bnd,bkd->bnk", x, torch.einsum("be,ekd->bkd", alpha, down_w)) + (alpha @ down_b)[:, None]
        h = self.drop(F.relu(h), keep)
        out = torch.einsum("bnk,bdk->bnd", h, torch.einsum("be,edk->bdk", alpha, up_w)) + (alpha @ up_b)[:, None]
        return out * self.scale


class DynamicBlock(nn.Module):
    """A timm ViT block's own modules (same names, no copies) + the dispatcher and the adapter."""

    def __init__(self, block: nn.Module, index: int, settings: DyTSettings) -> None:
        super().__init__()
        for name in ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"):
            setattr(self, name, getattr(block, name))
        dim = block.norm1.normalized_shape[0]
        self.index = index
        self.mlp_token_select = TokenDispatcher(dim, settings.tau)
        if settings.adapter == "moe":
            self.adaptmlp: Adapter = MoEAdapter(dim, settings.ffn_num, settings.scale, settings.dropout,
                                                settings.moe_experts)
        else:
            self.adaptmlp = Adapter(dim, settings.ffn_num, settings.scale, settings.dropout)

    def forward(self, x: torch.Tensor, mode: str, draws: Draws | None, pass_index: int):
        """(block output, gate [B, N] or None in complete mode, dispatcher logits [B, N-1] or None)."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        gate = z = None
        if mode != "complete":
            gate, z = self.mlp_token_select(x, draws, pass_index, self.index)
        keep = draws.dropout_keep(pass_index, self.index, x.shape[:2] + (self.adaptmlp.down_proj.out_features,)) \
            if draws is not None and self.training else None
        if mode == "skip":
            return self._skip_mlp_of_dropped_tokens(x, gate, keep), gate[..., 0], z[..., 0]
        if gate is not None and self.training and torch.is_grad_enabled():
            mlp_out = self._masked_mlp_graph_on_kept_tokens(x, gate) * gate
        else:
            mlp_out = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
            if gate is not None:
                mlp_out = mlp_out * gate
        x = x + (mlp_out + self.adaptmlp(x, keep))
        return x, None if gate is None else gate[..., 0], None if z is None else z[..., 0]

    def _masked_mlp_graph_on_kept_tokens(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """MLP(LN2(x)) for every token, as the original's training computes it, but with an autograd
        graph for the kept tokens only. A skipped token's straight-through gate is exactly 0 in the
        forward ((0 - s) + s), so the gradient the original propagates back through its MLP is
        exactly 0: skipping that backward changes no gradient and saves its time and activations.
        The skipped tokens' MLP values are still computed, without a graph: the gate's gradient
        needs them.

        What the graph saves is GELU's input of the kept rows and LN2's per-row statistics, nothing
        more: LN2 runs on all rows of x (whose storage the dispatcher and the adapter save anyway)
        rather than on a gathered copy of the kept rows, and the kept rows go in with index_put_,
        whose backward needs only the index (index_copy's would keep the kept rows' output too)."""
        flat = x.reshape(-1, x.shape[-1])
        on = gate.reshape(-1) != 0
        kept_index, skipped_index = on.nonzero().squeeze(1), (~on).nonzero().squeeze(1)
        normed = self.norm2(flat)  # row by row: the same values as on the gathered rows
        kept = self.mlp(normed.index_select(0, kept_index))
        with torch.no_grad():
            skipped = self.mlp(normed.index_select(0, skipped_index))
            out = torch.zeros(flat.shape, dtype=kept.dtype, device=flat.device).index_copy_(0, skipped_index, skipped)
        out = out.index_put_((kept_index,), kept).reshape(x.shape)
        return self.drop_path2(self.ls2(out))

    def _skip_mlp_of_dropped_tokens(self, x: torch.Tensor, gate: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Inference that really skips: the MLP runs on the kept tokens of the whole batch only
        (gathered), and its outputs are added into the adapter's output at their rows. The sum is
        the masked path's, term by term: a dropped row gets x + (0 + adapter) = x + adapter."""
        flat = x.reshape(-1, x.shape[-1])
        index = gate.reshape(-1).nonzero().squeeze(1)
        kept = self.ls2(self.mlp(self.norm2(flat.index_select(0, index))))
        update = self.adaptmlp(x, keep)
        update.view(-1, x.shape[-1]).index_add_(0, index, kept.to(update.dtype))
        return x + update


@dataclass
class DyTOutput:
    """Logits [B, C]; gates [B, L, N-1] of the patch tokens (straight-through values in training)
    and dispatcher logits [B, L, N-1]; both None for the complete model."""

    logits: torch.Tensor
    gates: torch.Tensor | None = None
    token_logits: torch.Tensor | None = None


@dataclass
class StepTrace:
    """What the last training step's passes gave besides the loss (for logging and tests)."""

    gates: torch.Tensor  # [B, L, N-1], the student's hard gates
    teacher_logits: torch.Tensor | None


@dataclass
class InferenceStats:
    """What the evaluation measured on the real-skipping path."""

    images: int = 0
    flops: int = 0  # torch's count: 2 per multiply-add
    kept_per_layer: torch.Tensor | None = None  # kept patch tokens per layer, summed over images
    patch_tokens: int = 0


class DyTViT(nn.Module):
    """A timm VisionTransformer whose blocks are `DynamicBlock`s; the state dict keeps the names of
    the ViT (and of the original DyT model). `training_step` is the released code's loss."""

    def __init__(self, vit: nn.Module, settings: DyTSettings) -> None:
        super().__init__()
        self.settings = settings
        vit.blocks = nn.Sequential(*(DynamicBlock(b, i, settings) for i, b in enumerate(vit.blocks)))
        self.vit = vit
        vit.requires_grad_(False)
        for block in vit.blocks:
            for part in TRAINED_PARTS:  # a linear probe keeps them frozen: the adapter's output stays 0
                getattr(block, part).requires_grad_(not settings.linear_probe)
        if isinstance(vit.head, nn.Linear):
            nn.init.trunc_normal_(vit.head.weight, std=0.01)
            nn.init.zeros_(vit.head.bias)
        vit.head.requires_grad_(True)
        self.real_skip = True
        self.stats: InferenceStats | None = None
        self.last_step: StepTrace | None = None
        self.eval()  # new modules start in train mode; inference must not draw Gumbel noise

    def trained_state(self) -> "TrainedParts":
        """The trained modules under the original's names (kept outside the module tree, so the
        model's own state dict does not list them twice)."""
        if "_trained" not in self.__dict__:
            self.__dict__["_trained"] = TrainedParts(self.vit)
        return self.__dict__["_trained"]

    # ---- the parts of trainers.base.MethodModel's interface the engine and benchmarks use
    trains_on_image_prefix = False
    text_depends_on_image = False

    def learnable_modules(self) -> dict[str, nn.Module]:
        """Checkpoint folder name -> module."""
        return {"dyt": self.trained_state()}

    def prepare_training(self) -> None:
        """Nothing to prepare before an epoch."""

    def run(self, images: torch.Tensor, mode: str, draws: Draws | None = None, pass_index: int = 0) -> DyTOutput:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if self.settings.linear_probe:
            mode = "complete"
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        gates, logits = [], []
        for block in vit.blocks:
            x, gate, z = block(x, mode, draws, pass_index)
            gates.append(gate)
            logits.append(z)
        out = vit.forward_head(vit.norm(x))
        if mode == "complete":
            return DyTOutput(out)
        return DyTOutput(out, torch.stack(gates, 1)[..., 1:], torch.stack(logits, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.run(images, "dynamic").logits
        mode = "skip" if self.real_skip else "dynamic"
        if self.stats is None:
            return self.run(images, mode).logits
        with explicit_attention(self.vit), FlopCounterMode(display=False) as counter:
            out = self.run(images, mode)
        if out.gates is None:  # a linear probe: every patch token through every MLP
            patches = self.vit.patch_embed.num_patches
            kept = torch.full((len(self.vit.blocks),), float(images.shape[0] * patches), dtype=torch.float64)
        else:
            patches = out.gates.shape[2]
            kept = out.gates.sum(dim=(0, 2)).double().cpu()
        s = self.stats
        s.images += images.shape[0]
        s.flops += counter.get_total_flops()
        s.kept_per_layer = kept if s.kept_per_layer is None else s.kept_per_layer + kept
        s.patch_tokens = patches
        return out.logits

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, draws: Draws | None = None) -> StepOutput:
        st = self.settings
        if st.linear_probe:
            logits = self.run(images, "complete").logits
            return StepOutput(Loss(F.cross_entropy(logits, labels), {}), logits, labels)
        student = self.run(images, "dynamic", draws, pass_index=0)
        rate = student.gates.mean()
        regularisers = {"token_loss": st.rate_weight * (rate - st.target_ratio) ** 2}
        if st.distill:
            teacher = self.run(images, "complete", draws, pass_index=1).logits
            regularisers["teacher_loss"] = F.cross_entropy(teacher, labels)
            regularisers["distillation_loss"] = F.kl_div(
                F.log_softmax(student.logits, dim=-1), F.log_softmax(teacher.detach(), dim=-1),
                log_target=True, reduction="batchmean")
        loss = Loss(F.cross_entropy(student.logits, labels), regularisers)
        self.last_step = StepTrace(student.gates.detach(), teacher.detach() if st.distill else None)
        return StepOutput(loss, student.logits, labels, metrics={"activation_rate": rate.item()})


class TrainedParts(nn.Module):
    """A view (no copies) of the trained modules under the original's names: what is saved."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({part: getattr(b, part) for part in TRAINED_PARTS}) for b in vit.blocks)
        self.head = vit.head


class DyTSchedule(LRScheduler):
    """The original's `adjust_learning_rate`, per step: ep = step / steps_per_epoch; linear warm-up
    from 0 for `warmup` epochs, then a half cosine from the LR to `min_lr` at `epochs`."""

    def __init__(self, optimizer, steps_per_epoch: int, epochs: int, warmup: int, min_lr: float) -> None:
        self.steps_per_epoch, self.epochs, self.warmup, self.min_lr = steps_per_epoch, epochs, warmup, min_lr
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        ep = self.last_epoch / self.steps_per_epoch
        if ep < self.warmup:
            return [lr * ep / self.warmup for lr in self.base_lrs]
        progress = (ep - self.warmup) / max(self.epochs - self.warmup, 1e-12)
        return [self.min_lr + (lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)) for lr in self.base_lrs]


def load_original_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The state dict of the original's ``checkpoint-<E>.pth`` (model, optimizer, epoch, scaler,
    args), read with weights_only=True; the only class allowed is argparse.Namespace (its `args`).
    Also accepts our ``{"state_dict": ...}`` files and bare state dicts."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise MissingFileError(f"MODEL.INIT_WEIGHTS: checkpoint not found: {path}") from None
        except pickle.UnpicklingError as error:
            raise UnsafeCheckpointError(
                f"Refusing to load {path}: it needs more than tensors, plain containers and argparse.Namespace "
                f"(the original DyT checkpoint's `args`): {error}") from error
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


@TRAINER_REGISTRY.register()
class DyT(ClipMethod):
    """Dynamic Tuning on a timm ViT. Not a CLIP method: it reuses ClipMethod's precision handling,
    optimisation step and evaluation hooks, and builds its own model (`build_model`)."""

    precision_key = "TRAINER.DYT.PREC"
    recipe = "DyT/vit_b16_vtab"
    backbone_kind = "timm_vit"  # MODEL.BACKBONE.NAME is a weights file of TRAINER.DYT.ARCH
    arch_key = "TRAINER.DYT.ARCH"

    @staticmethod
    def extend_cfg(cfg) -> None:
        d = cfg.TRAINER.DYT = CN()
        d.ARCH = "vit_base_patch16_224.orig_in21k"  # timm name (the jx in21k weights); the file: MODEL.BACKBONE.NAME
        d.PREC = "amp"  # the original trains under fp16 autocast with a GradScaler
        d.FFN_NUM = 16  # --ffn_num: train_vtab.sh's 16 (the argparse default is 8)
        d.SCALE = 1.0  # adapter output scale (main_vtab sets args.scale = 1)
        d.ADAPTER_DROPOUT = 0.1
        d.ADAPTER = "ffn"  # "ffn" (the released code) or "moe" (the paper's MoE adapter)
        d.MOE_EXPERTS = 4
        d.TOKEN_TARGET_RATIO = 0.5  # --token_target_ratio r
        d.TOKEN_LOSS_RATIO = 2.0  # weight of (mean gate - r)^2 (select_config.token_ratio)
        d.TAU = 5.0  # Gumbel-sigmoid temperature (TokenSelect)
        d.DISTILL = True  # complete-model CE + KL (NeurIPS code); False: the March 2024 loss
        d.DROP_PATH = 0.0  # --drop_path
        d.MIN_LR = 1e-5  # --min_lr: end of the half cosine
        d.REAL_SKIP = True  # inference gathers the kept tokens (False: MLP on all, output x gate)
        d.LINEAR_PROBE = False  # not DyT: the same frozen backbone with only the head trained (a baseline)
        d.EVAL_FREQ = 1  # --eval_freq: test every N epochs; results.json gets the best (what DyT reports); 0: off
        # The original's recipe is the default (configs/trainers/DyT/vit_b16_vtab.yaml says the same).
        # Its LR schedule is always DyTSchedule: OPTIM.LR_SCHEDULER is not read.
        cfg.OPTIM.NAME = "adamw"
        cfg.OPTIM.LR = 1e-3
        cfg.OPTIM.WEIGHT_DECAY = 1e-4
        cfg.OPTIM.MAX_EPOCH = 100
        cfg.OPTIM.WARMUP_EPOCH = 10
        cfg.OPTIM.LR_SCHEDULER = "cosine"
        cfg.OPTIM.LR_STEP_UNIT = "iteration"
        cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 64
        cfg.INPUT.TRANSFORMS = ("normalize",)

    @classmethod
    def check_cfg(cls, cfg) -> None:
        check_update_in_backward(cfg.OPTIM)
        d = cfg.TRAINER.DYT
        if d.PREC not in ("amp", "fp32"):
            raise ConfigValueError(f"TRAINER.DYT.PREC must be 'amp' (fp16 autocast on CUDA, as the original) or "
                                   f"'fp32', got {d.PREC!r}")
        if d.ADAPTER not in ("ffn", "moe"):
            raise ConfigValueError(f"TRAINER.DYT.ADAPTER must be 'ffn' or 'moe', got {d.ADAPTER!r}")
        if d.FFN_NUM < 1 or (d.ADAPTER == "moe" and d.MOE_EXPERTS < 1):
            raise ConfigValueError("TRAINER.DYT.FFN_NUM and TRAINER.DYT.MOE_EXPERTS must be >= 1")
        if not 0 <= d.ADAPTER_DROPOUT < 1:
            raise ConfigValueError(f"TRAINER.DYT.ADAPTER_DROPOUT must be in [0, 1), got {d.ADAPTER_DROPOUT}")
        path = _backbone_file(cfg.MODEL.BACKBONE.NAME)
        if not os.path.isfile(os.path.expanduser(path)):
            raise MissingFileError(
                f"MODEL.BACKBONE.NAME: ViT weights file not found: {path}. DyT needs the weights of "
                f"TRAINER.DYT.ARCH={d.ARCH} (for vit_base_patch16_224.orig_in21k: the original Google ImageNet-21k "
                "ViT-B/16, jx_vit_base_patch16_224_in21k-e5005f0a.pth or ViT-B_16.npz); see README.md#dyt.")

    @classmethod
    def backbone_preprocess(cls, cfg) -> Preprocess:
        """Mean, std and interpolation of the ARCH's weights; the size is INPUT.SIZE (timm resamples
        the position embedding to it)."""
        pre = timm_preprocess_cfg(cfg.TRAINER.DYT.ARCH)
        return Preprocess(tuple(cfg.INPUT.SIZE), tuple(pre["mean"]), tuple(pre["std"]), pre["interpolation"])

    @staticmethod
    def settings(cfg) -> DyTSettings:
        d = cfg.TRAINER.DYT
        return DyTSettings(d.FFN_NUM, float(d.SCALE), float(d.ADAPTER_DROPOUT), float(d.TAU),
                           float(d.TOKEN_TARGET_RATIO), float(d.TOKEN_LOSS_RATIO), bool(d.DISTILL), d.ADAPTER,
                           d.MOE_EXPERTS, bool(d.LINEAR_PROBE))

    def autocast(self):
        """PREC amp as the original: fp16 autocast on CUDA; on a CPU the original's autocast and
        GradScaler switch themselves off, so amp runs in fp32 there. Fast mode (TRAIN.FAST_MODE):
        autocast on either device, bf16 on CPU, as every method's."""
        if self.fast_mode(self.cfg):
            return autocast_context("amp", self.device)
        if self.precision(self.cfg) == "amp" and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ data
    def build_data_loader(self) -> None:
        """The original's data: test images resized straight to INPUT.SIZE (no centre crop), and
        every training image used each epoch (no drop_last: 1000 images at 64 make 16 steps)."""
        super().build_data_loader()
        direct = build_transform(self.cfg, is_train=True, choices=[c for c in self.cfg.INPUT.TRANSFORMS
                                                                   if c in ("normalize", "instance_norm")])
        for name in ("val_loader", "test_loader"):
            loader = getattr(self, name)
            if loader is not None:
                loader.dataset.transform = direct
        x = self.train_loader_x
        self.train_loader_x = DataLoader(x.dataset, batch_size=x.batch_size, sampler=x.sampler,
                                         num_workers=x.num_workers, drop_last=False, pin_memory=x.pin_memory)
        self.dm.train_loader_x = self.train_loader_x

    def head_size(self) -> int:
        """VTAB: the task's class count (the head does not depend on which labels occur)."""
        from datasets.vtab import VTAB_TASKS

        task = getattr(self.dm.dataset, "task", None)
        return max(VTAB_TASKS[task][0], self.num_classes) if task in VTAB_TASKS else self.num_classes

    # ------------------------------------------------------------------ model
    def build_model(self) -> None:
        cfg = self.cfg
        d = cfg.TRAINER.DYT
        logger.info("Loading timm %s from %s", d.ARCH, cfg.MODEL.BACKBONE.NAME)
        vit = build_timm_vit(d.ARCH, _backbone_file(cfg.MODEL.BACKBONE.NAME), num_classes=self.head_size(),
                             img_size=tuple(cfg.INPUT.SIZE), drop_path_rate=d.DROP_PATH)
        self.model = DyTViT(vit, self.settings(cfg))
        self.model.real_skip = bool(d.REAL_SKIP)
        trained = self.model.trained_state()
        if cfg.MODEL.INIT_WEIGHTS:
            self.load_init_weights(cfg.MODEL.INIT_WEIGHTS)
        self.model.to(self.device)
        # Fast mode autocasts to bf16 on a CPU, where plain attention ops beat the fused kernel.
        set_plain_attention(self.model.vit, self.fast_mode(cfg)
                            and math_attention_is_faster(autocast_dtype(self.device), self.device))
        self.scaler = make_grad_scaler(self.precision(cfg), self.device, self.fast_mode(cfg))
        n = sum(p.numel() for p in trained.parameters())
        logger.info("Trainable: %d tensors, %d values (adapters, dispatchers, head)", len(trained.state_dict()), n)
        optim_cfg = cfg.OPTIM.clone()
        optim_cfg.defrost()
        optim_cfg.STAGED_LR = False
        self.optim = build_optimizer(None, optim_cfg, param_groups=[{"params": list(trained.parameters())}])
        steps = max(1, len(self.train_loader_x)) if cfg.OPTIM.LR_STEP_UNIT == "iteration" else 1
        self.sched = DyTSchedule(self.optim, steps, cfg.OPTIM.MAX_EPOCH, max(cfg.OPTIM.WARMUP_EPOCH, 0), d.MIN_LR)
        self.sched.step_unit = cfg.OPTIM.LR_STEP_UNIT
        self.register_model("dyt", trained, self.optim, self.sched)

    def load_init_weights(self, path: str) -> None:
        """The original's checkpoint (full model) or a state dict of the trained tensors."""
        state = load_original_checkpoint(path)
        own = self.model.vit.state_dict()
        full = all(k in state for k in own)
        target = self.model.vit if full else self.model.trained_state()
        expected = target.state_dict()
        missing = [k for k in expected if k not in state]
        misshapen = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                     if k in state and state[k].shape != v.shape]
        if missing or misshapen:
            raise ConfigValueError(
                f"MODEL.INIT_WEIGHTS {path} does not fit this DyT model: missing {missing[:4]}, other shapes "
                f"{misshapen[:4]}. Check TRAINER.DYT.FFN_NUM / ADAPTER, TRAINER.DYT.ARCH and the dataset's classes.")
        target.load_state_dict({k: state[k] for k in expected})
        logger.info("Loaded %s from %s", "the whole model" if full else "the trained tensors", path)

    def set_model_mode(self, mode: str = "train", names=None) -> None:
        super().set_model_mode(mode, names)
        self.model.train(mode == "train")

    # ------------------------------------------------------------------ evaluation
    def after_epoch(self) -> None:
        """The original tests every EVAL_FREQ epochs and reports the best test accuracy; the last
        epoch is tested by the run's closing test. Done before the resume point is written."""
        freq, finished = self.cfg.TRAINER.DYT.EVAL_FREQ, self.epoch + 1
        if freq > 0 and finished % freq == 0 and finished < self.max_epoch and not self.cfg.TEST.NO_TEST:
            self.epoch_accuracy[finished] = float(self.test())
        super().after_epoch()

    @property
    def epoch_accuracy(self) -> dict[int, float]:
        if "_epoch_accuracy" not in self.__dict__:
            self._epoch_accuracy: dict[int, float] = {}
        return self._epoch_accuracy

    def resume_state(self) -> dict:
        return {**super().resume_state(), "epoch_accuracy": dict(self.epoch_accuracy)}

    def load_resume_state(self, state) -> None:
        super().load_resume_state(state)
        self.epoch_accuracy.update({int(k): float(v) for k, v in (state.get("epoch_accuracy") or {}).items()})

    def test(self, split: str | None = None) -> float:
        self.model.stats = InferenceStats()
        try:
            return super().test(split)
        finally:
            self.last_stats, self.model.stats = self.model.stats, None

    @torch.no_grad()
    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(images).float()

    def extra_results(self) -> dict:
        s = getattr(self, "last_stats", None)
        if s is None or not s.images:
            return {}
        per_layer = (s.kept_per_layer / (s.images * s.patch_tokens)).tolist()
        by_epoch = dict(self.epoch_accuracy)
        if self.finished_epochs and self.last_test is not None and self.last_test["split"] == "test":
            by_epoch[self.finished_epochs] = float(self.last_test["results"]["accuracy"])
        best = max(by_epoch.items(), key=lambda kv: (kv[1], kv[0])) if by_epoch else None
        return {
            # The original's number: the best test accuracy over the tested epochs (>= keeps the later).
            "best_epoch_accuracy": best[1] if best else None,
            "best_epoch": best[0] if best else None,
            "accuracy_by_epoch": {str(k): v for k, v in sorted(by_epoch.items())},
            # fvcore's convention (one multiply-add = 1), as the original's FLOPs table.
            "gflops_per_image": s.flops / 2 / s.images / 1e9,
            "flops_counter": "torch FlopCounterMode on the real-skipping path (REAL_SKIP), multiply-adds",
            "activation_rate": sum(per_layer) / len(per_layer),
            "activation_rate_per_layer": per_layer,
        }


def _backbone_file(name: str) -> str:
    """MODEL.BACKBONE.NAME: the ViT weights file, or the name of a CLIP file registered with
    clip.register_local_model (`demo`: the demo CLIP, whose image tower timm's filter converts)."""
    if not name:
        raise ConfigValueError("MODEL.BACKBONE.NAME is empty: give the path of the ViT weights file "
                               "(e.g. jx_vit_base_patch16_224_in21k-e5005f0a.pth).")
    if name in clip.MODEL_FILES or os.path.isfile(os.path.expanduser(name)):
        return name
    try:
        return clip.resolve_checkpoint(name)
    except clip.CheckpointError:
        return name  # check_cfg reports the missing file
