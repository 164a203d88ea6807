"""MaPLe on a small random CLIP: logits against an independent forward written with the original's
layer-counter rule, the original's initialisation, every precision taking a training step (the
original crashes in fp32), what checkpoints hold, and clear errors for impossible settings."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clip
from engine.errors import ConfigValueError
from engine.trainer import CheckpointMismatchError
from tests.conftest import config_path
from tests.tolerances import transformer_atol

RESOLUTION, PATCH, LAYERS, TEXT_WIDTH, VISION_WIDTH = 32, 8, 4, 64, 128
DEPTH = 3  # prompts at the input and before blocks 1, 2; blocks 3.. run unchanged
N_CTX = 2


@pytest.fixture(scope="module")
def maple_clip_path(tmp_path_factory):
    """4 blocks per tower, vision width 128 != text width 64 (so proj's two sides differ)."""
    from tests.factories.clip_checkpoint import write_random_clip

    return write_random_clip(tmp_path_factory.mktemp("clip") / "maple.pt", "vit", vision_layers=LAYERS,
                             text_layers=LAYERS, vision_width=VISION_WIDTH, text_width=TEXT_WIDTH,
                             vision_patch_size=PATCH)


def maple_argv(root, clip_path, out, *opts: str, prec: str = "fp32", flags: tuple = ()) -> list[str]:
    return [
        "--root", str(root), "--seed", "1", "--trainer", "MaPLe",
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "MaPLe", "vit_b16_c2_ep5_batch4_2ctx.yaml"),
        "--output-dir", str(out), *flags,
        "MODEL.BACKBONE.NAME", str(clip_path), "INPUT.SIZE", f"({RESOLUTION}, {RESOLUTION})",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "8",
        "TRAINER.MAPLE.PREC", prec, "TRAINER.MAPLE.PROMPT_DEPTH", str(DEPTH), "OPTIM.MAX_EPOCH", "2", *opts,
    ]


def build(argv):
    import train
    from engine import build_trainer

    return build_trainer(train.setup_cfg(train.build_parser().parse_args(argv)))


@torch.no_grad()
def reference_logits(clip_model, learner, images: torch.Tensor) -> torch.Tensor:
    """The original's CustomCLIP.forward, written out on CLIP's blocks: a counter starting at 0 picks
    the next deep prompt set in every block after the first while sets are left."""
    deep_text = list(learner.compound_prompts_text)
    deep_vision = [proj(p) for proj, p in zip(learner.compound_prompt_projections, deep_text)]
    n = learner.ctx.shape[0]

    visual = clip_model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(len(images), 1, -1), x], dim=1) + visual.positional_embedding
    x = torch.cat([x, learner.proj(learner.ctx).expand(len(images), -1, -1)], dim=1)
    x = visual.ln_pre(x)
    counter = 0
    for i, block in enumerate(visual.transformer.resblocks):
        if i > 0 and counter < len(deep_vision):
            x = torch.cat([x[:, :-n], deep_vision[counter].expand(len(images), -1, -1)], dim=1)
            counter += 1
        x = block(x)
    image = visual.ln_post(x[:, 0]) @ visual.proj

    ctx = learner.ctx.expand(learner.n_cls, -1, -1)
    t = torch.cat([learner.token_prefix, ctx, learner.token_suffix], dim=1) + clip_model.positional_embedding
    mask = torch.full((t.shape[1], t.shape[1]), float("-inf")).triu(1)
    counter = 0
    for i, block in enumerate(clip_model.transformer.resblocks):
        if i > 0 and counter < len(deep_text):
            t = torch.cat([t[:, :1], deep_text[counter].expand(len(t), -1, -1), t[:, 1 + n:]], dim=1)
            counter += 1
        t = block(t, mask)
    t = clip_model.ln_final(t)
    text = t[torch.arange(len(t)), learner.eot_indices] @ clip_model.text_projection
    return clip_model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()


