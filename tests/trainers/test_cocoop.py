"""CoCoOp on a tiny random CLIP: the original's checkpoint layout, the meta-net's input, batched
logits equal to the original's per-image loop, the chunked text encoding (plan, values, gradients,
memory held), fp16 checkpoints and the config check. Training and checkpoints end to end are in
tests/trainers/test_contract.py; the original's own logits in tests/conformance."""
from __future__ import annotations

import pytest
import torch

import clip
from benchmarks.cocoop_batching import per_image_logits
from tests.conftest import config_path
from tests.tolerances import FP32_UNIT_ROUNDOFF, clip_text_relative_atol, cosine_logit_atol
from trainers.cocoop import CoCoOp, CoCoOpModel, PromptLearner
from trainers.common import TEXT_ACTIVATION_FACTOR, ChunkPlan, encode_prompt_embeddings, text_chunk_plan

# Names of different token lengths, so the prompts' EOT positions differ; one with an underscore.
CLASSNAMES = ["face", "leopard", "motorbike", "accordion", "airplane", "red_panda"]
BIG_BUDGET_MB = 8192.0


@pytest.fixture(scope="module")
def clip_fp32(tiny_clip_path):
    return clip.build_model(clip.load_state_dict(str(tiny_clip_path)), precision="fp32")


def make_model(clip_model, text_chunk_mb: float = BIG_BUDGET_MB, ctx_init: str = "a photo of a") -> CoCoOpModel:
    torch.manual_seed(0)
    model = CoCoOpModel(clip_model, PromptLearner(clip_model, CLASSNAMES, n_ctx=16, ctx_init=ctx_init), text_chunk_mb)
    with torch.no_grad():  # a meta-net far from its initialisation, so that its bias matters
        for p in model.prompt_learner.meta_net.parameters():
            p.normal_(std=0.5)
    return model


def logit_atol(clip_model) -> float:
    """Two fp32 evaluations of the text tower differ by the tower's bound; the image side is shared."""
    return cosine_logit_atol(clip_model.logit_scale.exp().item(), clip_text_relative_atol(clip_model))


