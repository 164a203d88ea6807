"""Fast mode (TRAIN.FAST_MODE): off, a training step is the exact fp32 step; on, it runs under bf16
autocast on CPU with fp32 weights, close to fp32 within bf16's rounding; refused on fp16 weights."""
from __future__ import annotations

import json

import pytest
import torch

from engine.config import get_cfg_default
from engine.errors import ConfigValueError
from tests.clip.test_precision import _roundings
from tests.conftest import run_train
from tests.tolerances import BF16_UNIT_ROUNDOFF, cosine_logit_atol, low_precision_relative_error
from tests.trainers.test_coop import build_coop_trainer, coop_argv
from trainers.common import cosine_logits
from trainers.dyt import DyT


class StepRecorder:
    """Records, during `forward_backward`, the logits of the training step and the dtype of the
    first image block's MLP output (an intermediate that autocast casts)."""

    def __init__(self, trainer) -> None:
        self.logits: torch.Tensor | None = None
        self.mlp_dtypes: list[torch.dtype] = []
        model = trainer.model
        step = model.training_step

        def recording_step(inputs, labels):
            out = step(inputs, labels)
            self.logits = out.logits.detach().clone()
            return out

        model.training_step = recording_step
        mlp = model.clip_model.visual.transformer.resblocks[0].mlp.c_fc
        mlp.register_forward_hook(lambda module, args, output: self.mlp_dtypes.append(output.dtype))


def _trainer_and_batch(root, clip_path, out, *opts: str):
    trainer = build_coop_trainer(coop_argv(root, clip_path, out, "OPTIM.LR", "0.05", *opts, epochs=1))
    trainer.set_model_mode("train")
    torch.manual_seed(0)
    batch = next(iter(trainer.train_loader_x))
    return trainer, batch


def _reference_logits(trainer, batch) -> torch.Tensor:
    """The step's logits without autocast, with gradients on as in the step (same kernels)."""
    images, labels = trainer.parse_batch_train(batch)
    return trainer.model.training_step(images, labels).logits.detach()


def test_fast_mode_off_is_the_exact_fp32_step(caltech_root, tiny_clip_path, tmp_path):
    trainer, batch = _trainer_and_batch(caltech_root, tiny_clip_path, tmp_path / "exact")
    assert trainer.cfg.TRAIN.FAST_MODE is False  # the default
    reference = _reference_logits(trainer, batch)
    recorder = StepRecorder(trainer)
    trainer.forward_backward(batch)
    assert torch.equal(recorder.logits, reference)
    assert recorder.mlp_dtypes == [torch.float32]
    assert trainer.scaler is None


def test_fast_mode_runs_the_step_under_bf16_autocast_close_to_fp32(caltech_root, tiny_clip_path, tmp_path):
    trainer, batch = _trainer_and_batch(caltech_root, tiny_clip_path, tmp_path / "fast", "TRAIN.FAST_MODE", "True")
    reference = _reference_logits(trainer, batch)  # outside autocast: the exact step's logits
    ctx_before = trainer.model.prompt_learner.ctx.detach().clone()
    recorder = StepRecorder(trainer)
    trainer.forward_backward(batch)
    assert recorder.mlp_dtypes == [torch.bfloat16]
    ctx = trainer.model.prompt_learner.ctx
    assert ctx.dtype == torch.float32 and trainer.model.clip_model.visual.conv1.weight.dtype == torch.float32
    assert not torch.equal(ctx, ctx_before)  # the step updated the fp32 context
    assert trainer.scaler is None  # bf16 needs no GradScaler
    assert not torch.equal(recorder.logits.float(), reference)  # rounded through bf16
    # Each tower's features carry at most its bf16 roundings (tests/clip/test_precision.py counts
    # them: 2 per matmul, 1 per elementwise step, 8-bit mantissa u = 2^-8); logits move by at most
    # logit_scale x the two relative errors.
    clip_model = trainer.model.clip_model
    bound = cosine_logit_atol(clip_model.logit_scale.exp().item(),
                              low_precision_relative_error(_roundings(clip_model.visual), BF16_UNIT_ROUNDOFF),
                              low_precision_relative_error(_roundings(clip_model), BF16_UNIT_ROUNDOFF))
    assert (recorder.logits.float() - reference).abs().max() <= bound


