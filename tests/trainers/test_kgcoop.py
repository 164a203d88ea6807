"""KgCoOp on a tiny random CLIP: the knowledge-guidance term against a value computed by hand (the
formula and the weight), the hand-crafted features computed once per class set with the dataset's
template, what checkpoints hold, and the original's config switches."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clip
from clip.model import CLIP
from engine.errors import ConfigValueError
from tests.conftest import config_path, run_train
from tests.tolerances import clip_text_relative_atol, fp32_atol
from trainers.kgcoop import KGCOOP_TEMPLATES

RESOLUTION = 32
WEIGHT = 8.0


def kgcoop_argv(root, clip_path, out, *opts: str, flags: tuple = ()) -> list[str]:
    return [
        "--root", str(root), "--seed", "1", "--trainer", "KgCoOp",
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "KgCoOp", "vit_b16_ep100_ctxv1.yaml"),
        "--output-dir", str(out), *flags,
        "MODEL.BACKBONE.NAME", str(clip_path), "INPUT.SIZE", f"({RESOLUTION}, {RESOLUTION})",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "8",
        "TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.W", str(WEIGHT), "OPTIM.MAX_EPOCH", "2", *opts,
    ]


def build(argv):
    import train
    from engine import build_trainer

    return build_trainer(train.setup_cfg(train.build_parser().parse_args(argv)))


@torch.no_grad()
def hand_crafted_features(clip_model, template: str, classnames: list[str]) -> torch.Tensor:
    """Frozen CLIP's features of the filled-in template, L2-normalised, computed here directly."""
    tokens = clip.tokenize([template.format(name.replace("_", " ")) for name in classnames])
    features = clip_model.encode_text(tokens)
    return features / features.norm(dim=-1, keepdim=True)


def test_loss_is_ce_plus_weighted_knowledge_guidance_computed_by_hand(caltech_root, tiny_clip_path, tmp_path):
    trainer = build(kgcoop_argv(caltech_root, tiny_clip_path, tmp_path))
    model, classnames = trainer.model, trainer.dm.dataset.classnames
    clip_text = hand_crafted_features(model.clip_model, "a photo of a {}.", classnames)  # Caltech101's template
    text_atol = clip_text_relative_atol(model.clip_model)
    assert torch.allclose(model.clip_text_features, clip_text, rtol=0, atol=text_atol)
    # The context starts as "a photo of a", i.e. as the hand-crafted prompt: the term starts at zero.
    # Move it so that the term is not trivially 0.
    with torch.no_grad():
        model.prompt_learner.ctx.add_(0.5 * torch.randn_like(model.prompt_learner.ctx))
    batch = next(iter(trainer.train_loader_x))
    images, labels = trainer.parse_batch_train(batch)
    out = model.training_step(images, labels)

    # By hand: the learned prompts are the template's token embeddings with the 4 context
    # positions replaced, encoded by the frozen text tower; the paper's squared distance of the
    # normalised features, halved, is the code's 1 - cos.
    with torch.no_grad():
        tokens = clip.tokenize([f"a photo of a {name.replace('_', ' ')}." for name in classnames])
        prompts = model.clip_model.token_embedding(tokens)
        prompts[:, 1:5] = model.prompt_learner.ctx
        learned = model.clip_model.encode_text_embeddings(prompts, tokens.argmax(dim=-1)).double()
    learned = learned / learned.norm(dim=-1, keepdim=True)
    expected_kg = WEIGHT * ((learned - clip_text.double()) ** 2).sum(dim=-1).mean() / 2
    assert expected_kg > 0.01 * WEIGHT
    # The term's fp32 evaluation: norms and dot products of embed_dim terms, a mean over the classes,
    # plus the features' own bound (a cosine moves by at most the two relative errors).
    dim = learned.shape[-1]
    atol = WEIGHT * (fp32_atol(1.0, 2 * dim + len(classnames) + 4) + 2 * text_atol)
    assert set(out.loss.regularisers) == {"kg"}
    assert out.loss.regularisers["kg"].item() == pytest.approx(expected_kg.item(), abs=atol)
    assert torch.equal(out.loss.ce, F.cross_entropy(out.logits, labels))
    assert torch.equal(out.loss.total, out.loss.ce + out.loss.regularisers["kg"])


