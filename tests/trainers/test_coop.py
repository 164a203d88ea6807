"""CoOp end to end on a tiny Caltech101 tree with a random-weight CLIP: training, checkpoints,
resume, original-format checkpoints, prompt assembly and the errors a user can run into."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clip
from tests.conftest import config_path, run_train
from tests.tolerances import clip_image_relative_atol, clip_text_relative_atol, cosine_logit_atol

RESOLUTION = 32
N_CTX = 4


def coop_argv(root, clip_path, out, *opts: str, epochs: int = 3, flags: tuple = ()) -> list[str]:
    """train.py arguments for a tiny CoOp run; `flags` go before the KEY VALUE options."""
    return [
        "--root", str(root), "--seed", "1", "--trainer", "CoOp",
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "CoOp", "vit_b16_ep50.yaml"),
        "--output-dir", str(out),
        *flags,
        "MODEL.BACKBONE.NAME", str(clip_path),
        "INPUT.SIZE", f"({RESOLUTION}, {RESOLUTION})",
        "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "DATALOADER.TEST.BATCH_SIZE", "8",
        "TRAINER.COOP.N_CTX", str(N_CTX),
        "TRAINER.COOP.PREC", "fp32",
        "OPTIM.MAX_EPOCH", str(epochs),
        *opts,
    ]


def build_coop_trainer(argv):
    import train
    from engine import build_trainer

    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    return build_trainer(cfg)


@torch.no_grad()
def train_set_loss(trainer) -> float:
    """Cross-entropy over the training images with the deterministic test transform."""
    from engine.data import build_data_loader, build_transform

    loader = build_data_loader(
        trainer.cfg, sampler_type="SequentialSampler", data_source=trainer.dm.dataset.train_x,
        batch_size=8, tfm=build_transform(trainer.cfg, is_train=False), is_train=False,
    )
    trainer.set_model_mode("eval")
    total, count = 0.0, 0
    for batch in loader:
        image, label = trainer.parse_batch_test(batch)
        total += F.cross_entropy(trainer.model(image), label, reduction="sum").item()
        count += label.numel()
    return total / count


def test_coop_training_lowers_loss_and_checkpoint_reloads_to_identical_logits(caltech_root, tiny_clip_path, tmp_path):
    out = tmp_path / "run"
    argv = coop_argv(caltech_root, tiny_clip_path, out, "OPTIM.LR", "0.05", "TEST.SAVE_PREDICTIONS", "True", epochs=6)
    trainer = build_coop_trainer(argv)
    ctx_before = trainer.model.prompt_learner.ctx.detach().clone()
    frozen_before = trainer.model.clip_model.visual.conv1.weight.detach().clone()
    loss_before = train_set_loss(trainer)
    trainer.train()
    loss_after = train_set_loss(trainer)
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)
    assert not torch.equal(trainer.model.prompt_learner.ctx, ctx_before)
    assert torch.equal(trainer.model.clip_model.visual.conv1.weight, frozen_before)
    record = trainer.save_results()

    ckpt = out / "prompt_learner" / "model.pth.tar-6"
    assert ckpt.is_file()
    assert (out / "prompt_learner" / "checkpoint").read_text().strip() == "model.pth.tar-6"
    saved = torch.load(ckpt, weights_only=True)
    assert {"state_dict", "epoch", "optimizer", "scheduler", "val_result"} <= set(saved)
    assert set(saved["state_dict"]) == {"ctx", "token_prefix", "token_suffix"}
    assert saved["epoch"] == 6

    # A fresh process-like run: eval-only from the checkpoint gives the very same logits.
    train_preds = np.load(out / "predictions.npz")
    eval_out = tmp_path / "eval"
    run_train(coop_argv(caltech_root, tiny_clip_path, eval_out, "TEST.SAVE_PREDICTIONS", "True", epochs=6,
                        flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "6")))
    eval_preds = np.load(eval_out / "predictions.npz")
    np.testing.assert_array_equal(eval_preds["logits"], train_preds["logits"])
    np.testing.assert_array_equal(eval_preds["impaths"], train_preds["impaths"])
    assert record["accuracy"] == json.loads((eval_out / "results.json").read_text())["accuracy"]
    assert eval_preds["impaths"][0].startswith("caltech-101/101_ObjectCategories/")

    assert "* accuracy:" in (eval_out / "log.txt").read_text()


def test_results_json_records_accuracy_and_cost(caltech_root, tiny_clip_path, tmp_path):
    out = tmp_path / "run"
    record = run_train(coop_argv(caltech_root, tiny_clip_path, out, epochs=1))
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == record
    for key in ("trainer", "dataset", "subsample", "shots", "seed", "backbone", "num_classes", "num_test",
                "accuracy", "macro_f1", "train_time_s", "test_time_s", "peak_memory_mb", "peak_memory_kind",
                "trainable_params", "total_params"):
        assert key in record, key
    assert record["trainer"] == "CoOp" and record["dataset"] == "Caltech101"
    assert record["num_classes"] == 6 and record["num_test"] == 12
    assert record["trainable_params"] == N_CTX * 64  # the context vectors only (text width 64)
    assert record["total_params"] > 100 * record["trainable_params"]
    assert record["peak_memory_kind"] == "cpu_peak_rss" and record["peak_memory_mb"] > 0
    assert record["train_time_s"] > 0 and record["test_time_s"] > 0
    # One epoch over 24 training images, 12 test images.
    # Rates are rounded to 2 decimals: off by at most 0.005 (plus float64 representation).
    assert record["train_images_per_s"] == pytest.approx(24 / record["train_time_s"], abs=0.005 + 1e-9)
    assert record["test_images_per_s"] == pytest.approx(12 / record["test_time_s"], abs=0.005 + 1e-9)
    assert record["wall_time_s"] >= record["train_time_s"] + record["test_time_s"]
    assert 0.0 <= record["accuracy"] <= 100.0
    log = (out / "log.txt").read_text()
    assert "Finish training" in log and f"* accuracy: {record['accuracy']:.1f}%" in log
    assert (out / "config.yaml").is_file() and (out / "tensorboard").is_dir()


def test_resumed_run_is_bit_identical_to_uninterrupted_one(caltech_root, tiny_clip_path, tmp_path, monkeypatch):
    from engine.trainer import SimpleTrainer

    opts = ("TRAIN.CHECKPOINT_FREQ", "1", "OPTIM.LR", "0.05", "TEST.SAVE_PREDICTIONS", "True")
    full = tmp_path / "full"
    run_train(coop_argv(caltech_root, tiny_clip_path, full, *opts, epochs=4))

    interrupted = tmp_path / "interrupted"
    original_after_epoch = SimpleTrainer.after_epoch

    def crash_after_second_epoch(self):
        original_after_epoch(self)
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(SimpleTrainer, "after_epoch", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_train(coop_argv(caltech_root, tiny_clip_path, interrupted, *opts, epochs=4))
    monkeypatch.setattr(SimpleTrainer, "after_epoch", original_after_epoch)
    assert (interrupted / "prompt_learner" / "checkpoint").read_text().strip() == "model.pth.tar-2"

    run_train(coop_argv(caltech_root, tiny_clip_path, interrupted, *opts, epochs=4))  # rerun resumes
    a = torch.load(full / "prompt_learner" / "model.pth.tar-4", weights_only=True)
    b = torch.load(interrupted / "prompt_learner" / "model.pth.tar-4", weights_only=True)
    assert torch.equal(a["state_dict"]["ctx"], b["state_dict"]["ctx"])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    np.testing.assert_array_equal(
        np.load(full / "predictions.npz")["logits"], np.load(interrupted / "predictions.npz")["logits"]
    )
    resumed_logs = sorted(interrupted.glob("log.txt*"))
    assert any("Previous epoch: 2" in p.read_text() for p in resumed_logs)


def _legacy_coop_checkpoint(path, ctx: torch.Tensor, n_cls_of_training_run: int) -> None:
    """What the original CoOp code saves: a Dassl dict whose scheduler state pickles the
    successor CosineAnnealingLR (and, through it, the SGD optimizer)."""
    width = ctx.shape[-1]
    param = torch.nn.Parameter(ctx.clone())
    optim = torch.optim.SGD([param], lr=0.002, momentum=0.9, weight_decay=5e-4)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=2.0)
    scheduler_state = {
        "cons_lr": 1e-5, "successor": successor, "warmup_epoch": 1, "base_lrs": [0.002],
        "last_epoch": 1, "_step_count": 3, "_get_lr_called_within_step": False, "_last_lr": [0.001],
    }
    state = {
        "state_dict": {
            "ctx": ctx,
            # Buffers of the training run's classes: they must be ignored and rebuilt.
            "token_prefix": torch.randn(n_cls_of_training_run, 1, width),
            "token_suffix": torch.randn(n_cls_of_training_run, 77 - 1 - ctx.shape[0], width),
        },
        "epoch": 2,
        "optimizer": optim.state_dict(),
        "scheduler": scheduler_state,
        "val_result": None,
    }
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    (path.parent / "checkpoint").write_text(path.name + "\n")


@torch.no_grad()
def _reference_coop_logits(clip_path, ctx, classnames, images) -> torch.Tensor:
    """CoOp's logits computed directly from CLIP's pieces (full 77-token context, no prompt learner)."""
    model = clip.build_model(clip.load_state_dict(str(clip_path))).float()
    n_ctx = ctx.shape[0]
    tokens = clip.tokenize([" ".join(["X"] * n_ctx) + " " + name.replace("_", " ") + "." for name in classnames])
    x = model.token_embedding(tokens)
    x[:, 1 : 1 + n_ctx] = ctx
    x = x + model.positional_embedding
    x = model.transformer(x, attn_mask=model.causal_mask(x.shape[1]))
    x = model.ln_final(x)
    text = x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ model.text_projection
    image = model.encode_image(images)
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * image @ text.t()


def test_checkpoint_saved_by_original_coop_code_loads_and_evaluates(caltech_root, tiny_clip_path, tmp_path):
    from engine.data import build_transform

    torch.manual_seed(0)
    ctx = torch.randn(N_CTX, 64) * 0.02
    model_dir = tmp_path / "original_run"
    _legacy_coop_checkpoint(model_dir / "prompt_learner" / "model.pth.tar-2", ctx, n_cls_of_training_run=10)

    out = tmp_path / "eval"
    argv = coop_argv(caltech_root, tiny_clip_path, out, "TEST.SAVE_PREDICTIONS", "True",
                     flags=("--eval-only", "--model-dir", str(model_dir), "--load-epoch", "2"))
    run_train(argv)
    preds = np.load(out / "predictions.npz")

    trainer = build_coop_trainer(argv)
    classnames = trainer.dm.dataset.classnames
    tfm = build_transform(trainer.cfg, is_train=False)
    from PIL import Image

    images = torch.stack([tfm(Image.open(caltech_root / p).convert("RGB")) for p in preds["impaths"]])
    expected = _reference_coop_logits(tiny_clip_path, ctx, classnames, images).numpy()
    # The same fp32 maths in other orders (batches, truncated prompts): logits are 100 * cosines,
    # moved by at most the two towers' relative errors.
    model = trainer.model.clip_model
    atol = cosine_logit_atol(100.0, clip_image_relative_atol(model), clip_text_relative_atol(model))
    np.testing.assert_allclose(preds["logits"], expected, atol=atol, rtol=0)


@pytest.mark.parametrize("position", ["middle", "front"])
def test_class_token_position_places_class_tokens_as_the_original(caltech_root, tiny_clip_path, tmp_path, position):
    trainer = build_coop_trainer(
        coop_argv(caltech_root, tiny_clip_path, tmp_path, "TRAINER.COOP.CLASS_TOKEN_POSITION", position)
    )
    learner = trainer.model.prompt_learner
    prompts = learner()
    end_prompts = torch.cat([learner.token_prefix, learner.ctx.unsqueeze(0).expand(learner.n_cls, -1, -1),
                             learner.token_suffix], dim=1)
    half = N_CTX // 2
    for i, n in enumerate(learner.name_lens):
        class_tokens = end_prompts[i, 1 + N_CTX : 1 + N_CTX + n]
        if position == "middle":
            expected = torch.cat([end_prompts[i, :1], learner.ctx[:half], class_tokens, learner.ctx[half:],
                                  end_prompts[i, 1 + N_CTX + n :]])
        else:
            expected = torch.cat([end_prompts[i, :1], class_tokens, learner.ctx, end_prompts[i, 1 + N_CTX + n :]])
        assert torch.equal(prompts[i], expected)
    # The EOS position does not move: it still holds the EOS embedding.
    eos = trainer.model.clip_model.token_embedding.weight[clip.EOT_TOKEN]
    rows = prompts[torch.arange(learner.n_cls), learner.eot_indices]
    assert torch.equal(rows, eos.expand_as(rows))  # embedding rows are copied, not computed


def test_ctx_init_overrides_n_ctx_and_copies_word_embeddings(caltech_root, tiny_clip_path, tmp_path):
    trainer = build_coop_trainer(
        coop_argv(caltech_root, tiny_clip_path, tmp_path, "TRAINER.COOP.CTX_INIT", "a photo of a",
                  "TRAINER.COOP.N_CTX", "16", "TRAINER.COOP.CSC", "True")
    )
    learner = trainer.model.prompt_learner
    assert learner.ctx.shape == (4, 64)  # 4 words, shared even though CSC was asked for
    embedding = trainer.model.clip_model.token_embedding.weight
    assert torch.equal(learner.ctx.detach(), embedding[[320, 1125, 539, 320]])


def test_class_specific_context_has_one_context_per_class(caltech_root, tiny_clip_path, tmp_path):
    trainer = build_coop_trainer(coop_argv(caltech_root, tiny_clip_path, tmp_path, "TRAINER.COOP.CSC", "True"))
    assert trainer.model.prompt_learner.ctx.shape == (6, N_CTX, 64)
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]


def test_lr_follows_warmup_then_cosine_per_epoch(caltech_root, tiny_clip_path, tmp_path):
    trainer = build_coop_trainer(coop_argv(caltech_root, tiny_clip_path, tmp_path, epochs=4))
    seen = []
    original = trainer.run_epoch

    def record_lr():
        seen.append(trainer.get_current_lr())
        original()

    trainer.run_epoch = record_lr
    trainer.train()
    expected = [1e-5] + [0.002 * (1 + math.cos(math.pi * (e - 1) / 4)) / 2 for e in range(1, 4)]
    assert seen == pytest.approx(expected, rel=1e-9)


def test_nan_loss_stops_with_epoch_and_step(caltech_root, tiny_clip_path, tmp_path, monkeypatch):
    from trainers.coop import CoOpModel

    monkeypatch.setattr(CoOpModel, "logits", lambda self, features: torch.full(
        (features.image.shape[0], 6), float("nan"), requires_grad=True))
    with pytest.raises(FloatingPointError, match=r"epoch 1/3, batch 1/6.*lower OPTIM\.LR"):
        run_train(coop_argv(caltech_root, tiny_clip_path, tmp_path / "run"))


def test_checkpoint_of_another_configuration_is_a_clear_error(caltech_root, tiny_clip_path, tmp_path):
    model_dir = tmp_path / "other"
    _legacy_coop_checkpoint(model_dir / "prompt_learner" / "model.pth.tar-2", torch.zeros(16, 64), 6)
    argv = coop_argv(caltech_root, tiny_clip_path, tmp_path / "eval",
                     flags=("--eval-only", "--model-dir", str(model_dir), "--load-epoch", "2"))
    with pytest.raises(RuntimeError, match=r"ctx: checkpoint \(16, 64\) vs model \(4, 64\)"):
        run_train(argv)


def test_missing_checkpoint_names_the_file_and_what_exists(caltech_root, tiny_clip_path, tmp_path):
    model_dir = tmp_path / "run"
    run_train(coop_argv(caltech_root, tiny_clip_path, model_dir, epochs=1))
    argv = coop_argv(caltech_root, tiny_clip_path, tmp_path / "eval",
                     flags=("--eval-only", "--model-dir", str(model_dir), "--load-epoch", "50"))
    with pytest.raises(FileNotFoundError, match=r"model\.pth\.tar-50.*model\.pth\.tar-1"):
        run_train(argv)


@pytest.mark.parametrize("prec,ctx_dtype", [("fp16", torch.float16), ("amp", torch.float32)])
def test_fp16_and_amp_precisions_train_the_context(caltech_root, tiny_clip_path, tmp_path, prec, ctx_dtype):
    argv = coop_argv(caltech_root, tiny_clip_path, tmp_path, "TRAINER.COOP.PREC", prec, "OPTIM.LR", "0.05", epochs=2)
    trainer = build_coop_trainer(argv)
    learner = trainer.model.prompt_learner
    assert learner.ctx.dtype == ctx_dtype  # fp16: the original's fp16 parameters updated by SGD directly
    assert trainer.model.clip_model.dtype == (torch.float16 if prec == "fp16" else torch.float32)
    before = learner.ctx.detach().clone()
    trainer.train()
    assert torch.isfinite(learner.ctx).all() and not torch.equal(learner.ctx, before)
    assert trainer.last_test is not None and 0.0 <= trainer.last_test["results"]["accuracy"] <= 100.0


def test_best_val_keeps_and_deploys_the_best_validation_epoch(caltech_root, tiny_clip_path, tmp_path):
    out = tmp_path / "run"
    argv = coop_argv(caltech_root, tiny_clip_path, out, "TEST.FINAL_MODEL", "best_val", "OPTIM.LR", "0.05", epochs=3)
    trainer = build_coop_trainer(argv)
    val_scores = []
    original_test = trainer.test

    def recording_test(split=None):
        result = original_test(split)
        if split == "val":
            val_scores.append(result)
        return result

    trainer.test = recording_test
    trainer.train()
    assert len(val_scores) == 3
    best = torch.load(out / "prompt_learner" / "model-best.pth.tar", weights_only=True)
    assert best["val_result"] == max(val_scores)
    assert best["epoch"] == 1 + val_scores.index(max(val_scores))
    # The final test ran with the best epoch's context.
    assert torch.equal(trainer.model.prompt_learner.ctx.detach(), best["state_dict"]["ctx"])


def test_requested_gpu_that_does_not_exist_is_an_error_and_plain_runs_use_the_cpu(monkeypatch):
    from engine.config import get_cfg_default
    from engine.errors import UserError
    from engine.trainer import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with pytest.raises(UserError, match=r"CUDA_VISIBLE_DEVICES=7.*USE_CUDA False"):
        select_device(get_cfg_default())
    cfg = get_cfg_default()
    cfg.USE_CUDA = False  # the user chose the CPU: no error
    assert select_device(cfg).type == "cpu"
    for visible in ("", "-1"):  # no GPU asked for (the runner's CPU slots set "")
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert select_device(get_cfg_default()).type == "cpu"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert select_device(get_cfg_default()).type == "cpu"


def test_cross_dataset_evaluation_rebuilds_prompts_for_the_target_classes(caltech_root, tiny_clip_path, tmp_path):
    """Train on one dataset, evaluate the same context on another with a different class set."""
    from tests.factories.coop_datasets_a import make_dtd_tree

    source = tmp_path / "source"
    run_train(coop_argv(caltech_root, tiny_clip_path, source, epochs=1))
    make_dtd_tree(caltech_root)  # a second dataset under the same root
    target = tmp_path / "target"
    argv = coop_argv(caltech_root, tiny_clip_path, target, "TEST.SAVE_PREDICTIONS", "True",
                     flags=("--eval-only", "--model-dir", str(source), "--load-epoch", "1"))
    argv[argv.index(config_path("datasets", "caltech101.yaml"))] = config_path("datasets", "dtd.yaml")
    record = run_train(argv)
    assert record["dataset"] == "DescribableTextures" and record["num_classes"] != 6
    preds = np.load(target / "predictions.npz")
    assert preds["logits"].shape[1] == record["num_classes"]
    assert all(p.startswith("dtd/images/") for p in preds["impaths"])


@pytest.mark.parametrize("position,csc", [("end", False), ("middle", False), ("front", False), ("end", True)])
def test_shared_context_prefix_computed_once_gives_the_full_forward(caltech_root, tiny_clip_path, tmp_path,
                                                                      position, csc):
    """fp32: SOS and the shared context ahead of the class name are the same tensors in every prompt, so
    the text tower computes them once; the class text features and the context's gradient equal the
    full forward's (every prompt, every block), to the tower's summation-order bound."""
    from tests.tolerances import transformer_atol

    trainer = build_coop_trainer(coop_argv(caltech_root, tiny_clip_path, tmp_path, "TRAINER.COOP.PREC", "fp32",
                                           "TRAINER.COOP.CLASS_TOKEN_POSITION", position,
                                           "TRAINER.COOP.CSC", str(csc)))
    model, learner = trainer.model, trainer.model.prompt_learner
    shared = learner.shared_prefix_length(learner.ctx)
    assert shared == {("end", False): 1 + N_CTX, ("middle", False): 1 + N_CTX // 2}.get((position, csc), 1)
    prompts = learner().detach()
    assert torch.equal(prompts[:, :shared], prompts[:1, :shared].expand(learner.n_cls, -1, -1))
    assert not torch.equal(prompts[:, shared], prompts[:1, shared].expand(learner.n_cls, -1))  # a class name next

    def features_and_ctx_grad(forward):
        learner.ctx.grad = None
        features = forward()
        (features * torch.randn(features.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
        return features.detach(), learner.ctx.grad.clone()

    clip_model = model.clip_model
    fast = features_and_ctx_grad(model.encode_texts)
    full = features_and_ctx_grad(lambda: clip_model.encode_text_embeddings(learner(), learner.eot_indices,
                                                                           rows_only=False))
    width, blocks = clip_model.transformer.width, clip_model.transformer.layers
    length = int(learner.eot_indices.max()) + 1
    torch.testing.assert_close(fast[0], full[0], atol=transformer_atol(full[0].abs().max(), width, length, blocks),
                               rtol=0)
    # The backward runs the same layers again in reverse; relative to the gradient's size.
    grad_atol = transformer_atol(full[1].abs().max(), width, length, 2 * blocks)
    torch.testing.assert_close(fast[1], full[1], atol=grad_atol, rtol=0)