def test_logits_equal_the_originals_forward_written_out(caltech_root, maple_clip_path, tmp_path):
    trainer = build(maple_argv(caltech_root, maple_clip_path, tmp_path))
    model = trainer.model
    learner = model.prompt_learner
    # Move every learned tensor off its init, so that each one (and each deep projection separately) matters.
    torch.manual_seed(0)
    with torch.no_grad():
        for param in learner.parameters():
            param.add_(0.5 * torch.randn_like(param))
    images = next(iter(trainer.test_loader))["img"]
    logits = trainer.model_inference(images)
    expected = reference_logits(model.clip_model, learner, images)
    # Cosines of features that went through LAYERS blocks + embedding/head; the logit scale multiplies
    # the error (our text tower stops after the last EOT token: exact up to summation order).
    scale = model.clip_model.logit_scale.exp().item()
    atol = 2 * scale * transformer_atol(1.0, VISION_WIDTH, 77, LAYERS)
    assert torch.allclose(logits, expected, rtol=0, atol=atol), (logits - expected).abs().max()
    # Each deep prompt set reaches the logits (the counter rule uses all DEPTH - 1 of them).
    for i in range(DEPTH - 1):
        with torch.no_grad():
            bias = learner.compound_prompt_projections[i].bias
            bias.add_(3 * torch.randn_like(bias))  # not a constant: LayerNorm would remove it
        moved = trainer.model_inference(images)
        assert (moved - logits).abs().max() > atol, i
        logits = moved


def test_initialisation_is_the_originals(caltech_root, maple_clip_path, tmp_path):
    model = build(maple_argv(caltech_root, maple_clip_path, tmp_path)).model
    learner, clip_model = model.prompt_learner, model.clip_model
    # ctx = embeddings of the first N_CTX tokens of "a photo of a"; "of a" stays fixed after it.
    words = clip.tokenize("a photo of a")[0]
    embedding = clip_model.token_embedding(words)
    assert torch.equal(learner.ctx, embedding[1:1 + N_CTX])
    assert torch.equal(learner.token_suffix[:, :2], embedding[1 + N_CTX:3 + N_CTX].expand(learner.n_cls, -1, -1))
    # The deep projections start as copies of one Linear; the deep text prompts are N(0, 0.02²) draws.
    first = learner.compound_prompt_projections[0]
    for projection in learner.compound_prompt_projections:
        assert torch.equal(projection.weight, first.weight) and torch.equal(projection.bias, first.bias)
    assert len(learner.compound_prompts_text) == DEPTH - 1
    assert not torch.equal(learner.compound_prompts_text[0], learner.compound_prompts_text[1])
    linear = TEXT_WIDTH * VISION_WIDTH + VISION_WIDTH
    expected = N_CTX * TEXT_WIDTH + linear + (DEPTH - 1) * (N_CTX * TEXT_WIDTH + linear)
    assert sum(p.numel() for p in learner.parameters()) == expected


