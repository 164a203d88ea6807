"""Optimizers and LR schedulers built from ``cfg.OPTIM`` (Dassl's `build_optimizer`/`build_lr_scheduler`).

The scheduler is stepped once per epoch, after the epoch's last batch. With ``WARMUP_EPOCH > 0``
the base scheduler is wrapped in a warm-up scheduler that runs the first epochs at a constant
(or linearly growing) LR and then hands over to the base scheduler (its `successor`).

Deviation from Dassl (recommended by the spec): the warm-up scheduler's `state_dict()` stores the
successor's own state dict under ``"successor_state"`` instead of pickling the successor object
(which drags a copy of the optimizer along, needs ``weights_only=False`` to load, and after a
resume would leave the live optimizer's LR frozen). Legacy Dassl state dicts are still accepted.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from typing import Any, Iterable, Iterator

import torch
import torch.nn as nn
from engine.errors import ConfigValueError
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, StepLR

__all__ = [
    "AVAILABLE_OPTIMIZERS",
    "AVAILABLE_LR_SCHEDULERS",
    "build_optimizer",
    "build_lr_scheduler",
    "ConstantWarmupScheduler",
    "LinearWarmupScheduler",
    "UpdateInBackward",
    "build_update_in_backward",
    "check_update_in_backward",
]

logger = logging.getLogger(__name__)

AVAILABLE_OPTIMIZERS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]
AVAILABLE_LR_SCHEDULERS = ["single_step", "multi_step", "cosine"]


def all_fp32_cpu(param_groups: list) -> bool:
    """Whether every parameter is an fp32 CPU tensor: there torch's fused SGD kernel (one pass over
    parameter, gradient and momentum instead of four) does the same roundings as the per-tensor loop
    that is CPU's default. fp16 parameters are left to the loop: the fused kernel computes their update
    in fp32 and rounds once, which is not the original's pure-fp16 arithmetic."""
    params = [p for group in param_groups for p in (group["params"] if isinstance(group, dict) else [group])]
    return bool(params) and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)


def build_optimizer(
    model_or_params: nn.Module | Iterable[Any],
    optim_cfg: Any,
    param_groups: list[dict] | None = None,
) -> torch.optim.Optimizer:
    """Build the optimizer named by ``optim_cfg.NAME`` (one of `AVAILABLE_OPTIMIZERS`).

    Parameters, in order of precedence: explicit `param_groups`; with ``STAGED_LR`` the model's
    direct children named in ``NEW_LAYERS`` at the base LR and all other children at
    ``LR * BASE_LR_MULT``; otherwise all of the model's parameters (or the iterable passed in).
    """
    name = optim_cfg.NAME
    lr = optim_cfg.LR
    weight_decay = optim_cfg.WEIGHT_DECAY
    momentum = optim_cfg.MOMENTUM
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    staged_lr = optim_cfg.STAGED_LR
    new_layers = optim_cfg.NEW_LAYERS

    if name not in AVAILABLE_OPTIMIZERS:
        raise ConfigValueError(f"Unknown optimizer OPTIM.NAME={name!r}; expected one of {AVAILABLE_OPTIMIZERS}.")

    if param_groups is not None and staged_lr:
        warnings.warn(
            "OPTIM.STAGED_LR is ignored because build_optimizer() was given explicit param_groups.",
            stacklevel=2,
        )

    if param_groups is None:
        if staged_lr:
            if not isinstance(model_or_params, nn.Module):
                raise TypeError(
                    "OPTIM.STAGED_LR=True needs an nn.Module (its direct children are split into "
                    f"base and new layers), got {type(model_or_params).__name__}."
                )
            model = model_or_params.module if isinstance(model_or_params, nn.DataParallel) else model_or_params
            if isinstance(new_layers, str):
                new_layers = [new_layers]
            if not new_layers:
                warnings.warn("OPTIM.STAGED_LR=True but OPTIM.NEW_LAYERS is empty: every layer gets the reduced LR.", stacklevel=2)
            children = dict(model.named_children())
            missing = [n for n in new_layers if n not in children]
            if missing:
                raise ConfigValueError(
                    f"OPTIM.NEW_LAYERS names {missing}, which are not direct children of the model "
                    f"(children: {list(children)})."
                )
            base_params, new_params = [], []
            for child_name, module in children.items():
                (new_params if child_name in new_layers else base_params).extend(module.parameters())
            param_groups = [
                {"params": base_params, "lr": lr * optim_cfg.BASE_LR_MULT},
                {"params": new_params},
            ]
        elif isinstance(model_or_params, nn.Module):
            param_groups = list(model_or_params.parameters())
        else:
            param_groups = list(model_or_params)

    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "amsgrad":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas, amsgrad=True)
    if name == "sgd":
        return torch.optim.SGD(
            param_groups,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            dampening=optim_cfg.SGD_DAMPNING,
            nesterov=optim_cfg.SGD_NESTEROV,
            fused=True if all_fp32_cpu(param_groups) else None,
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, alpha=optim_cfg.RMSPROP_ALPHA
        )
    if name == "radam":
        # torch's RAdam stands in for the RAdam implementation bundled with Dassl.
        return torch.optim.RAdam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas)
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, betas=betas)