def test_prompt_learner_has_the_originals_keys_shapes_and_word_init(clip_fp32, tiny_clip_path):
    learner = PromptLearner(clip_fp32, CLASSNAMES, n_ctx=16, ctx_init="a photo of a")
    vis_dim, width = clip_fp32.visual.output_dim, clip_fp32.ln_final.weight.shape[0]
    shapes = {k: tuple(v.shape) for k, v in learner.state_dict().items()}
    assert shapes == {
        "ctx": (4, width),  # CTX_INIT's 4 words replace N_CTX 16
        "token_prefix": (6, 1, width),
        "token_suffix": (6, 77 - 1 - 4, width),
        "meta_net.linear1.weight": (vis_dim // 16, vis_dim), "meta_net.linear1.bias": (vis_dim // 16,),
        "meta_net.linear2.weight": (width, vis_dim // 16), "meta_net.linear2.bias": (width,),
    }
    words = clip_fp32.token_embedding(clip.tokenize("a photo of a"))[0, 1:5]
    assert torch.equal(learner.ctx.detach(), words.detach())
    assert PromptLearner(clip_fp32, CLASSNAMES, n_ctx=8).ctx.shape == (8, width)  # random init: N_CTX vectors
    # Under PREC fp16 the meta-net runs in fp16 too (the original's .half()).
    clip_fp16 = clip.build_model(clip.load_state_dict(str(tiny_clip_path)), precision="fp16")
    learner16 = PromptLearner(clip_fp16, CLASSNAMES, n_ctx=4)
    assert {p.dtype for p in learner16.parameters()} == {torch.float16}


def test_meta_net_reads_the_normalised_image_feature_and_shifts_every_token_alike(clip_fp32):
    model = make_model(clip_fp32)
    features = torch.randn(3, clip_fp32.visual.output_dim)
    with torch.no_grad():
        text = model.encode_texts(features)
        # Scaling by 4 is exact in floating point, and so is its normalisation: equal bit for bit.
        assert torch.equal(text, model.encode_texts(4.0 * features))
        assert not torch.allclose(text[0], text[1])  # each image has its own class text features
        normalised = features / features.norm(dim=-1, keepdim=True)
        shift = model.prompt_learner.context_per_image(normalised) - model.prompt_learner.ctx
        bias = model.prompt_learner.meta_net(normalised)
    # (ctx + bias) - ctx equals bias up to the rounding of one addition and one subtraction.
    atol = 2 * FP32_UNIT_ROUNDOFF * (model.prompt_learner.ctx.abs().max() + bias.abs().max()).item()
    assert (shift - bias.unsqueeze(1)).abs().max() <= atol


@pytest.mark.parametrize("ctx_init", ["a photo of a", ""])
def test_batched_logits_equal_the_originals_per_image_loop(clip_fp32, ctx_init):
    """Ours: B x C prompts in one call, cut after the last EOT. The original's arithmetic: per image
    its C prompts at 77 tokens."""
    model = make_model(clip_fp32, ctx_init=ctx_init)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = model(images)
        reference = per_image_logits(model, images)
    assert ours.shape == (3, len(CLASSNAMES))
    assert (ours - reference).abs().max() <= logit_atol(clip_fp32)
    assert (ours.argmax(1) == reference.argmax(1)).all()


def test_chunk_plan_follows_the_budget():
    length, width, layers, nbytes = 8, 64, 12, 4
    per_prompt_mb = length * width * nbytes * TEXT_ACTIVATION_FACTOR * layers / 2**20
    assert text_chunk_plan(10, length, width, layers, nbytes, 3 * per_prompt_mb, with_grad=True) == ChunkPlan(3, 4)
    assert text_chunk_plan(10, length, width, layers, nbytes, 3.5 * per_prompt_mb, with_grad=True) == ChunkPlan(3, 4)
    assert text_chunk_plan(9, length, width, layers, nbytes, 3 * per_prompt_mb, with_grad=True) == ChunkPlan(3, 3)
    # Without gradients only one block's activations are alive: 12x more prompts per chunk.
    # 36 fit, so 3 chunks, made even: 34 + 34 + 32.
    assert text_chunk_plan(100, length, width, layers, nbytes, 3 * per_prompt_mb, with_grad=False) == ChunkPlan(34, 3)
    assert text_chunk_plan(1000, length, width, layers, nbytes, 949 * per_prompt_mb, with_grad=True) == ChunkPlan(500, 2)
    assert text_chunk_plan(10, length, width, layers, nbytes, BIG_BUDGET_MB, with_grad=True) == ChunkPlan(10, 1)
    # A budget below one prompt still makes progress, one prompt at a time.
    assert text_chunk_plan(5, length, width, layers, nbytes, 1e-9, with_grad=True) == ChunkPlan(1, 5)


def counting_calls(monkeypatch, clip_model) -> list[int]:
    """Record the batch size of every text-tower call."""
    calls: list[int] = []
    original = clip_model.encode_text_embeddings

    def counted(x, eot_indices, **kwargs):
        calls.append(x.shape[0])
        return original(x, eot_indices, **kwargs)

    monkeypatch.setattr(clip_model, "encode_text_embeddings", counted)
    return calls


def test_chunked_encoding_gives_the_unchunked_features_and_gradients(clip_fp32, monkeypatch):
    torch.manual_seed(0)
    learner = PromptLearner(clip_fp32, CLASSNAMES, n_ctx=4)
    prompts = learner.assemble_per_image(learner.ctx.detach().unsqueeze(0).repeat(2, 1, 1) + torch.randn(2, 1, 64))
    prompts = prompts.flatten(0, 1).requires_grad_(True)  # 12 prompts
    eot = learner.eot_indices.repeat(2)
    upstream = torch.randn(12, clip_fp32.text_projection.shape[1])
    length = int(eot.max()) + 1
    text = clip_fp32.transformer
    five_prompts_mb = 5 * length * text.width * 4 * TEXT_ACTIVATION_FACTOR * text.layers / 2**20

    def run(budget_mb: float) -> tuple[torch.Tensor, torch.Tensor, set[int]]:
        """Features, gradient and the storages the autograd graph keeps for the backward."""
        prompts.grad = None
        saved: set[int] = set()

        def pack(t):
            saved.add(t.untyped_storage().data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            features = encode_prompt_embeddings(clip_fp32, prompts, eot, budget_mb)
        (features * upstream).sum().backward()
        return features.detach(), prompts.grad.clone(), saved

    calls = counting_calls(monkeypatch, clip_fp32)
    whole, whole_grad, whole_saved = run(BIG_BUDGET_MB)
    assert calls == [12]
    calls.clear()
    chunked, chunked_grad, chunked_saved = run(five_prompts_mb)
    # 3 chunks of <= 5 prompts, made even; each recomputed once in the backward pass (activation checkpointing).
    assert calls == [4, 4, 4] * 2
    # Same maths in other shapes: the text tower's bound (forward), twice for the backward through it.
    bound = clip_text_relative_atol(clip_fp32)
    assert (chunked - whole).abs().max() <= bound * whole.abs().max()
    assert (chunked_grad - whole_grad).abs().max() <= 2 * bound * whole_grad.abs().max()
    # Checkpointed chunks keep nothing for the backward but (views of) their inputs; one call keeps its activations.
    inputs = {prompts.untyped_storage().data_ptr(), eot.untyped_storage().data_ptr()}
    assert chunked_saved <= inputs and len(whole_saved - inputs) > 10


def test_chunked_model_logits_equal_unchunked(clip_fp32, monkeypatch):
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        whole = make_model(clip_fp32)(images)
        calls = counting_calls(monkeypatch, clip_fp32)
        chunked = make_model(clip_fp32, text_chunk_mb=1e-9)(images)  # one prompt per call
    assert calls == [1] * 4 * len(CLASSNAMES)
    assert (chunked - whole).abs().max() <= logit_atol(clip_fp32)


def cocoop_cfg(**opts):
    import train

    argv = ["--trainer", "CoCoOp", "--config-file", config_path("trainers", "CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1.yaml")]
    for key, value in opts.items():
        argv += [key, value]
    return train.setup_cfg(train.build_parser().parse_args(argv))


def test_config_keys_have_the_originals_defaults_and_the_budget_is_checked():
    import train
    from engine.errors import ConfigValueError

    cfg = train.setup_cfg(train.build_parser().parse_args(["--trainer", "CoCoOp"]))
    assert (cfg.TRAINER.COCOOP.N_CTX, cfg.TRAINER.COCOOP.CTX_INIT, cfg.TRAINER.COCOOP.PREC) == (16, "", "fp16")
    recipe = cocoop_cfg()
    assert (recipe.TRAINER.COCOOP.N_CTX, recipe.TRAINER.COCOOP.CTX_INIT) == (4, "a photo of a")
    assert recipe.DATALOADER.TRAIN_X.BATCH_SIZE == 1 and recipe.OPTIM.MAX_EPOCH == 10
    with pytest.raises(ConfigValueError, match="TRAINER.COCOOP.TEXT_CHUNK_MB"):
        CoCoOp.check_cfg(cocoop_cfg(**{"TRAINER.COCOOP.TEXT_CHUNK_MB": "0"}))


def test_an_fp16_checkpoint_loads_into_an_fp32_run(caltech_root, tiny_clip_path, tmp_path):
    """The original saves fp16 tensors under PREC fp16; an fp32 run loads them (cast on load)."""
    import train
    from engine import build_trainer

    argv = ["--root", str(caltech_root), "--trainer", "CoCoOp", "--eval-only", "--output-dir", str(tmp_path / "out"),
            "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
            "--config-file", config_path("trainers", "CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1.yaml"),
            "MODEL.BACKBONE.NAME", str(tiny_clip_path), "TRAINER.COCOOP.PREC", "fp32",
            "DATALOADER.NUM_WORKERS", "0", "DATASET.SUBSAMPLE_CLASSES", "new"]
    trainer = build_trainer(train.setup_cfg(train.build_parser().parse_args(argv)))
    own = trainer.model.prompt_learner.state_dict()
    # What the original saves: every key, fp16, the class buffers of other (base) classes.
    saved = {k: torch.randn(7, *v.shape[1:]) if k.startswith("token_") else torch.randn_like(v)
             for k, v in own.items()}
    saved = {k: v.half() for k, v in saved.items()}
    folder = tmp_path / "model" / "prompt_learner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": saved, "epoch": 10}, folder / "model.pth.tar-10")
    trainer.load_model(str(tmp_path / "model"), epoch=10)
    loaded = trainer.model.prompt_learner.state_dict()
    for key in ("ctx", "meta_net.linear1.weight", "meta_net.linear2.bias"):
        assert loaded[key].dtype == torch.float32 and torch.equal(loaded[key], saved[key].float())
    assert torch.equal(loaded["token_suffix"], own["token_suffix"])  # rebuilt for the current classes
    batch = next(iter(trainer.test_loader))
    assert torch.isfinite(trainer.model_inference(batch["img"])).all()