@pytest.mark.parametrize("prec", ["fp32", "amp", "fp16"])
def test_every_precision_takes_a_training_step(prec, caltech_root, maple_clip_path, tmp_path):
    trainer = build(maple_argv(caltech_root, maple_clip_path, tmp_path, prec=prec))
    learner = trainer.model.prompt_learner
    # As the original: ctx and proj in CLIP's precision, the deep prompts and projections in fp32.
    clip_dtype = torch.float16 if prec == "fp16" else torch.float32
    assert learner.ctx.dtype == learner.proj.weight.dtype == clip_dtype
    assert learner.compound_prompts_text[0].dtype == learner.compound_prompt_projections[0].weight.dtype == torch.float32
    before = {name: p.detach().clone() for name, p in learner.named_parameters()}
    trainer.before_train()
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 1
    trainer.set_model_mode("train")
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    trainer.close_writer()
    assert torch.isfinite(torch.tensor(summary["loss"]))
    unchanged = [name for name, p in learner.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged, unchanged


def test_checkpoint_holds_the_originals_keys_and_rejects_a_missing_prompt(caltech_root, maple_clip_path, tmp_path):
    trainer = build(maple_argv(caltech_root, maple_clip_path, tmp_path / "run"))
    trainer.save_model(0, str(tmp_path / "run"))
    path = tmp_path / "run" / "MultiModalPromptLearner" / "model.pth.tar-1"
    checkpoint = torch.load(path, weights_only=True)
    keys = set(checkpoint["state_dict"])
    assert {"prompt_learner.ctx", "prompt_learner.proj.weight", "prompt_learner.token_prefix",
            f"prompt_learner.compound_prompts_text.{DEPTH - 2}",
            f"prompt_learner.compound_prompt_projections.{DEPTH - 2}.bias"} <= keys
    assert all(key.startswith("prompt_learner.") for key in keys)

    del checkpoint["state_dict"]["prompt_learner.compound_prompts_text.0"]
    torch.save(checkpoint, path)
    other = build(maple_argv(caltech_root, maple_clip_path, tmp_path / "eval", flags=("--eval-only",)))
    with pytest.raises(CheckpointMismatchError, match="compound_prompts_text.0"):
        other.load_model(str(tmp_path / "run"), epoch=1)


@pytest.mark.parametrize("opts,message", [
    (("TRAINER.MAPLE.PROMPT_DEPTH", "0"), "PROMPT_DEPTH must be >= 1"),
    (("TRAINER.MAPLE.PROMPT_DEPTH", str(LAYERS + 1)), f"use at most {LAYERS}"),
    (("TRAINER.MAPLE.CTX_INIT", "a"), "has 1 tokens, fewer than TRAINER.MAPLE.N_CTX=2"),
])
def test_impossible_settings_are_config_errors(opts, message, caltech_root, maple_clip_path, tmp_path):
    with pytest.raises(ConfigValueError, match=message):
        build(maple_argv(caltech_root, maple_clip_path, tmp_path, *opts))


def test_a_resnet_backbone_is_a_config_error(caltech_root, tmp_path):
    from tests.factories.clip_checkpoint import write_random_clip

    rn = write_random_clip(tmp_path / "rn.pt", "rn")
    argv = maple_argv(caltech_root, rn, tmp_path / "out")
    argv[argv.index("INPUT.SIZE") + 1] = "(64, 64)"
    with pytest.raises(ConfigValueError, match="ResNet image encoder"):
        build(argv)


def test_the_shared_prompt_start_is_computed_once_with_the_deep_prompts(caltech_root, maple_clip_path, tmp_path):
    """fp32: SOS, the 2 context vectors and the frozen "of a" are the same in every class's prompt, and
    the deep text prompts replace tokens inside them, so the text tower computes that start once. The
    class text features and the gradients of the context and of every deep text prompt equal the full
    forward's, to the tower's summation-order bound."""
    trainer = build(maple_argv(caltech_root, maple_clip_path, tmp_path))
    model, learner = trainer.model, trainer.model.prompt_learner
    shared = model.text_shared_prefix()
    assert shared == 1 + N_CTX + 2  # [SOS] [V1] [V2] of a | <class name>.
    prompts = learner.text_prompts().detach()
    assert torch.equal(prompts[:, :shared], prompts[:1, :shared].expand(learner.n_cls, -1, -1))
    assert not torch.equal(prompts[:, shared], prompts[:1, shared].expand(learner.n_cls, -1))  # a class name next
    trained = [learner.ctx, *learner.compound_prompts_text]

    def features_and_grads(forward):
        for param in trained:
            param.grad = None
        features = forward()
        (features * torch.randn(features.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
        return features.detach(), [param.grad.clone() for param in trained]

    clip_model = model.clip_model
    fast = features_and_grads(model.encode_texts)
    full = features_and_grads(lambda: clip_model.encode_text_embeddings(
        learner.text_prompts(), learner.eot_indices, layer_prompts=learner.text_layer_prompts(), rows_only=False))
    length = int(learner.eot_indices.max()) + 1
    torch.testing.assert_close(fast[0], full[0], rtol=0,
                               atol=transformer_atol(full[0].abs().max(), TEXT_WIDTH, length, LAYERS))
    for fast_grad, full_grad in zip(fast[1], full[1]):
        assert full_grad.abs().max() > 0
        # The backward runs the same layers again in reverse; relative to the gradient's size.
        torch.testing.assert_close(fast_grad, full_grad, rtol=0,
                                   atol=transformer_atol(full_grad.abs().max(), TEXT_WIDTH, length, 2 * LAYERS))