class _BaseWarmupScheduler(LRScheduler):
    """Runs its own warm-up LR for `warmup_epoch` steps, then forwards every step to `successor`.

    After warm-up its own `last_epoch` stays at `warmup_epoch` (as in Dassl); the successor's
    counter carries the position.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, successor: LRScheduler, warmup_epoch: int, last_epoch: int = -1) -> None:
        if successor.optimizer is not optimizer:
            raise ValueError("The warm-up scheduler and its successor must drive the same optimizer.")
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        raise NotImplementedError

    def step(self, epoch: int | None = None) -> None:  # noqa: D102 (same contract as torch)
        if epoch is not None:
            raise ValueError("Warm-up schedulers are stepped without an epoch argument (once per epoch).")
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step()
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step()

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state: the successor is stored as its own state dict, not as an object."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor_state"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from `state_dict()`, or from a legacy Dassl dict holding a pickled successor."""
        state = dict(state_dict)
        successor_state = state.pop("successor_state", None)
        legacy_successor = state.pop("successor", None)
        if successor_state is None and legacy_successor is not None:
            # Legacy Dassl format: the successor was pickled together with a *copy* of the
            # optimizer. Never adopt that object (stepping it would not change our optimizer);
            # read its plain counters into the live successor instead.
            if isinstance(legacy_successor, dict):
                successor_state = dict(legacy_successor)
            elif hasattr(legacy_successor, "__dict__"):
                if type(legacy_successor).__name__ != type(self.successor).__name__:
                    raise ConfigValueError(
                        f"Checkpoint scheduler was built on {type(legacy_successor).__name__} but this run uses "
                        f"{type(self.successor).__name__}; set OPTIM.LR_SCHEDULER as in the run that saved it."
                    )
                successor_state = {k: v for k, v in vars(legacy_successor).items() if k != "optimizer"}
            successor_state = successor_state or None
            if successor_state is not None:
                successor_state.pop("optimizer", None)
                logger.info("Loaded a legacy (Dassl-format) warm-up scheduler state; the successor is rebuilt from its counters.")
        if successor_state is None:
            # Nothing about the successor's position was saved: derive it from our own counter.
            # Before the end of warm-up the successor has not moved yet, so this is exact.
            if state.get("last_epoch", 0) >= state.get("warmup_epoch", self.warmup_epoch):
                logger.warning(
                    "Scheduler state has no successor information and warm-up is over; the base "
                    "scheduler restarts from its first post-warm-up epoch."
                )
        else:
            self.successor.load_state_dict(successor_state)
        self.__dict__.update(state)
        # Make the optimizer's LR agree with the restored position, so that loading the scheduler
        # alone (without the optimizer state) still continues the schedule correctly.
        last_lr = self.get_last_lr() if "_last_lr" in self.__dict__ else None
        if last_lr is not None and len(last_lr) == len(self.optimizer.param_groups):
            for group, lr in zip(self.optimizer.param_groups, last_lr):
                group["lr"] = lr


class ConstantWarmupScheduler(_BaseWarmupScheduler):
    """Warm-up at a constant `cons_lr` for `warmup_epoch` epochs."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        successor: LRScheduler,
        warmup_epoch: int,
        cons_lr: float,
        last_epoch: int = -1,
    ) -> None:
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(_BaseWarmupScheduler):
    """Warm-up growing linearly: `min_lr` at epoch 0, then ``base_lr * epoch / warmup_epoch``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        successor: LRScheduler,
        warmup_epoch: int,
        min_lr: float,
        last_epoch: int = -1,
    ) -> None:
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


STEP_UNITS = ("epoch", "iteration")


