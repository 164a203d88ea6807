"""Skip Tuning on a tiny random-weight CLIP (2 blocks per encoder, ω = 1) and the tiny Caltech101 tree:
LSkip (cache = live frozen prefix, what trains), CSkip (subset size, ground truth, remapping), the
batch plan, cost entries in results.json, and checkpoints in the original's layout."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clip
from tests.conftest import config_path, run_train
from tests.tolerances import clip_image_relative_atol, clip_text_relative_atol, cosine_logit_atol
from trainers.skip_tuning import (
    draw_keep_mask,
    num_top_classes,
    plan_batches,
    reduced_max_epoch,
    select_classes,
)

RESOLUTION = 32


def skip_argv(root, clip_path, out, *opts: str, epochs: int = 2, trainer: str = "SkipTuning", flags: tuple = ()) -> list[str]:
    """train.py arguments for a tiny run; `flags` go before the KEY VALUE options."""
    folder, fname = ("SkipTuning", "vit_b16_bs4.yaml") if trainer == "SkipTuning" else ("FinetuneCLIP", "vit_b16_ep10_bs4.yaml")
    return [
        "--root", str(root), "--seed", "1", "--trainer", trainer,
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", folder, fname),
        "--output-dir", str(out),
        *flags,
        "MODEL.BACKBONE.NAME", str(clip_path),
        "INPUT.SIZE", f"({RESOLUTION}, {RESOLUTION})",
        "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TEST.BATCH_SIZE", "8",
        "TRAINER.PREC", "fp32",
        "TRAINER.SKIP.START_LAYER", "1",
        "OPTIM.MAX_EPOCH", str(epochs),
        *opts,
    ]


def build_trainer_from(argv):
    import train
    from engine import build_trainer

    return build_trainer(train.setup_cfg(train.build_parser().parse_args(argv)))


def test_top_k_follows_the_original_formula():
    # (classes, TOP_RATIO, MAX_TOP) -> k, including the spec's b2n table for the defaults.
    cases = {(500, 0.5, 50): 50, (199, 0.5, 50): 50, (98, 0.5, 50): 49, (50, 0.5, 50): 25, (51, 0.5, 50): 26,
             (24, 0.5, 50): 12, (19, 0.5, 50): 10, (5, 0.5, 50): 3, (1000, 0.5, 50): 50,
             (10, 3, 50): 3, (10, 30, 50): 10, (7, 0.3, 50): 3, (100, 0.9, 20): 20}
    for (c, ratio, cap), k in cases.items():
        assert num_top_classes(c, ratio, cap) == k, (c, ratio, cap)


@pytest.mark.parametrize("num_classes", [5, 19, 51, 200])
def test_keep_mask_keeps_top_k_and_thins_lower_ranks_exponentially(num_classes):
    k = num_top_classes(num_classes, 0.5, 50)
    lam = 0.3
    masks = torch.stack([draw_keep_mask(num_classes, k, lam, torch.Generator().manual_seed(s)) for s in range(400)])
    assert masks[:, :k].all()
    rest = num_classes - k
    x = np.linspace(0, 5, rest)
    pdf = np.exp(-x / lam)
    expected = (pdf - pdf.min()) / (pdf.max() - pdf.min()) if rest > 1 else np.zeros(rest)
    observed = masks[:, k:].double().mean(0).numpy()
    # 400 seeded draws (the same on every machine): a frequency's std is at most 0.025, so 0.1 is 4 sigma.
    assert np.abs(observed - expected).max() < 0.1
    assert not masks[:, -1].any()  # probability 0 at the last rank
    if rest > 0:
        assert masks[:, k].all()  # probability 1 at the first skipped rank


def test_keep_mask_edge_cases():
    assert not draw_keep_mask(4, 3, 0.3)[3]  # one remaining rank: 0/0 in the original, never kept
    assert draw_keep_mask(4, 4, 0.3).all()
    with pytest.raises(ValueError, match="LAMBDA"):
        draw_keep_mask(10, 5, 0.0)


def test_select_classes_keeps_ground_truth_and_remaps_labels():
    gen = torch.Generator().manual_seed(0)
    for num_classes, batch in [(6, 4), (19, 4), (50, 8), (120, 4)]:
        k = num_top_classes(num_classes, 0.5, 50)
        mask = draw_keep_mask(num_classes, k, 0.3, gen)
        prototypes = F.normalize(torch.randn(num_classes, 16, generator=gen), dim=-1)
        for trial in range(20):
            features = torch.randn(batch, 16, generator=gen)
            labels = torch.randint(0, num_classes, (batch,), generator=gen)
            if trial % 2:
                labels[:] = labels[0]  # single-class batches, as the plan makes them
            selected, remapped = select_classes(features, prototypes, labels, mask)
            assert torch.equal(selected, selected.sort().values)
            assert torch.equal(selected[remapped], labels)  # the remap points at each image's class
            if len(labels.unique()) <= k:
                assert len(selected) == int(mask.sum())  # the subset size is fixed for the run
            # The always-kept ranks are the classes most similar to some image of the batch.
            sim = F.normalize(features, dim=-1) @ prototypes.t()
            sim[torch.arange(batch), labels] = 1e4
            top = set(sim.max(0).values.argsort(descending=True)[:k].tolist())
            assert top <= set(selected.tolist())


def test_batch_plan_single_class_and_random():
    rng = random.Random(0)
    labels = [c for c in range(5) for _ in range(16)]  # 16 shots
    plan = plan_batches(labels, 4, single_class=True, rng=rng)
    assert len(plan) == 4 * 5
    assert all(len({labels[i] for i in b}) == 1 for b in plan)
    assert sorted(i for b in plan for i in b) == list(range(80))  # every sample once
    odd = [c for c in range(3) for _ in range(6)]  # 6 per class: one batch each, 2 left over
    plan = plan_batches(odd, 4, single_class=True, rng=rng)
    assert len(plan) == 3 and len({i for b in plan for i in b}) == 12
    plan = plan_batches(list(range(10)), 4, single_class=False, rng=rng)
    assert len(plan) == 2 and len({i for b in plan for i in b}) == 8
    with pytest.raises(ValueError, match="BATCH_SIZE"):
        plan_batches([0, 1, 2], 4, single_class=False, rng=rng)


def test_epoch_reduction_on_the_three_large_datasets():
    assert reduced_max_epoch("ImageNet", 20) == 5
    assert reduced_max_epoch("SUN397", 40) == 10
    assert reduced_max_epoch("Food101", 10) == 2
    assert reduced_max_epoch("Caltech101", 20) == 20


def test_cached_states_equal_the_live_frozen_prefix_and_train_the_same(caltech_root, tiny_clip_path, tmp_path):
    torch.manual_seed(0)
    trainer = build_trainer_from(skip_argv(caltech_root, tiny_clip_path, tmp_path / "r", "TRAINER.SKIP.TOP_RATIO", "1.0"))
    model = trainer.model
    model.cache_text()
    images = torch.randn(4, 3, RESOLUTION, RESOLUTION)
    labels = torch.tensor([0, 2, 2, 5])
    hidden = model.image_prefix(images)
    visual = model.clip_model.visual
    live = visual.run_blocks(visual.embed(images), end=1)
    assert torch.equal(hidden, live)

    # Training from the cache = training the same frozen-prefix model on the images (TOP_RATIO 1: all classes).
    trainable = [p for p in model.parameters() if p.requires_grad]
    logits_cached, targets, selected = model.forward_cached(hidden, labels)
    assert torch.equal(selected, torch.arange(6)) and torch.equal(targets, labels)
    grads_cached = torch.autograd.grad(F.cross_entropy(logits_cached, targets), trainable)
    logits_live = model(images)
    # The same fp32 maths, possibly summed in other orders: logits are 100 * cosines, moved by at
    # most the towers' relative errors; a gradient's backward pass runs the same chain once more.
    img_rel, txt_rel = clip_image_relative_atol(model.clip_model), clip_text_relative_atol(model.clip_model)
    torch.testing.assert_close(logits_cached, logits_live, atol=cosine_logit_atol(100.0, img_rel, txt_rel), rtol=0)
    grads_live = torch.autograd.grad(F.cross_entropy(logits_live, labels), trainable)
    for g_c, g_l in zip(grads_cached, grads_live):
        torch.testing.assert_close(g_c, g_l, atol=2 * (img_rel + txt_rel) * float(g_l.abs().max()), rtol=0)


def test_only_blocks_from_start_layer_and_heads_train(caltech_root, tiny_clip_path, tmp_path):
    trainer = build_trainer_from(skip_argv(caltech_root, tiny_clip_path, tmp_path / "r", "OPTIM.LR", "0.01", "OPTIM.NEW_LR", "0.005"))
    clip_model = trainer.model.clip_model
    expected = {n for n, _ in clip_model.named_parameters()
                if n.startswith(("transformer.resblocks.1.", "visual.transformer.resblocks.1.", "ln_final.", "visual.ln_post."))
                or n in ("text_projection", "visual.proj")}
    trainable = {n for n, p in clip_model.named_parameters() if p.requires_grad}
    assert trainable == expected
    assert trainer.parameter_counts()[0] == sum(p.numel() for n, p in clip_model.named_parameters() if n in expected)
    # Staged LR: text encoder at OPTIM.LR, image encoder at OPTIM.NEW_LR (the original's yaml semantics).
    lrs = sorted(g["initial_lr"] for g in trainer.optim.param_groups)
    assert lrs == [0.005, 0.01]

    before = {n: p.detach().clone() for n, p in clip_model.named_parameters()}
    trainer.before_train()
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 99
    trainer.forward_backward(trainer.epoch_batches()[0])
    for n, p in clip_model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == (n in expected), n
    trainer.close_writer()


def test_training_run_recaches_each_epoch_and_reports_cost(caltech_root, tiny_clip_path, tmp_path):
    out = tmp_path / "run"
    trainer = build_trainer_from(skip_argv(caltech_root, tiny_clip_path, out, "DATASET.NUM_SHOTS", "4", epochs=2))
    caches = []
    original_build = trainer.build_caches

    def recording_build():
        original_build()
        caches.append(trainer.image_cache.clone())

    trainer.build_caches = recording_build
    trainer.train()
    assert len(caches) == 2  # before training, then again before epoch 2
    assert caches[0].shape == caches[1].shape == (24, 1 + (RESOLUTION // 8) ** 2, 64)
    assert not torch.equal(caches[0], caches[1])  # fresh augmentation
    assert len(trainer.batch_plan) == 6  # 6 classes x 4 shots: one single-class batch per class
    record = trainer.save_results()
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(record))
    assert record["train_time_kind"] == "after_first_cache_incl_recaching"
    assert 0 < record["first_cache_time_s"] < record["cache_time_s"]
    # The sum and first_cache_time_s are each rounded to 3 decimals: off by at most 2 * 0.0005.
    expected = record["train_time_s"] + record["first_cache_time_s"]
    assert record["train_time_incl_first_cache_s"] == pytest.approx(expected, abs=1e-3 + 1e-9)
    assert record["classes_per_step"] == 4  # k = 3 of 6, plus rank 4 (probability 1)
    assert record["num_classes"] == 6  # evaluation uses all classes
    assert record["trainable_params"] < record["total_params"]
    assert record["peak_memory_kind"] == "cpu_peak_rss"
    assert (out / "learnable_params" / "model.pth.tar-2").is_file()


def original_layout_state_dict(openai_sd: dict) -> dict:
    """What the original Skip Tuning / FT-CLIP checkpoint holds: both encoder wrappers, original key names."""
    text_keys = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")
    out = {}
    for key, value in openai_sd.items():
        if key.startswith("visual."):
            out["image_encoder." + key[len("visual."):]] = value
        elif key.startswith(text_keys):
            out["text_encoder." + key] = value
    return out


@pytest.mark.parametrize("trainer_name", ["SkipTuning", "FinetuneCLIP"])
def test_checkpoint_in_the_original_layout_gives_the_reference_logits(trainer_name, caltech_root, tmp_path):
    import open_clip
    from engine.checkpoint import save_checkpoint
    from tests.factories.clip_checkpoint import random_openai_state_dict

    base = random_openai_state_dict("vit", seed=3)
    clip_file = tmp_path / "clip.pt"
    torch.save(base, clip_file)
    # "Fine-tuned" weights: every tensor of both encoders moved (fp16 where the original keeps fp16).
    gen = torch.Generator().manual_seed(7)
    tuned = {k: (v + 0.05 * torch.randn(v.shape, generator=gen).to(v.dtype)) if v.is_floating_point() and v.dim() else v
             for k, v in base.items()}
    tuned["logit_scale"] = base["logit_scale"]
    state = {"state_dict": original_layout_state_dict(tuned), "epoch": 5, "optimizer": None, "scheduler": None, "val_result": None}
    save_checkpoint(state, str(tmp_path / "orig" / "learnable_params"), model_name="model.pth.tar-5")

    trainer = build_trainer_from(skip_argv(caltech_root, clip_file, tmp_path / "eval", trainer=trainer_name))
    trainer.load_model(str(tmp_path / "orig"))  # no --load-epoch: the last epoch, as the original
    batch = next(iter(trainer.test_loader))
    images = batch["img"]
    trainer.set_model_mode("eval")
    trainer._eval_text_features = None
    ours = trainer.model_inference(images)

    # Reference: open_clip's independent CLIP with the tuned weights and the original's prompts.
    reference = open_clip.model.build_model_from_openai_state_dict(
        {k: v.float() for k, v in tuned.items()}).float().eval()
    classnames = trainer.dm.dataset.classnames
    tokens = open_clip.tokenize([f"itap of a {c.replace('_', ' ')}." for c in classnames])
    with torch.no_grad():
        img = F.normalize(reference.encode_image(images), dim=-1)
        txt = F.normalize(reference.encode_text(tokens), dim=-1)
        expected = reference.logit_scale.exp() * img @ txt.t()
    assert ours.shape == (len(images), len(classnames))
    # The same fp32 maths in another implementation (other summation orders): logits are 100 * cosines.
    clip_model = trainer.model.clip_model
    atol = cosine_logit_atol(100.0, clip_image_relative_atol(clip_model), clip_text_relative_atol(clip_model))
    torch.testing.assert_close(ours, expected, atol=atol, rtol=0)


def test_own_checkpoint_reloads_to_identical_logits(caltech_root, tiny_clip_path, tmp_path):
    out = tmp_path / "run"
    run_train(skip_argv(caltech_root, tiny_clip_path, out, "TEST.SAVE_PREDICTIONS", "True", epochs=1))
    saved = torch.load(out / "learnable_params" / "model.pth.tar-1", weights_only=True)["state_dict"]
    assert {k.split(".")[0] for k in saved} == {"text_encoder", "image_encoder"}
    assert "image_encoder.transformer.resblocks.0.attn.in_proj_weight" in saved  # frozen blocks saved too
    run_train(skip_argv(caltech_root, tiny_clip_path, tmp_path / "eval", "TEST.SAVE_PREDICTIONS", "True", epochs=1,
                        flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "1")))
    trained = np.load(out / "predictions.npz")["logits"]
    reloaded = np.load(tmp_path / "eval" / "predictions.npz")["logits"]
    assert np.array_equal(trained, reloaded)


def test_bad_skip_settings_are_refused(caltech_root, tiny_clip_path, tmp_path):
    with pytest.raises(ValueError, match="START_LAYER"):
        build_trainer_from(skip_argv(caltech_root, tiny_clip_path, tmp_path / "a", "TRAINER.SKIP.START_LAYER", "5"))
    with pytest.raises(ValueError, match="LAMBDA"):
        build_trainer_from(skip_argv(caltech_root, tiny_clip_path, tmp_path / "b", "TRAINER.SKIP.LAMBDA", "0.0"))


@pytest.mark.parametrize("prec", ["fp16", "amp"])
def test_fp16_and_amp_steps(prec, caltech_root, tiny_clip_path, tmp_path):
    # fp16: CLIP's mixed fp16 weights are updated in place by SGD (no fp32 master copy), as the original
    # (meant for CUDA; it also runs on CPU). amp: fp32 weights under autocast (bf16 on CPU).
    trainer = build_trainer_from(skip_argv(caltech_root, tiny_clip_path, tmp_path / prec, "TRAINER.PREC", prec, "OPTIM.LR", "0.01"))
    block = trainer.model.clip_model.visual.transformer.resblocks[1].attn
    assert block.in_proj_weight.dtype == (torch.float16 if prec == "fp16" else torch.float32)
    before = block.in_proj_weight.detach().clone()
    trainer.before_train()
    assert trainer.image_cache.dtype == block.in_proj_weight.dtype
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 99
    summary = trainer.forward_backward(trainer.epoch_batches()[0])
    trainer.close_writer()
    assert np.isfinite(summary["loss"])
    assert block.in_proj_weight.dtype == before.dtype and not torch.equal(block.in_proj_weight, before)
    logits = trainer.model_inference(next(iter(trainer.test_loader))["img"])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def skip_step_logits_and_grads(model, hidden, labels, rows_only: bool, monkeypatch):
    """Logits, remapped labels and the gradient of every trainable parameter of one Skip Tuning step."""
    from trainers.skip_tuning import SkipModel

    monkeypatch.setattr(SkipModel, "rows_only", property(lambda self: rows_only))
    trainable = [p for p in model.parameters() if p.requires_grad]
    logits, targets, selected = model.forward_cached(hidden, labels)
    return logits, targets, torch.autograd.grad(F.cross_entropy(logits, targets), trainable)


@pytest.mark.parametrize("start_layer", [0, 1])
def test_pooled_rows_and_shared_prefix_keep_logits_and_gradients(start_layer, caltech_root, tiny_clip_path, tmp_path,
                                                                  monkeypatch):
    """fp32 steps with the last block on the class token / EOT rows only and the prompts' shared start
    computed once are the same step: same logits and gradients as the plain blocks, to rounding."""
    from tests.tolerances import transformer_atol

    torch.manual_seed(0)
    trainer = build_trainer_from(skip_argv(caltech_root, tiny_clip_path, tmp_path / "r", "TRAINER.SKIP.TOP_RATIO", "1.0",
                                           "TRAINER.SKIP.START_LAYER", str(start_layer)))
    model = trainer.model
    assert model.rows_only  # fp32: on by default
    # Prompts of different lengths, so that each EOT row needs its own causal-mask row.
    names = ["cat", "sea lion", "red-tailed hawk", "golden retriever puppy", "ox", "a very long class name here"]
    model.tokenized_texts = clip.tokenize([f"a photo of a {n}." for n in names])
    model.cache_text()
    assert len(set(model.text_eot.tolist())) > 3
    assert model.text_prefix == 5  # <SOS> a photo of a
    hidden = model.image_prefix(torch.randn(4, 3, RESOLUTION, RESOLUTION))
    labels = torch.tensor([0, 2, 2, 5])
    full_logits, full_targets, full_grads = skip_step_logits_and_grads(model, hidden, labels, False, monkeypatch)
    rows_logits, rows_targets, rows_grads = skip_step_logits_and_grads(model, hidden, labels, True, monkeypatch)
    assert torch.equal(rows_targets, full_targets)
    # The trainable blocks and the heads split the same sums differently into matrix products, so
    # each tower's features differ by at most their summation-order bound (transformer_atol counts
    # the blocks plus two layers, covering the head); logits are 100 * cosines of them.
    clip_model = model.clip_model
    visual, blocks = clip_model.visual, clip_model.transformer.layers - start_layer
    img_rel = transformer_atol(1.0, visual.width, 1 + visual.grid_size**2, blocks=blocks)
    txt_rel = transformer_atol(1.0, clip_model.transformer.width, model.text_hidden.shape[1], blocks=blocks)
    torch.testing.assert_close(rows_logits, full_logits, atol=cosine_logit_atol(100.0, img_rel, txt_rel), rtol=0)
    # The backward runs the same chain once more, in reverse: twice the forward's relative bound. The
    # shared prefix's gradient is summed over the 6 prompts before its weight products, not inside
    # them: sums of 6 x length terms, shorter than the 12 x width a block's bound already counts.
    for g_rows, g_full in zip(rows_grads, full_grads):
        torch.testing.assert_close(g_rows, g_full, atol=2 * (img_rel + txt_rel) * float(g_full.abs().max()), rtol=0)
