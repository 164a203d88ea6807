"""The preflight (engine/preflight.py): the first training steps measured and extrapolated into
results.json, kept across a resume, and the memory fit check that stops a run with a suggestion
(a measured step over the capacity, or an out-of-memory error in the first steps)."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from engine.preflight import (
    LIMIT_KEY,
    MemoryCapacity,
    MemoryShortfall,
    PreflightRecord,
    batch_that_fits,
    fit_error,
    fixed_step_memory_mb,
    memory_capacity,
)
from engine.trainer import SimpleTrainer
from tests.conftest import config_path, run_train

BATCH = 4
TRAIN_IMAGES = 6 * 4  # caltech_root: 6 classes x 4 training images


def tiny_coop(root, clip_path, out, *opts: str, epochs: int = 1, flags: tuple = ()) -> list[str]:
    return [
        "--root", str(root), "--seed", "1", "--trainer", "CoOp", *flags,
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "CoOp", "vit_b16_ep50.yaml"),
        "--output-dir", str(out), "MODEL.BACKBONE.NAME", str(clip_path), "INPUT.SIZE", "(32, 32)",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", str(BATCH), "TRAINER.COOP.N_CTX", "4",
        "TRAINER.COOP.PREC", "fp32", "OPTIM.MAX_EPOCH", str(epochs), *opts,
    ]


def read_results(out) -> dict:
    return json.loads((out / "results.json").read_text())


# ----------------------------------------------------------------------------- the record
def test_results_json_holds_the_first_steps_and_their_extrapolation(caltech_root, tiny_clip_path, tmp_path):
    out = tmp_path / "run"
    run_train(tiny_coop(caltech_root, tiny_clip_path, out, epochs=2))
    record = read_results(out)["preflight"]
    assert record["measured_in_epoch"] == 1 and record["steps_timed"] == 2
    assert record["step_time_includes_warmup"] is False  # the epoch has a second step to time
    assert record["batch_size"] == BATCH and record["epochs"] == 2
    assert record["steps_per_epoch"] == TRAIN_IMAGES // BATCH
    # One float multiplication each, and JSON keeps a float exactly: only the product's rounding.
    assert record["epoch_time_s"] == pytest.approx(record["step_time_s"] * record["steps_per_epoch"], rel=1e-15)
    assert record["run_time_s"] == pytest.approx(record["epoch_time_s"] * 2, rel=1e-15)
    assert 0 < record["step_time_s"] and 0 < record["first_step_time_s"]
    # Each memory figure is rounded to 0.1 MB on its own: the difference is within 3 half-units.
    assert record["step_memory_mb"] == pytest.approx(record["peak_memory_mb"] - record["resident_memory_mb"], abs=0.15)
    assert record["peak_memory_mb"] >= record["resident_memory_mb"] > 0
    assert record["fits"] is True and record["capacity_mb"] >= record["fit_memory_mb"]
    assert read_results(out)["preflight_resumed"] is None
    assert json.loads((out / "preflight.json").read_text())["preflight"] == record
    log = (out / "log.txt").read_text()
    assert re.search(r"Preflight \(epoch 1, batch 4\): step [\d.]+ s \(step 2; step 1 [\d.]+ s\) x 6 steps", log)


def test_a_resumed_run_keeps_the_preflight_of_its_start_and_measures_its_own(
        caltech_root, tiny_clip_path, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = tiny_coop(caltech_root, tiny_clip_path, out, epochs=2)
    original_after_epoch = SimpleTrainer.after_epoch

    def stop_after_first_epoch(self):
        original_after_epoch(self)
        raise KeyboardInterrupt  # as Ctrl-C after epoch 1's resume point is saved

    with monkeypatch.context() as m:
        m.setattr(SimpleTrainer, "after_epoch", stop_after_first_epoch)
        with pytest.raises(KeyboardInterrupt):
            run_train(argv)
    first = json.loads((out / "preflight.json").read_text())["preflight"]
    run_train(argv)  # continues with epoch 2
    results = read_results(out)
    assert results["preflight"] == first
    assert results["preflight_resumed"]["measured_in_epoch"] == 2
    run_train(argv)  # finished: loads the final checkpoint, evaluates, trains nothing
    assert read_results(out)["preflight"] == first


def test_eval_only_runs_have_no_preflight(caltech_root, tiny_clip_path, tmp_path):
    trained = tmp_path / "trained"
    run_train(tiny_coop(caltech_root, tiny_clip_path, trained))
    out = tmp_path / "eval"
    flags = ("--eval-only", "--model-dir", str(trained), "--load-epoch", "1")
    results = run_train(tiny_coop(caltech_root, tiny_clip_path, out, flags=flags))
    assert results["preflight"] is None and results["preflight_resumed"] is None
    assert not (out / "preflight.json").exists()


def test_the_preflight_leaves_the_run_unchanged(caltech_root, tiny_clip_path, tmp_path, monkeypatch):
    run_train(tiny_coop(caltech_root, tiny_clip_path, tmp_path / "with", "TEST.SAVE_PREDICTIONS", "True"))
    with monkeypatch.context() as m:
        m.setattr(SimpleTrainer, "start_preflight", lambda self, resume_dir: None)
        run_train(tiny_coop(caltech_root, tiny_clip_path, tmp_path / "without", "TEST.SAVE_PREDICTIONS", "True"))
    with_, without = (np.load(tmp_path / name / "predictions.npz") for name in ("with", "without"))
    assert np.array_equal(with_["logits"], without["logits"])
    assert read_results(tmp_path / "without")["preflight"] is None  # the reference really ran without it


# ----------------------------------------------------------------------------- the fit check
def test_a_run_over_the_memory_limit_stops_with_one_message_and_exit_status_2(
        caltech_root, tiny_clip_path, tmp_path, capsys):
    import train

    out = tmp_path / "run"
    status = train.cli(tiny_coop(caltech_root, tiny_clip_path, out, f"{LIMIT_KEY}", "1"))
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in captured.err + captured.out
    assert re.search(r"will not fit: its first training steps peaked at \d+ MB, over the 1 MB available "
                     r"\(TRAIN\.MEMORY_LIMIT_MB\).*batch 4.*Even batch 1 would not fit", errors[0])
    record = json.loads((out / "preflight.json").read_text())["preflight"]
    assert record["fits"] is False and record["capacity_kind"] == LIMIT_KEY  # the measurement is kept
    assert not (out / "results.json").exists()


def test_a_step_over_the_capacity_stops_with_the_batch_that_fits(
        caltech_root, tiny_clip_path, tmp_path, capsys, monkeypatch):
    import engine.preflight
    import engine.trainer
    import train

    # Simulated measurements: 1000 MB resident, 1400 MB peak at batch 4, on a device of 1250 MB.
    monkeypatch.setattr(engine.trainer, "memory_in_use_mb", lambda device: 1000.0)
    monkeypatch.setattr(engine.preflight, "peak_memory_mb", lambda device: 1400.0)
    monkeypatch.setattr(engine.preflight, "device_memory_capacity", lambda device: MemoryCapacity(1250.0, "test"))
    status = train.cli(tiny_coop(caltech_root, tiny_clip_path, tmp_path / "run"))
    error = capsys.readouterr().err
    # CoOp's gradients and SGD momentum (4 x 64 fp32 context each) are 2 KB: 100 MB per image, so
    # 1000 + 2 x 100 fits 1250 and 1000 + 3 x 100 does not.
    assert status == 2 and "peaked at 1400 MB, over the 1250 MB available (test)" in error
    assert "Try DATALOADER.TRAIN_X.BATCH_SIZE 2 " in error and "Traceback" not in error


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   MemoryError()], ids=["cuda", "cpu"])
def test_out_of_memory_in_the_first_step_becomes_the_same_clear_stop(
        caltech_root, tiny_clip_path, tmp_path, capsys, monkeypatch, error):
    import train
    from trainers.coop import CoOp

    def out_of_memory(self, batch):
        raise error

    monkeypatch.setattr(CoOp, "forward_backward", out_of_memory)
    status = train.cli(tiny_coop(caltech_root, tiny_clip_path, tmp_path / "run"))
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in captured.err
    assert re.search(rf"training step 1 ran out of memory \({type(error).__name__}.*batch 4 needs more than the "
                     r"\d+ MB available.*Try DATALOADER\.TRAIN_X\.BATCH_SIZE 2", errors[0])


def test_out_of_memory_after_the_first_steps_keeps_its_traceback(caltech_root, tiny_clip_path, tmp_path, monkeypatch):
    from trainers.coop import CoOp

    original = CoOp.forward_backward
    calls = []

    def third_step_fails(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("a later step")
        return original(self, batch)

    monkeypatch.setattr(CoOp, "forward_backward", third_step_fails)
    with pytest.raises(MemoryError, match="a later step"):
        run_train(tiny_coop(caltech_root, tiny_clip_path, tmp_path / "run"))


def record_for(capacity_mb: float, resident: float, fixed: float, per_image: float, batch: int) -> PreflightRecord:
    step = fixed + per_image * batch
    return PreflightRecord(
        measured_in_epoch=1, steps_timed=2, first_step_time_s=2.0, step_time_s=1.0, step_time_includes_warmup=False,
        batch_size=batch, steps_per_epoch=10, epochs=5, epoch_time_s=10.0, run_time_s=50.0,
        resident_memory_mb=resident, peak_memory_mb=resident + step, step_memory_mb=step,
        fixed_step_memory_mb=fixed, memory_per_image_mb=per_image, fit_memory_mb=resident + step,
        capacity_mb=capacity_mb, capacity_kind="cuda_free_plus_reserved", fits=False, eval_batch_size=batch,
        eval_peak_bound_mb=None,
    )


def test_the_suggested_batch_is_the_largest_whose_estimate_fits():
    # 1000 resident + 10 fixed + 50 per image: batch 3 peaks at 1160 <= 1200, batch 4 at 1210 > 1200.
    assert batch_that_fits(1200.0, 1000.0, 10.0, 50.0) == 3
    message = str(fit_error(record_for(1200.0, 1000.0, 10.0, 50.0, batch=8), advice="Or set X.Y 7."))
    assert "peaked at 1410 MB, over the 1200 MB available (free GPU memory plus what this run holds)" in message
    assert "Try DATALOADER.TRAIN_X.BATCH_SIZE 3 " in message and message.endswith("Or set X.Y 7.")
    assert "Even batch 1" in str(fit_error(record_for(1005.0, 1000.0, 10.0, 50.0, batch=8), advice=None))


def test_fixed_step_memory_counts_gradients_and_optimiser_state():
    weight = torch.nn.Parameter(torch.zeros(256, 1024))  # 1 MB of fp32
    optim = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    assert fixed_step_memory_mb([optim]) == 1.0  # the gradient; no state before the first step
    weight.grad = torch.ones_like(weight)
    optim.step()  # creates the momentum buffer: 1 MB more
    assert fixed_step_memory_mb([optim, optim]) == 2.0  # a parameter counts once


def test_the_memory_limit_lowers_the_device_capacity_and_never_raises_it(monkeypatch):
    import engine.preflight as preflight

    monkeypatch.setattr(preflight, "device_memory_capacity", lambda device: MemoryCapacity(1000.0, "device"))
    cpu = torch.device("cpu")
    assert memory_capacity(cpu, 0) == MemoryCapacity(1000.0, "device")
    assert memory_capacity(cpu, 400) == MemoryCapacity(400.0, LIMIT_KEY)
    assert memory_capacity(cpu, 4000) == MemoryCapacity(1000.0, "device")


# (trainer, recipe, options, the budget key the advice names, prompts per step of B images on 6 classes)
TEXT_CHUNK_RUNS = {
    "CoCoOp": ("CoCoOp", ("CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1.yaml"), ("TRAINER.COCOOP.PREC", "fp32"),
               "TRAIN.TEXT_CHUNK_MB", BATCH * 6),
    "CoCoOp, own key": ("CoCoOp", ("CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1.yaml"),
                        ("TRAINER.COCOOP.PREC", "fp32", "TRAINER.COCOOP.TEXT_CHUNK_MB", "8192"),
                        "TRAINER.COCOOP.TEXT_CHUNK_MB", BATCH * 6),
    "CoOp": ("CoOp", ("CoOp", "vit_b16_ep50.yaml"), ("TRAINER.COOP.PREC", "fp32"), "TRAIN.TEXT_CHUNK_MB", 6),
    "FinetuneCLIP": ("FinetuneCLIP", ("FinetuneCLIP", "vit_b16_ep10_bs4.yaml"), ("TRAINER.PREC", "fp32"),
                     "TRAIN.TEXT_CHUNK_MB", 6),
}


@pytest.mark.parametrize("run", list(TEXT_CHUNK_RUNS))
def test_a_method_with_a_trained_text_forward_suggests_the_text_chunk_that_would_fit(run, caltech_root,
                                                                                      tiny_clip_path, tmp_path,
                                                                                      monkeypatch):
    import train
    import trainers.common
    from engine import build_trainer

    # The tiny CLIP's text activations are below a megabyte, the key's unit: scale the estimate up.
    monkeypatch.setattr(trainers.common, "TEXT_ACTIVATION_FACTOR", 256 * trainers.common.TEXT_ACTIVATION_FACTOR)

    trainer_name, recipe, opts, key, prompts = TEXT_CHUNK_RUNS[run]
    argv = [
        "--root", str(caltech_root), "--seed", "1", "--trainer", trainer_name,
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", *recipe),
        "--output-dir", str(tmp_path / "run"), "MODEL.BACKBONE.NAME", str(tiny_clip_path), "INPUT.SIZE", "(32, 32)",
        "DATALOADER.NUM_WORKERS", "0", *opts,
    ]
    trainer = build_trainer(train.setup_cfg(train.build_parser().parse_args(argv)))
    activation = trainer.model.text_activation(BATCH)
    assert activation.prompts == prompts
    in_use = activation.total_mb  # every prompt of the step in one chunk under the default 8192 MB
    advice = trainer.memory_advice(MemoryShortfall(1000.0, 500.0, BATCH, excess_mb=in_use / 4))
    assert advice.startswith(f"Or set {key} {math.floor(in_use - in_use / 4)} (now 8192;")
    assert trainer.memory_advice(MemoryShortfall(1000.0, 500.0, BATCH, excess_mb=in_use)) is None  # chunks cannot
    assert activation.per_prompt_mb >= 1.0  # so the suggestions below are whole megabytes that save enough
    # After an out-of-memory error (excess unknown): half of what is in use, as a first try.
    oom = trainer.memory_advice(MemoryShortfall(None, 500.0, BATCH, excess_mb=None))
    assert oom.startswith(f"Or set {key} {math.floor(in_use / 2)} ")


def test_a_method_without_a_trained_text_forward_has_no_text_advice(caltech_root, tiny_clip_path, tmp_path):
    import train
    from engine import build_trainer

    argv = [
        "--root", str(caltech_root), "--trainer", "FinetuneCLIP", "--output-dir", str(tmp_path / "run"),
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "FinetuneCLIP", "vit_b16_ep10_bs4.yaml"),
        "MODEL.BACKBONE.NAME", str(tiny_clip_path), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
        "TRAINER.PREC", "fp32", "TRAINER.FINETUNE.LEARNABLE_TEXT", "False",  # fixed class features, computed once
    ]
    trainer = build_trainer(train.setup_cfg(train.build_parser().parse_args(argv)))
    assert trainer.model.text_activation(BATCH) is None
    assert trainer.memory_advice(MemoryShortfall(1000.0, 500.0, BATCH, excess_mb=10.0)) is None


def test_an_evaluation_batch_over_the_memory_is_a_warning_with_the_test_batch_that_fits():
    from engine.preflight import eval_warning

    record = record_for(1500.0, 1000.0, 10.0, 5.0, batch=8)  # the training step: 1000 + 10 + 40 fits 1500
    record.fits, record.eval_batch_size = True, 200
    record.eval_peak_bound_mb = 1000.0 + 5.0 * 200  # 2000 > 1500
    warning = eval_warning(record)
    # No gradients or optimiser state at test time: (1500 - 1000) / 5 = 100 images.
    assert "DATALOADER.TEST.BATCH_SIZE 200 may not fit" in warning and warning.endswith("BATCH_SIZE 100.")
    record.eval_peak_bound_mb = 1000.0 + 5.0 * 100  # 1500: fits exactly
    assert eval_warning(record) is None