def lr_step_unit(scheduler: Any) -> str:
    """How often the training loop steps `scheduler`: "epoch" (Dassl) or "iteration"."""
    return getattr(scheduler, "step_unit", "epoch")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any, iters_per_epoch: int = 1) -> LRScheduler:
    """Build ``optim_cfg.LR_SCHEDULER`` (single_step, multi_step, cosine), wrapped in warm-up if asked.

    With ``OPTIM.LR_STEP_UNIT "epoch"`` (Dassl's) the engine steps it after each epoch's last
    batch. With ``"iteration"`` every length in epochs (MAX_EPOCH, STEPSIZE, WARMUP_EPOCH) is
    counted in iterations (x `iters_per_epoch`) and the engine steps it after every batch.
    """
    unit = optim_cfg.LR_STEP_UNIT
    if unit not in STEP_UNITS:
        raise ConfigValueError(f"OPTIM.LR_STEP_UNIT={unit!r}; expected one of {STEP_UNITS}.")
    scale = iters_per_epoch if unit == "iteration" else 1
    if scale < 1:
        raise ConfigValueError(f"build_lr_scheduler: iters_per_epoch must be >= 1, got {iters_per_epoch}.")
    scheduler = _build_scheduler(optimizer, optim_cfg, scale)
    scheduler.step_unit = unit
    return scheduler


def _build_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any, scale: int) -> LRScheduler:
    lr_scheduler = optim_cfg.LR_SCHEDULER
    stepsize = optim_cfg.STEPSIZE
    if isinstance(stepsize, (list, tuple)):
        stepsize = type(stepsize)(s * scale if s > 0 else s for s in stepsize)
    elif isinstance(stepsize, int) and stepsize > 0:
        stepsize *= scale
    gamma = optim_cfg.GAMMA
    max_epoch = optim_cfg.MAX_EPOCH * scale
    warmup = optim_cfg.WARMUP_EPOCH * scale if optim_cfg.WARMUP_EPOCH > 0 else optim_cfg.WARMUP_EPOCH

    if lr_scheduler not in AVAILABLE_LR_SCHEDULERS:
        raise ConfigValueError(
            f"Unknown LR scheduler OPTIM.LR_SCHEDULER={lr_scheduler!r}; expected one of {AVAILABLE_LR_SCHEDULERS}."
        )

    if lr_scheduler == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        if not isinstance(stepsize, int):
            raise TypeError(
                f"OPTIM.STEPSIZE for single_step must be an int (or a list ending in one), got {stepsize!r}."
            )
        if stepsize <= 0:
            stepsize = max_epoch
        scheduler: LRScheduler = StepLR(optimizer, step_size=stepsize, gamma=gamma)
    elif lr_scheduler == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise TypeError(f"OPTIM.STEPSIZE for multi_step must be a list of epochs, got {stepsize!r}.")
        scheduler = MultiStepLR(optimizer, milestones=list(stepsize), gamma=gamma)
    else:
        scheduler = CosineAnnealingLR(optimizer, T_max=float(max_epoch))

    if warmup > 0:
        if not optim_cfg.WARMUP_RECOUNT:
            # Dassl quirk: the base scheduler continues from WARMUP_EPOCH instead of restarting at 0.
            scheduler.last_epoch = warmup
        if optim_cfg.WARMUP_TYPE == "constant":
            scheduler = ConstantWarmupScheduler(optimizer, scheduler, warmup, optim_cfg.WARMUP_CONS_LR)
        elif optim_cfg.WARMUP_TYPE == "linear":
            scheduler = LinearWarmupScheduler(optimizer, scheduler, warmup, optim_cfg.WARMUP_MIN_LR)
        else:
            raise ConfigValueError(f"Unknown OPTIM.WARMUP_TYPE={optim_cfg.WARMUP_TYPE!r}; expected 'constant' or 'linear'.")
    return scheduler


UPDATE_IN_BACKWARD_CHOICES = ("auto", "always", "never")
AUTO_UPDATE_IN_BACKWARD_MB = 64.0  # below this, the gradients freed early save little


def check_update_in_backward(optim_cfg: Any) -> None:
    choice = optim_cfg.UPDATE_IN_BACKWARD
    if choice not in UPDATE_IN_BACKWARD_CHOICES:
        raise ConfigValueError(
            f"OPTIM.UPDATE_IN_BACKWARD={choice!r}; expected one of {list(UPDATE_IN_BACKWARD_CHOICES)}.")


def build_update_in_backward(optimizer: torch.optim.Optimizer | None, optim_cfg: Any) -> "UpdateInBackward | None":
    """``OPTIM.UPDATE_IN_BACKWARD``'s choice for this optimizer (None: update after backward)."""
    check_update_in_backward(optim_cfg)
    choice = optim_cfg.UPDATE_IN_BACKWARD
    if optimizer is None or choice == "never":
        return None
    update = UpdateInBackward(optimizer)
    if choice == "auto" and update.gradient_mb < AUTO_UPDATE_IN_BACKWARD_MB:
        update.remove()
        return None
    return update


