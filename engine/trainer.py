"""Trainer lifecycle with Dassl's public names (TrainerBase -> SimpleTrainer -> TrainerX).

A method subclasses `TrainerX`, implements `build_model` and `forward_backward`, and registers the
modules it trains with `register_model`. Only registered modules are switched between train and eval
mode, so frozen CLIP towers (and their BatchNorm statistics) stay in eval mode.

Beyond Dassl: checkpoints carry the RNG state so that a resumed run is bit-identical to an
uninterrupted one on CPU, a non-finite loss stops the run with the epoch and step, the first
training steps are measured, extrapolated and checked against the memory (engine/preflight.py), and
every run writes `results.json` (accuracy and cost) and optionally `predictions.npz`.
"""
from __future__ import annotations

import contextlib
import datetime
import fnmatch
import logging
import os
import resource
import sys
import tempfile
import time
from collections import OrderedDict
from typing import Any, Iterable, Mapping, Sized

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from engine.backbone import Preprocess
from engine.checkpoint import load_checkpoint, save_checkpoint, write_loadable
from engine.memory import memory_in_use_mb, peak_memory_mb, reset_peak_memory
from engine.preflight import (
    OUT_OF_MEMORY_ERRORS,
    MemoryShortfall,
    PreflightProbe,
    eval_warning,
    fit_error,
    fixed_step_memory_mb,
    memory_capacity,
    out_of_memory_error,
    summary_line,
)
from engine.layout import (
    BEST_CHECKPOINT_NAME, POINTER_NAME, PREFLIGHT_NAME, RESUME_POINT_NAME, checkpoint_name, parse_checkpoint_epoch,
)
from engine.data import DataManager
from engine.errors import ConfigValueError, MissingFileError, UserError
from engine.evaluation import build_evaluator
from engine.optim import UpdateInBackward, build_update_in_backward, check_update_in_backward, lr_step_unit
from engine.registry import Registry
from engine.utils import (
    AverageMeter,
    MetricMeter,
    get_rng_state,
    mkdir_if_missing,
    read_json,
    set_rng_state,
    write_json,
)

logger = logging.getLogger(__name__)

TRAINER_REGISTRY = Registry("TRAINER")


class CheckpointMismatchError(UserError, RuntimeError):
    """A checkpoint whose tensors do not fit the model (another trainer, backbone or prompt setting)."""


def build_trainer(cfg) -> "TrainerBase":
    """Instantiate the trainer named by `cfg.TRAINER.NAME`."""
    name = cfg.TRAINER.NAME
    if not name:
        raise ConfigValueError(
            "No trainer given: pass --trainer NAME (one of: "
            + ", ".join(sorted(TRAINER_REGISTRY.registered_names()))
            + ")."
        )
    trainer_cls = TRAINER_REGISTRY.get(name)
    logger.info("Loading trainer: %s", name)
    return trainer_cls(cfg)