def test_hand_crafted_features_are_computed_once_at_build(caltech_root, tiny_clip_path, tmp_path, monkeypatch):
    calls = {"encode_text": 0, "text_tower": 0}
    encode_text, encode_text_embeddings = CLIP.encode_text, CLIP.encode_text_embeddings

    def counting_encode_text(self, *args, **kwargs):
        calls["encode_text"] += 1
        return encode_text(self, *args, **kwargs)

    def counting_text_tower(self, *args, **kwargs):
        calls["text_tower"] += 1
        return encode_text_embeddings(self, *args, **kwargs)

    monkeypatch.setattr(CLIP, "encode_text", counting_encode_text)
    monkeypatch.setattr(CLIP, "encode_text_embeddings", counting_text_tower)
    trainer = build(kgcoop_argv(caltech_root, tiny_clip_path, tmp_path))
    assert calls == {"encode_text": 1, "text_tower": 1}  # the hand-crafted prompts, once
    buffer = trainer.model.clip_text_features
    before = buffer.clone()

    trainer.before_train()
    trainer.epoch = 0
    trainer.before_epoch()
    trainer.set_model_mode("train")
    batches = trainer.epoch_batches()
    trainer.num_batches = len(batches)
    for trainer.batch_idx, batch in enumerate(batches):
        summary = trainer.forward_backward(batch)
    trainer.close_writer()
    assert trainer.num_batches >= 2 and summary["kg"] > 0
    # One text-tower pass per step (the learned prompts); the hand-crafted features are reused.
    assert calls == {"encode_text": 1, "text_tower": 1 + trainer.num_batches}
    assert trainer.model.clip_text_features is buffer and torch.equal(buffer, before)


def test_the_datasets_template_gives_the_hand_crafted_features(caltech_root, tiny_clip_path, tmp_path):
    trainer = build(kgcoop_argv(caltech_root, tiny_clip_path, tmp_path, flags=("--eval-only",)))
    classnames = trainer.dm.dataset.classnames
    trainer.cfg.defrost()
    trainer.cfg.DATASET.NAME = "DescribableTextures"  # KgCoOp's own DTD template, not CoOp's "{} texture."
    model = trainer.build_method(trainer.model.clip_model, classnames)
    texture = hand_crafted_features(model.clip_model, "a photo of a {}, a type of texture.", classnames)
    assert KGCOOP_TEMPLATES["DescribableTextures"] == "a photo of a {}, a type of texture."
    assert torch.allclose(model.clip_text_features, texture, rtol=0, atol=clip_text_relative_atol(model.clip_model))
    plain = hand_crafted_features(model.clip_model, "a photo of a {}.", classnames)
    assert (model.clip_text_features - plain).abs().max() > 100 * clip_text_relative_atol(model.clip_model)


def test_checkpoint_holds_the_context_not_the_hand_crafted_features(caltech_root, tiny_clip_path, tmp_path):
    out = tmp_path / "run"
    run_train(kgcoop_argv(caltech_root, tiny_clip_path, out, "OPTIM.MAX_EPOCH", "1"))
    saved = torch.load(out / "prompt_learner" / "model.pth.tar-1", weights_only=True)
    assert set(saved["state_dict"]) == {"ctx", "token_prefix", "token_suffix"}
    assert saved["state_dict"]["ctx"].shape == (4, 64)  # CTX_INIT True: the 4 words of "a photo of a"
    # New classes: the context loads, the hand-crafted features are those of the new classes.
    new = build(kgcoop_argv(caltech_root, tiny_clip_path, tmp_path / "new", "DATASET.SUBSAMPLE_CLASSES", "new",
                            flags=("--eval-only",)))
    new.load_model(str(out), epoch=1)
    assert torch.equal(new.model.prompt_learner.ctx, saved["state_dict"]["ctx"])
    expected = hand_crafted_features(new.model.clip_model, "a photo of a {}.", new.dm.dataset.classnames)
    assert torch.allclose(new.model.clip_text_features, expected, rtol=0,
                          atol=clip_text_relative_atol(new.model.clip_model))


def test_ctx_init_is_a_switch_and_the_class_token_stays_at_the_end(caltech_root, tiny_clip_path, tmp_path):
    random_ctx = build(kgcoop_argv(caltech_root, tiny_clip_path, tmp_path, "TRAINER.COOP.CTX_INIT", "False",
                                   "TRAINER.COOP.N_CTX", "6", flags=("--eval-only",)))
    assert random_ctx.model.prompt_learner.ctx.shape == (6, 64)
    words = build(kgcoop_argv(caltech_root, tiny_clip_path, tmp_path, "TRAINER.COOP.N_CTX", "16",
                              flags=("--eval-only",)))
    with torch.no_grad():
        embedding = words.model.clip_model.token_embedding(clip.tokenize("a photo of a"))[0, 1:5]
    assert torch.equal(words.model.prompt_learner.ctx, embedding)  # N_CTX gives way to the 4 words
    with pytest.raises(ConfigValueError, match="CLASS_TOKEN_POSITION"):
        build(kgcoop_argv(caltech_root, tiny_clip_path, tmp_path, "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle"))