@pytest.mark.parametrize("fast", [True, False])
def test_fast_mode_keeps_the_classifier_head_in_fp32_where_amp_alone_does_not(fast, caltech_root, tiny_clip_path,
                                                                              tmp_path):
    """Fast mode: the towers run in bf16, the cosine head on their features in fp32 (a bf16 cosine
    times CLIP's logit scale of 100 moves logits by up to ~0.4). PREC amp without fast mode autocasts
    the head too, as the originals do."""
    opts = ("TRAIN.FAST_MODE", "True") if fast else ("TRAINER.COOP.PREC", "amp")
    trainer, batch = _trainer_and_batch(caltech_root, tiny_clip_path, tmp_path / "run", *opts)
    model = trainer.model
    recorder = StepRecorder(trainer)
    features = []
    compute_features = model.features
    model.features = lambda *args: features.append(compute_features(*args)) or features[-1]
    trainer.forward_backward(batch)
    image, text = features[0].image, features[0].text
    assert image.dtype == text.dtype == torch.bfloat16  # the towers' outputs, under autocast either way
    expected = cosine_logits(image.detach().float(), text.detach().float(), model.clip_model.logit_scale.detach())
    if fast:
        assert recorder.logits.dtype == torch.float32 and torch.equal(recorder.logits, expected)
    else:
        assert recorder.logits.dtype == torch.bfloat16 and not torch.equal(recorder.logits.float(), expected)


def test_fast_mode_evaluates_under_autocast_where_the_exact_run_does_not(caltech_root, tiny_clip_path, tmp_path):
    trainer, batch = _trainer_and_batch(caltech_root, tiny_clip_path, tmp_path / "fast", "TRAIN.FAST_MODE", "True")
    assert trainer.model.autocast_at_test is False  # CoOp's original evaluates without autocast
    recorder = StepRecorder(trainer)
    trainer.set_model_mode("eval")
    trainer.model_inference(batch["img"])
    assert recorder.mlp_dtypes == [torch.bfloat16]


def test_fast_mode_is_recorded_in_results_json(caltech_root, tiny_clip_path, tmp_path):
    out = tmp_path / "run"
    run_train(coop_argv(caltech_root, tiny_clip_path, out, "TRAIN.FAST_MODE", "True", "DATASET.NUM_SHOTS", "1",
                        epochs=1))
    record = json.loads((out / "results.json").read_text())
    assert record["fast_mode"] is True


def test_fast_mode_on_fp16_weights_is_refused_naming_the_precision_key(caltech_root, tiny_clip_path, tmp_path):
    argv = coop_argv(caltech_root, tiny_clip_path, tmp_path, "TRAIN.FAST_MODE", "True", "TRAINER.COOP.PREC", "fp16")
    with pytest.raises(ConfigValueError, match="TRAINER.COOP.PREC fp32"):
        build_coop_trainer(argv)


@pytest.mark.parametrize("prec", ["amp", "fp32"])
def test_dyt_honours_fast_mode_on_cpu(prec):
    """DyT's own autocast: amp is fp32 on a CPU (as the original); fast mode autocasts to bf16 there."""
    from tests.trainers.test_dyt import tiny_model

    cfg = get_cfg_default()
    DyT.extend_cfg(cfg)
    cfg.TRAINER.DYT.PREC = prec
    trainer = DyT.__new__(DyT)  # autocast() reads only the config and the device
    trainer.cfg, trainer.device = cfg, torch.device("cpu")
    model = tiny_model()
    seen: list[torch.dtype] = []
    model.vit.blocks[0].attn.qkv.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    images = torch.randn(2, 3, 64, 64)
    dtypes = {}
    for fast in (False, True):
        cfg.TRAIN.FAST_MODE = fast
        with torch.no_grad(), trainer.autocast():
            model(images)
        dtypes[fast] = seen.pop()
    assert dtypes == {False: torch.float32, True: torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_fast_mode_autocasts_fp16_with_a_grad_scaler_on_cuda():
    """The CUDA branch, checked without a GPU: fp16 autocast and a GradScaler, as PREC amp has."""
    import warnings

    from trainers.common import autocast_context, make_grad_scaler

    cuda = torch.device("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CUDA autocast and a GradScaler built without CUDA warn
        assert autocast_context("fp32", cuda, fast=True).fast_dtype == torch.float16
        assert isinstance(make_grad_scaler("fp32", cuda, fast=True), torch.amp.GradScaler)
    assert autocast_context("fp32", torch.device("cpu"), fast=True).fast_dtype == torch.bfloat16
    assert not isinstance(autocast_context("fp32", cuda), torch.autocast)  # exact fp32: no autocast
    assert make_grad_scaler("fp32", cuda) is None and make_grad_scaler("fp32", torch.device("cpu"), fast=True) is None