def progress_bars_enabled() -> bool:
    """tqdm bars only on an interactive terminal, never under CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def select_device(cfg) -> torch.device:
    """cuda when available and allowed by `USE_CUDA`, otherwise cpu.

    A run that asks for GPUs (USE_CUDA True and CUDA_VISIBLE_DEVICES naming devices) on a machine
    where torch sees none is a user error, not a silent and much slower CPU run. Without
    CUDA_VISIBLE_DEVICES, USE_CUDA True (the default) means "use a GPU if there is one".
    """
    if cfg.USE_CUDA and torch.cuda.is_available():
        return torch.device("cuda")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cfg.USE_CUDA and visible not in (None, "", "-1"):
        raise ConfigValueError(
            f"CUDA_VISIBLE_DEVICES={visible} asks for GPU(s), but torch sees no usable CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): a wrong GPU id, a driver problem or a "
            "CPU-only torch. Check `nvidia-smi` and the GPU ids; to run on the CPU, unset CUDA_VISIBLE_DEVICES "
            "or pass USE_CUDA False."
        )
    logger.info("Device: cpu")
    return torch.device("cpu")



class TrainerBase:
    """Registry of trained modules, the epoch loop and checkpoint I/O."""

    def __init__(self) -> None:
        self._models: "OrderedDict[str, nn.Module]" = OrderedDict()
        self._optims: "OrderedDict[str, Any]" = OrderedDict()
        self._scheds: "OrderedDict[str, Any]" = OrderedDict()
        # Optimizers whose update runs during backward (engine.optim.UpdateInBackward), by model name.
        self._updates_in_backward: dict[str, UpdateInBackward] = {}
        self._writer = None
        # fnmatch patterns of saved keys a trainer rebuilds itself (CoOp's class-name buffers) or that
        # do not apply to the current classes: not loaded, and not required.
        self.checkpoint_skip_patterns: tuple[str, ...] = ()

    # ----------------------------------------------------------------- registration
    def register_model(self, name: str = "model", model: nn.Module | None = None, optim=None, sched=None) -> None:
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if name in self._models:
            raise KeyError(f"Model name '{name}' is already registered")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names: str | Iterable[str] | None = None) -> list[str]:
        all_names = list(self._models.keys())
        if names is None:
            return all_names
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name not in all_names:
                raise KeyError(f"Unknown registered model '{name}' (registered: {all_names})")
        return names

    # ----------------------------------------------------------------- checkpoints
    def save_model(self, epoch: int, directory: str, is_best: bool = False, val_result=None, model_name: str = "") -> None:
        rng_state = get_rng_state()
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            state = {
                "state_dict": self._models[name].state_dict(),
                "epoch": epoch + 1,
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "val_result": val_result,
                # Not in Dassl: what a resumed run needs to continue bit-identically.
                "rng_state": rng_state,
            }
            save_checkpoint(state, os.path.join(directory, name), is_best=is_best, model_name=model_name)

    def resume_model_if_exist(self, directory: str) -> int:
        """Restore the newest saved state in `directory`; return the next epoch (0: nothing to resume).

        Two kinds of state may be there: the rolling resume point (`RESUME_POINT_NAME`, written
        after every finished epoch) and the Dassl checkpoints of each registered model
        (`<name>/checkpoint` naming `model.pth.tar-<E>`, written every TRAIN.CHECKPOINT_FREQ epochs
        and at the end). The one with more finished epochs wins.
        """
        names = self.get_model_names()
        point_path = os.path.join(directory, RESUME_POINT_NAME)
        point = load_checkpoint(point_path) if names and os.path.isfile(point_path) else None
        regular = self._regular_checkpoint_epoch(directory, names)
        if point is not None and (regular is None or int(point["epoch"]) >= regular):
            return self._restore_resume_point(point, point_path)
        if regular is None:
            logger.info("No checkpoint found, train from scratch")
            return 0
        start_epoch = 0
        for name in names:
            fdir = os.path.join(directory, name)
            with open(os.path.join(fdir, POINTER_NAME)) as f:
                fname = f.readline().strip()
            fpath = os.path.join(fdir, fname)
            logger.info("Resume %s from %s", name, fpath)
            checkpoint = load_checkpoint(fpath)
            self._restore_model_state(name, checkpoint)
            if checkpoint.get("rng_state") is not None:
                set_rng_state(checkpoint["rng_state"])
            start_epoch = int(checkpoint["epoch"])
            logger.info("Previous epoch: %d", start_epoch)
        return start_epoch

    @staticmethod
    def _regular_checkpoint_epoch(directory: str, names: list[str]) -> int | None:
        """Finished epochs of the Dassl checkpoints all registered models point at (None: not all have one)."""
        if not names or not all(os.path.isfile(os.path.join(directory, n, POINTER_NAME)) for n in names):
            return None
        epochs = []
        for name in names:
            with open(os.path.join(directory, name, POINTER_NAME)) as f:
                fname = f.readline().strip()
            parsed = parse_checkpoint_epoch(fname)
            if parsed is None:  # model-best.pth.tar: its epoch is inside
                parsed = int(load_checkpoint(os.path.join(directory, name, fname))["epoch"])
            epochs.append(parsed)
        return min(epochs)

    def _restore_model_state(self, name: str, state: Mapping[str, Any]) -> None:
        self._models[name].load_state_dict(state["state_dict"])
        if self._optims[name] is not None and state.get("optimizer") is not None:
            self._optims[name].load_state_dict(state["optimizer"])
        if self._scheds[name] is not None and state.get("scheduler") is not None:
            self._scheds[name].load_state_dict(state["scheduler"])

    def _restore_resume_point(self, point: Mapping[str, Any], path: str) -> int:
        missing = [n for n in self.get_model_names() if n not in point["models"]]
        if missing:
            raise ConfigValueError(
                f"The resume point {path} has no state for {missing} (it holds {sorted(point['models'])}): it was "
                "written by another trainer or configuration. Use a new --output-dir, or delete the file to "
                "resume from the regular checkpoints."
            )
        for name in self.get_model_names():
            self._restore_model_state(name, point["models"][name])
        self.load_resume_state(point.get("trainer_state") or {})
        set_rng_state(point["rng_state"])
        epoch = int(point["epoch"])
        logger.info("Resumed from %s: %d epoch(s) finished, continuing with epoch %d", path, epoch, epoch + 1)
        logger.info("Previous epoch: %d", epoch)
        return epoch

    def save_resume_point(self, directory: str, finished_epochs: int) -> str:
        """Write the state after `finished_epochs` epochs to `directory/RESUME_POINT_NAME` (atomically,
        replacing the previous one): what a rerun needs to continue bit-identically."""
        models = {}
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            models[name] = {
                "state_dict": self._models[name].state_dict(),
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
            }
        state = {
            "epoch": finished_epochs,
            "models": models,
            "rng_state": get_rng_state(),
            "trainer_state": self.resume_state(),
        }
        path = os.path.join(directory, RESUME_POINT_NAME)
        write_loadable(state, path)
        return path

    def resume_state(self) -> dict:
        """Trainer state beyond models, optimisers and RNGs that a resumed run needs (plain data only)."""
        return {}

    def load_resume_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `resume_state` returned."""

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        """Load ``model.pth.tar-<epoch>`` of every registered model; without an epoch
        ``model-best.pth.tar``, or where there is none (last_step runs), the last epoch saved."""
        if not directory:
            logger.warning("load_model() is skipped: no --model-dir given, the model keeps its initial weights")
            return
        for name in self.get_model_names():
            folder = os.path.join(directory, name)
            fname = checkpoint_name(epoch) if epoch is not None else self._default_checkpoint(folder)
            fpath = os.path.join(folder, fname)
            if not os.path.exists(fpath):
                present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
                raise MissingFileError(
                    f"Checkpoint not found: {fpath}. "
                    + (f"Files in {folder}: {present}. " if present else f"{folder} does not exist. ")
                    + "Check --model-dir (the training run's --output-dir) and --load-epoch (= the run's MAX_EPOCH)."
                )
            checkpoint = load_checkpoint(fpath)
            state_dict = {k: v for k, v in checkpoint["state_dict"].items() if not self._skipped_key(k)}
            self._load_state_dict_checked(name, state_dict, fpath)
            logger.info(
                "Load %s to %s (epoch=%s, val_result=%s)",
                fpath, name, checkpoint.get("epoch"), checkpoint.get("val_result"),
            )

    @staticmethod
    def _default_checkpoint(folder: str) -> str:
        """model-best.pth.tar if present, else the highest ``model.pth.tar-<E>`` in `folder`."""
        if os.path.exists(os.path.join(folder, BEST_CHECKPOINT_NAME)) or not os.path.isdir(folder):
            return BEST_CHECKPOINT_NAME
        epochs = [e for e in (parse_checkpoint_epoch(f) for f in os.listdir(folder)) if e is not None]
        if not epochs:
            return BEST_CHECKPOINT_NAME
        logger.info("No %s in %s: loading the last epoch saved, %d", BEST_CHECKPOINT_NAME, folder, max(epochs))
        return checkpoint_name(max(epochs))

    def _skipped_key(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.checkpoint_skip_patterns)

    def _load_state_dict_checked(self, name: str, state_dict: Mapping[str, torch.Tensor], fpath: str) -> None:
        """Non-strict only for the keys the trainer rebuilds itself; anything else is a clear error."""
        model = self._models[name]
        own = model.state_dict()
        unexpected = [k for k in state_dict if k not in own]
        missing = [k for k in own if k not in state_dict and not self._skipped_key(k)]
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in state_dict.items()
            if k in own and tuple(v.shape) != tuple(own[k].shape)
        ]
        if unexpected or missing or mismatched:
            raise CheckpointMismatchError(
                f"Checkpoint {fpath} does not fit the '{name}' module of trainer {type(self).__name__}. "
                f"Unexpected keys: {unexpected[:8]}; missing keys: {missing[:8]}; shape mismatches: {mismatched[:8]}. "
                "Was it saved by another trainer, backbone or prompt configuration (e.g. N_CTX, CTX_INIT, CSC)?"
            )
        model.load_state_dict(state_dict, strict=False)

    # ----------------------------------------------------------------- modes and updates
    def set_model_mode(self, mode: str = "train", names=None) -> None:
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise KeyError(f"Unknown model mode '{mode}' (use 'train', 'eval' or 'test')")

    def update_lr(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def step_lr_schedule(self) -> None:
        """Called by the epoch loop after every batch: steps the schedulers that count iterations
        (`step_unit` "iteration") every time, the others (Dassl's, per epoch) after the epoch's
        last batch. Methods never step the learning rate themselves."""
        last_batch = (self.batch_idx + 1) == self.num_batches
        for name in self.get_model_names():
            sched = self._scheds[name]
            if sched is not None and (last_batch or lr_step_unit(sched) == "iteration"):
                sched.step()

    def detect_anomaly(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            epoch = getattr(self, "epoch", 0) + 1
            max_epoch = getattr(self, "max_epoch", "?")
            batch = getattr(self, "batch_idx", 0) + 1
            num_batches = getattr(self, "num_batches", "?")
            raise FloatingPointError(
                f"Loss is infinite or NaN at epoch {epoch}/{max_epoch}, batch {batch}/{num_batches}. "
                f"Training stopped instead of continuing on NaN. {self.anomaly_hint()}"
            )

    def anomaly_hint(self) -> str:
        """What to try after a NaN loss; a method adds its own keys (e.g. its precision key)."""
        return "Try a lower OPTIM.LR."

    def init_writer(self, log_dir: str) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            logger.info("Initialize tensorboard (log_dir=%s)", log_dir)
            self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    def model_zero_grad(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss: torch.Tensor, names=None) -> None:
        self.model_zero_grad(names)
        with contextlib.ExitStack() as armed:
            for name in self.get_model_names(names):
                if name in self._updates_in_backward:
                    armed.enter_context(self._updates_in_backward[name].armed())
            self.model_backward(loss)
        self.model_update(names)  # finds no gradient left where the update ran in backward

    # ----------------------------------------------------------------- loop
    def train(self, start_epoch: int, max_epoch: int) -> None:
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()  # may move self.start_epoch forward when resuming
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def run_epoch(self) -> None:
        raise NotImplementedError

    def test(self, split: str | None = None):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch) -> dict:
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError


class SimpleTrainer(TrainerBase):
    """Data, evaluator, test loop, epoch-end checkpointing and the run's results file."""

    has_training = True  # False: evaluation only (zero-shot methods); train.py then needs --eval-only

    def __init__(self, cfg) -> None:
        super().__init__()
        self.check_cfg(cfg)
        self.device = select_device(cfg)
        self.start_epoch = self.epoch = 0
        self.finished_epochs = 0  # epochs whose state is saved (resume point or checkpoint)
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.wall_start = time.time()
        self.train_time_s: float | None = None
        self.train_images_seen = 0  # images through forward_backward, for throughput
        self.test_time_s: float | None = None
        self.last_test: dict | None = None
        self.resident_memory_mb: float | None = None  # once the model is built
        self.train_step_memory_mb: float | None = None  # what training adds on top of it (peak - resident)
        # The preflight (engine/preflight.py): the run's first measured steps, and a resumed invocation's.
        self.preflight: dict | None = None
        self.preflight_resumed: dict | None = None
        self._probe: PreflightProbe | None = None  # while the first steps of this invocation are measured
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.build_data_loader()
        self.build_model()
        self.attach_updates_in_backward()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname, keep_outputs=True)
        self.best_result = -np.inf

    @classmethod
    def check_cfg(cls, cfg) -> None:
        """Trainer-specific checks of the config, run before anything is built (and by `train.py --check`).

        Raise a `engine.errors.UserError` (e.g. `ConfigValueError`) naming the key and the fix."""
        check_update_in_backward(cfg.OPTIM)

    def attach_updates_in_backward(self) -> None:
        """OPTIM.UPDATE_IN_BACKWARD for each registered optimizer; not under a GradScaler, whose step
        needs every gradient (unscaled and checked for inf) before any update."""
        if getattr(self, "scaler", None) is not None:
            return
        for name, optim in self._optims.items():
            update = build_update_in_backward(optim, self.cfg.OPTIM)
            if update is not None:
                self._updates_in_backward[name] = update
                logger.info("The optimizer updates %s's parameters during backward (%d buckets, %.0f MB of "
                            "gradients never held at once; OPTIM.UPDATE_IN_BACKWARD)", name, len(update.buckets),
                            update.gradient_mb)

    @classmethod
    def adjust_cfg(cls, cfg) -> None:
        """Changes the trainer makes to the (unfrozen) config before the run starts, so that
        config.yaml records the settings the run really uses (e.g. Skip Tuning's epoch reduction)."""

    @classmethod
    def backbone_preprocess(cls, cfg) -> Preprocess | None:
        """The input size, mean, std and interpolation of the backbone `cfg` names (None: not known)."""
        return None

    def resume_state(self) -> dict:
        return {"best_result": float(self.best_result)}

    def load_resume_state(self, state: Mapping[str, Any]) -> None:
        self.best_result = float(state.get("best_result", -np.inf))

    def build_data_loader(self) -> None:
        dm = DataManager(self.cfg)
        self.dm = dm
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname

    def build_model(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement build_model()")

    def train(self) -> None:  # type: ignore[override]
        try:
            super().train(self.start_epoch, self.max_epoch)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one by train.py
            logger.warning(self.interruption_report())
            self.close_writer()
            raise

    def interruption_report(self) -> str:
        """Where an interrupted run stands and what a rerun into the same OUTPUT_DIR will do."""
        point = os.path.join(self.output_dir, RESUME_POINT_NAME)
        if self.finished_epochs >= self.max_epoch:
            return (f"Interrupted after training ({self.max_epoch} epochs, saved in {self.output_dir}): "
                    "a rerun loads the final checkpoint and only evaluates.")
        where = f"Interrupted during epoch {self.epoch + 1}/{self.max_epoch}."
        if self.finished_epochs == 0:
            return f"{where} No epoch had finished, so there is nothing to resume: a rerun starts from scratch."
        saved = point if os.path.isfile(point) else f"the checkpoints in {self.output_dir}"
        return (f"{where} The resume point after {self.finished_epochs} finished epoch(s) is saved in {saved}: "
                f"a rerun into the same output folder continues with epoch {self.finished_epochs + 1}.")

    def before_train(self) -> None:
        directory = self.cfg.RESUME or self.output_dir
        self.start_epoch = self.resume_model_if_exist(directory)
        self.finished_epochs = self.start_epoch
        writer_dir = os.path.join(self.output_dir, "tensorboard")
        mkdir_if_missing(writer_dir)
        self.init_writer(writer_dir)
        self._peak_was_reset = reset_peak_memory(self.device)  # first: it returns freed memory to the OS
        self.resident_memory_mb = memory_in_use_mb(self.device)
        self.start_preflight(directory)
        self.time_start = time.time()

    # ----------------------------------------------------------------- preflight
    def start_preflight(self, resume_dir: str) -> None:
        """Measure the first steps this invocation trains; a resumed run keeps the preflight of its start."""
        if self.start_epoch > 0:
            path = os.path.join(resume_dir, PREFLIGHT_NAME)
            self.preflight = read_json(path).get("preflight") if os.path.isfile(path) else None
        if self.start_epoch < self.max_epoch:
            self._probe = PreflightProbe(self.device, self.resident_memory_mb, self.start_epoch, self.max_epoch)

    def memory_advice(self, shortfall: MemoryShortfall) -> str | None:
        """A method's own setting that would lower its training step's memory (e.g. a chunk size), as
        one sentence for the preflight's stop message; None: the method has none. The engine adds the
        batch size it suggests itself. `shortfall.excess_mb` is how much the peak must come down (None
        after an out-of-memory error, where it is unknown)."""
        return None

    def guarded_forward_backward(self, batch) -> dict:
        """`forward_backward`, with an out-of-memory error in the preflight's steps turned into a clear stop."""
        if self._probe is None:
            return self.forward_backward(batch)
        try:
            return self.forward_backward(batch)
        except OUT_OF_MEMORY_ERRORS as error:
            capacity = memory_capacity(self.device, self.cfg.TRAIN.MEMORY_LIMIT_MB)
            size = self.batch_size_of(batch)
            advice = self.memory_advice(MemoryShortfall(
                capacity.mb if capacity else None, self.resident_memory_mb or 0.0, size, None))
            raise out_of_memory_error(error, capacity, self.resident_memory_mb or 0.0, size,
                                      len(self._probe.step_times) + 1, advice) from error

    def preflight_step(self, batch_size: int, started: float) -> None:
        """Time one of the first steps (started at `started`); after the last, check and record."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step's kernels, not only their launch
        self._probe.add_step(time.time() - started, batch_size)
        if self._probe.done(self.num_batches):
            self.finish_preflight()

    def finish_preflight(self) -> None:
        probe, self._probe = self._probe, None
        capacity = memory_capacity(self.device, self.cfg.TRAIN.MEMORY_LIMIT_MB)
        fixed = fixed_step_memory_mb(o for o in self._optims.values() if o is not None)
        record = probe.record(self.num_batches, fixed, capacity, self.cfg.DATALOADER.TEST.BATCH_SIZE)
        logger.info(summary_line(record))
        if self.start_epoch == 0 or self.preflight is None:
            self.preflight = record.to_json()
        else:
            self.preflight_resumed = record.to_json()
        write_json({"preflight": self.preflight, "preflight_resumed": self.preflight_resumed},
                   os.path.join(self.output_dir, PREFLIGHT_NAME))
        if record.fits is False:
            excess = record.fit_memory_mb - record.capacity_mb
            shortfall = MemoryShortfall(record.capacity_mb, record.resident_memory_mb, record.batch_size, excess)
            raise fit_error(record, self.memory_advice(shortfall))
        warning = eval_warning(record)
        if warning:
            logger.warning(warning)

    def after_epoch(self) -> None:
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = (self.epoch + 1) % freq == 0 if freq > 0 else False
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            if curr_result > self.best_result:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result, model_name=BEST_CHECKPOINT_NAME)
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)
        point = os.path.join(self.output_dir, RESUME_POINT_NAME)
        if last_epoch:
            # The final checkpoint holds everything a rerun needs; the rolling point is no longer needed.
            if os.path.exists(point):
                os.remove(point)
        else:
            self.save_resume_point(self.output_dir, self.epoch + 1)
        self.finished_epochs = self.epoch + 1

    def after_train(self) -> None:
        logger.info("Finish training")
        self.train_time_s = time.time() - self.time_start
        if self.resident_memory_mb is not None:
            peak = peak_memory_mb(self.device)
            self.train_step_memory_mb = max(0.0, peak - self.resident_memory_mb)
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                logger.info("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                logger.info("Deploy the last-epoch model")
            self.test()
        elapsed = str(datetime.timedelta(seconds=round(time.time() - self.time_start)))
        logger.info("Elapsed: %s", elapsed)
        self.close_writer()

    @torch.no_grad()
    def test(self, split: str | None = None) -> float:
        """Evaluate on `split` (default TEST.SPLIT); return the accuracy.

        The default evaluation (no `split` given) is the run's result: it is kept for
        `save_results`. An explicit split (best_val's per-epoch validation) is not."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        is_final = split is None
        split = split or self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            data_loader = self.val_loader
        else:
            split = "test"
            data_loader = self.test_loader
        logger.info("Evaluate on the *%s* set", split)
        impaths: list[str] = []
        t0 = time.time()
        for batch in tqdm(self.test_batches(data_loader, split), disable=not progress_bars_enabled()):
            input, label = self.parse_batch_test(batch)
            output = self.model_inference(input)
            self.evaluator.process(output, label)
            impaths.extend(batch["impath"])
        results = self.evaluator.evaluate()
        elapsed = time.time() - t0
        for k, v in results.items():
            if isinstance(v, (int, float)):
                self.write_scalar(f"{split}/{k}", v, self.epoch)
        if is_final:
            self.test_time_s = elapsed
            self.last_test = {"results": dict(results), "impaths": impaths, "split": split}
            logits, labels = self.evaluator.outputs()
            self.last_test["logits"], self.last_test["labels"] = logits, labels
        return list(results.values())[0]

    def test_batches(self, data_loader, split: str) -> Iterable:
        """The batches an evaluation of `split` iterates: the loader's (a method that reads cached
        image features yields those instead, see `engine.feature_cache`)."""
        return data_loader

    def model_inference(self, input):
        return self.model(input)

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def get_current_lr(self, names=None) -> float:
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]

    # ----------------------------------------------------------------- results
    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters of the whole model the trainer runs."""
        model = getattr(self, "model", None)
        if model is None:
            return 0, 0
        params = list(model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        return trainable, sum(p.numel() for p in params)

    def peak_memory(self) -> tuple[float, str]:
        """Measured peak memory in MB and what was measured."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_max_allocated"
        # ru_maxrss is in KiB on Linux.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"

    def save_results(self, output_dir: str | None = None, extra: dict | None = None) -> dict:
        """Write `results.json` (and `predictions.npz` with TEST.SAVE_PREDICTIONS) for the last test;
        `extra` entries (train.py's provenance card) go into the same atomic write."""
        output_dir = output_dir or self.output_dir
        if self.last_test is None:
            raise RuntimeError("save_results() called before test(): there is nothing to write")
        cfg = self.cfg
        results = self.last_test["results"]
        trainable, total = self.parameter_counts()
        peak_mb, peak_kind = self.peak_memory()
        record = {
            "trainer": cfg.TRAINER.NAME,
            "dataset": cfg.DATASET.NAME,
            "subsample": cfg.DATASET.SUBSAMPLE_CLASSES,
            "shots": cfg.DATASET.NUM_SHOTS,
            "seed": cfg.SEED,
            "backbone": cfg.MODEL.BACKBONE.NAME,
            "num_classes": int(self.last_test["logits"].shape[1]),
            "split": self.last_test["split"],
            "num_test": int(self.last_test["labels"].shape[0]),
            "accuracy": float(results["accuracy"]),
            "error_rate": float(results["error_rate"]),
            "macro_f1": float(results["macro_f1"]),
            "epochs": cfg.OPTIM.MAX_EPOCH,
            "train_time_s": self.train_time_s,
            "test_time_s": self.test_time_s,
            "peak_memory_mb": round(peak_mb, 1),
            "peak_memory_kind": peak_kind,
            # The memory of the built model, and what training adds over it (peak during training
            # minus that); the second is the cost that differs between methods.
            "resident_memory_mb": _round_or_none(self.resident_memory_mb),
            "train_step_memory_mb": _round_or_none(self.train_step_memory_mb),
            "trainable_params": trainable,
            "total_params": total,
            "train_images_per_s": (
                round(self.train_images_seen / self.train_time_s, 2)
                if self.train_time_s and self.train_images_seen else None
            ),
            "test_images_per_s": (
                round(len(self.last_test["impaths"]) / self.test_time_s, 2) if self.test_time_s else None
            ),
            "wall_time_s": round(time.time() - self.wall_start, 3),
            "device": self.device.type,
            # The first training steps measured and extrapolated (engine/preflight.py); null for eval-only.
            "preflight": self.preflight,
            "preflight_resumed": self.preflight_resumed,
        }
        record.update(self.extra_results())
        record.update(extra or {})
        mkdir_if_missing(output_dir)
        write_json(record, os.path.join(output_dir, "results.json"))
        if cfg.TEST.SAVE_PREDICTIONS:
            self._save_predictions(os.path.join(output_dir, "predictions.npz"))
        return record

    def _data_root(self) -> str:
        """The folder image paths in predictions.npz are relative to: --root, or, when a dataset
        chose its own location (the demo world without --root), the parent of its folder."""
        if self.cfg.DATASET.ROOT:
            return os.path.abspath(os.path.expanduser(self.cfg.DATASET.ROOT))
        dataset_dir = getattr(self.dm.dataset, "dataset_dir", "")
        return os.path.dirname(dataset_dir) if os.path.isabs(dataset_dir) else ""

    def extra_results(self) -> dict:
        """Method-specific entries for results.json (e.g. a differently measured training time)."""
        return {}

    def _save_predictions(self, path: str) -> None:
        root = self._data_root()
        impaths = [
            os.path.relpath(p, root).replace(os.sep, "/") if root else p for p in self.last_test["impaths"]
        ]
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                logits=np.asarray(self.last_test["logits"], dtype=np.float32),
                labels=np.asarray(self.last_test["labels"], dtype=np.int64),
                impaths=np.asarray(impaths, dtype=str),
            )
        os.replace(tmp, path)
        logger.info("Predictions saved to %s", path)