class UpdateInBackward:
    """Applies `optimizer`'s update to its parameters during backward, bucket by bucket, and frees each
    bucket's gradients at once, so a step never holds every gradient (hundreds of MB when a whole
    tower is trained) at the same time.

    A bucket is a run of consecutive parameters of one param group, up to `bucket_mb` of gradients
    (the backward pass finishes them close together); it is updated by an optimizer of the run's
    class over just those parameters, with the group's hyperparameters copied in before every
    backward (so LR schedules apply) and the run's optimizer's own state (so checkpoints and resumes
    are unchanged). Exact: every optimizer here updates each element from its own gradient and state
    only, with the same kernel whichever parameters it is given. The run's `optimizer.step()` after
    backward then finds no gradient left and changes nothing. Only while `armed()`: a backward outside
    the optimisation step (a test, a probe) keeps its gradients."""

    def __init__(self, optimizer: torch.optim.Optimizer, bucket_mb: float = 32.0) -> None:
        self.optimizer = optimizer
        self.buckets: list[_GradientBucket] = []
        self._armed = False
        self._hooks = []
        for index, group in enumerate(optimizer.param_groups):
            for params in _consecutive_runs([p for p in group["params"] if p.requires_grad], bucket_mb):
                self.buckets.append(_GradientBucket(_optimizer_like(optimizer, params), index, params))
        for bucket in self.buckets:
            for param in bucket.params:
                self._hooks.append(param.register_post_accumulate_grad_hook(self._gradient_ready(bucket)))

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @property
    def gradient_mb(self) -> float:
        return sum(bucket.gradient_mb for bucket in self.buckets)

    def _gradient_ready(self, bucket: "_GradientBucket"):
        def hook(param: torch.Tensor) -> None:
            if self._armed:
                bucket.gradient_ready(param)
        return hook

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """The backward run inside updates the parameters; buckets some of whose parameters got no
        gradient (unused this step) are updated at the end with the gradients they have."""
        for bucket in self.buckets:
            bucket.prepare(self.optimizer)
        self._armed = True
        try:
            yield
            for bucket in self.buckets:
                bucket.flush()
        finally:
            self._armed = False


class _GradientBucket:
    """Parameters updated together as soon as all their gradients are accumulated."""

    def __init__(self, optimizer: torch.optim.Optimizer, group_index: int, params: list[nn.Parameter]) -> None:
        self.optimizer = optimizer
        self.group_index = group_index
        self.params = params
        self.gradient_mb = sum(p.numel() * p.element_size() for p in params) / 2**20
        self.ready: set[int] = set()
        self.updated = False

    def prepare(self, run_optimizer: torch.optim.Optimizer) -> None:
        # Looked up at every step: loading a resume point replaces the run's state and group dicts.
        self.optimizer.state = run_optimizer.state
        group = run_optimizer.param_groups[self.group_index]
        self.optimizer.param_groups[0].update({k: v for k, v in group.items() if k != "params"})
        self.ready.clear()
        self.updated = False

    def gradient_ready(self, param: torch.Tensor) -> None:
        if self.updated or id(param) in self.ready:
            # A second accumulation into an updated parameter (e.g. a reentrant checkpoint's separate
            # backward) would be applied without the first: stop rather than train on it.
            raise RuntimeError("A gradient was accumulated twice in one backward pass; set "
                               "OPTIM.UPDATE_IN_BACKWARD never for this method.")
        self.ready.add(id(param))
        if len(self.ready) == len(self.params):
            self.flush()

    def flush(self) -> None:
        if self.updated:
            return
        self.optimizer.step()  # parameters without a gradient are skipped, as by the run's optimizer
        for param in self.params:
            param.grad = None
        self.updated = True


def _consecutive_runs(params: list[nn.Parameter], bucket_mb: float) -> list[list[nn.Parameter]]:
    runs: list[list[nn.Parameter]] = []
    size = 0.0
    for param in params:
        mb = param.numel() * param.element_size() / 2**20
        if not runs or size + mb > bucket_mb:
            runs.append([])
            size = 0.0
        runs[-1].append(param)
        size += mb
    return runs


def _optimizer_like(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """An optimizer of `optimizer`'s class and settings over `params` (the group's hyperparameters are
    copied in before each use)."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    return type(optimizer)(params, **{k: v for k, v in optimizer.defaults.items() if k in accepted})