def _round_or_none(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


class TrainerX(SimpleTrainer):
    """Trainer over labelled data only (train_loader_x)."""

    def epoch_batches(self) -> Sized:
        """The batches of the current epoch (a sized iterable): the training loader by default.

        A method that produces its batches differently (Skip Tuning's cached states and batch
        plan) overrides this, not `run_epoch`."""
        return self.train_loader_x

    @staticmethod
    def batch_size_of(batch: Any) -> int:
        """Images in a batch (for throughput): its labels' count."""
        return len(batch["label"])

    def run_epoch(self) -> None:
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        batches = self.epoch_batches()
        self.num_batches = len(batches)
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        end = time.time()
        for self.batch_idx, batch in enumerate(batches):
            data_time.update(time.time() - end)
            loss_summary = self.guarded_forward_backward(batch)
            self.step_lr_schedule()
            images = self.batch_size_of(batch)
            self.train_images_seen += images
            if self._probe is not None:
                self.preflight_step(images, started=end)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            if (self.batch_idx + 1) % print_freq == 0 or self.num_batches < print_freq:
                nb_remain = (self.num_batches - self.batch_idx - 1) + (
                    self.max_epoch - self.epoch - 1
                ) * self.num_batches
                eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
                logger.info(
                    "epoch [%d/%d] batch [%d/%d] time %.3f (%.3f) data %.3f (%.3f) %s lr %.4e eta %s",
                    self.epoch + 1, self.max_epoch, self.batch_idx + 1, self.num_batches,
                    batch_time.val, batch_time.avg, data_time.val, data_time.avg,
                    losses, self.get_current_lr(), eta,
                )
            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)
            end = time.time()

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device), batch["domain"].to(self.device)
