"""PromptSRC on a tiny random CLIP (2 blocks per tower): the prompts enter both towers as in the original
(checked against a forward written out block by block), the three self-consistency terms and the frozen
teacher against values computed by hand, GPA's weights against the Gaussian formula and its aggregate
against the per-epoch tensors (and a resumed run), the regularisers holding the features near frozen
CLIP's, and the original's checkpoint layout loading."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clip
from clip.model import CLIP
from engine.errors import ConfigValueError
from tests.conftest import config_path, run_train
from tests.tolerances import clip_image_relative_atol, clip_text_relative_atol, fp32_atol
from trainers.common import IMAGENET_TEMPLATES
from trainers.promptsrc import PromptSRC, gpa_weights

RESOLUTION = 32
N_CTX = 4


def psrc_argv(root, clip_path, out, *opts: str, flags: tuple = ()) -> list[str]:
    return [
        "--root", str(root), "--seed", "1", "--trainer", "PromptSRC",
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "PromptSRC", "vit_b16_c2_ep20_batch4_4+4ctx.yaml"),
        "--output-dir", str(out), *flags,
        "MODEL.BACKBONE.NAME", str(clip_path), "INPUT.SIZE", f"({RESOLUTION}, {RESOLUTION})",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "8",
        "TRAINER.PROMPTSRC.PREC", "fp32", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2",
        "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "OPTIM.MAX_EPOCH", "2", *opts,
    ]


def build(argv):
    import train
    from engine import build_trainer

    return build_trainer(train.setup_cfg(train.build_parser().parse_args(argv)))


def hand_image_features(clip_model, images, shallow, deep) -> torch.Tensor:
    """The original's IVLP vision forward, block by block: prompts appended after the patch tokens (after
    the positional embedding, before ln_pre); before block 1 the last N tokens are replaced."""
    visual = clip_model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(torch.cat([x, shallow.expand(x.shape[0], -1, -1)], dim=1))
    x = visual.transformer.resblocks[0](x)
    x = torch.cat([x[:, :-N_CTX], deep.expand(x.shape[0], -1, -1)], dim=1)
    x = visual.transformer.resblocks[1](x)
    return visual.ln_post(x[:, 0]) @ visual.proj


def hand_text_features(clip_model, classnames, ctx, deep) -> torch.Tensor:
    """The original's IVLP text forward: [SOS] ctx <class>. [EOS], positions 1..N replaced before block 1."""
    tokens = clip.tokenize([f"a photo of a {name.replace('_', ' ')}." for name in classnames])
    x = clip_model.token_embedding(tokens)
    x = torch.cat([x[:, :1], ctx.expand(len(classnames), -1, -1), x[:, 1 + N_CTX:]], dim=1)
    x = x + clip_model.positional_embedding
    mask = clip_model.causal_mask(x.shape[1])
    x = clip_model.transformer.resblocks[0](x, mask)
    x = torch.cat([x[:, :1], deep.expand(len(classnames), -1, -1), x[:, 1 + N_CTX:]], dim=1)
    x = clip_model.ln_final(clip_model.transformer.resblocks[1](x, mask))
    return x[torch.arange(len(classnames)), tokens.argmax(dim=-1)] @ clip_model.text_projection


def perturb_prompts(model, scale: float = 0.5) -> None:
    """Move every prompt away from its start, so prompted and frozen features differ."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, param in model.named_trainable_parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def test_prompts_enter_both_towers_as_the_original(caltech_root, tiny_clip_path, tmp_path):
    trainer = build(psrc_argv(caltech_root, tiny_clip_path, tmp_path, flags=("--eval-only",)))
    model, classnames = trainer.model, trainer.dm.dataset.classnames
    names = {name: tuple(p.shape) for name, p in model.named_trainable_parameters()}
    # The original's checkpoint names; depth 2 gives one deep prompt per tower (block 1).
    assert names == {
        "VLPromptLearner.image_encoder.VPT": (N_CTX, 64),
        "VLPromptLearner.image_encoder.transformer.resblocks.1.VPT_shallow": (N_CTX, 64),
        "VLPromptLearner.text_encoder.transformer.resblocks.1.VPT_shallow": (N_CTX, 64),
        "VLPromptLearner.prompt_learner.ctx": (N_CTX, 64),
    }
    learner = model.vl_prompt_learner
    with torch.no_grad():
        # The text context starts as the 4 words of "a photo of a" (the suffix starts at the class name).
        words = model.clip_model.token_embedding(clip.tokenize("a photo of a"))[0, 1:1 + N_CTX]
        assert torch.equal(learner.prompt_learner.ctx, words)
        perturb_prompts(model)
        images = next(iter(trainer.test_loader))["img"]
        image = model.encode_images(images)
        text = model.encode_texts()
        expected_image = hand_image_features(model.clip_model, images, learner.image_encoder.VPT,
                                             learner.image_encoder.transformer.resblocks["1"].VPT_shallow)
        expected_text = hand_text_features(model.clip_model, classnames, learner.prompt_learner.ctx,
                                           learner.text_encoder.transformer.resblocks["1"].VPT_shallow)
        frozen = model.clip_model.encode_image(images)
    # Same maths in another summation order at most (the hand text forward keeps all 77 tokens).
    image_atol = clip_image_relative_atol(model.clip_model) * expected_image.abs().max().item()
    text_atol = clip_text_relative_atol(model.clip_model) * expected_text.abs().max().item()
    assert torch.allclose(image, expected_image, rtol=0, atol=image_atol)
    assert torch.allclose(text, expected_text, rtol=0, atol=text_atol)
    assert (image - frozen).abs().max() > 100 * image_atol  # the prompts matter


def test_loss_terms_and_teacher_computed_by_hand(caltech_root, tiny_clip_path, tmp_path):
    trainer = build(psrc_argv(caltech_root, tiny_clip_path, tmp_path))
    model, classnames = trainer.model, trainer.dm.dataset.classnames
    perturb_prompts(model)
    trainer.set_model_mode("train")
    images, labels = trainer.parse_batch_train(next(iter(trainer.train_loader_x)))
    out = model.training_step(images, labels)

    with torch.no_grad():
        # t_zs: the mean of the raw features over the 60 templates, normalised (not the mean of normalised ones).
        prompts = [t.format(name.replace("_", " ")) for t in IMAGENET_TEMPLATES for name in classnames]
        raw = model.clip_model.encode_text(clip.tokenize(prompts)).double().view(60, len(classnames), -1)
        teacher = raw.mean(dim=0)
        teacher = teacher / teacher.norm(dim=-1, keepdim=True)
        dim = teacher.shape[-1]
        teacher_atol = fp32_atol(1.0, len(IMAGENET_TEMPLATES) + 2 * dim)  # the fp32 mean and norm
        buffer = model.frozen_text.double() / model.frozen_text.double().norm(dim=-1, keepdim=True)
        assert len(IMAGENET_TEMPLATES) == 60 and torch.allclose(buffer, teacher, rtol=0, atol=teacher_atol)
        normalised_each = F.normalize(raw, dim=-1).mean(dim=0)
        assert (F.normalize(normalised_each, dim=-1) - teacher).abs().max() > 100 * teacher_atol
        # The rest from the same fp32 features the step used (each call is deterministic), in float64.
        t = F.normalize(model.encode_texts().double(), dim=-1)
        f = F.normalize(model.encode_images(images).double(), dim=-1)
        f_zs = F.normalize(model.clip_model.encode_image(images).double(), dim=-1)
        t_zs = buffer
        scale = model.clip_model.logit_scale.exp().double()
        logits, zs_logits = scale * f @ t.t(), scale * f_zs @ t_zs.t()
        p_zs = zs_logits.softmax(dim=1)
        kl = (p_zs * (zs_logits.log_softmax(dim=1) - logits.log_softmax(dim=1))).sum() / logits.numel()
        expected = {"scl_text": 25 * (t - t_zs).abs().mean(), "scl_image": 10 * (f - f_zs).abs().mean(),
                    "scl_logits": kl}
        ce = F.cross_entropy(logits, labels)
    # The step's fp32 arithmetic: norms over dim, then a mean over all elements of O(1) differences (L1 terms,
    # times their weight); logits of size <= scale (dot products over dim), the softmax over C and the sum over
    # all B x C terms of size <= 2 scale (KL, CE).
    l1_atol = fp32_atol(1.0, 2 * dim + t.numel())
    logit_atol = fp32_atol(2 * scale.item(), 2 * dim + logits.numel())
    atols = {"scl_text": 25 * l1_atol, "scl_image": 10 * l1_atol, "scl_logits": logit_atol}
    assert set(out.loss.regularisers) == set(expected)
    for name, value in expected.items():
        assert value > 10 * atols[name], name  # not trivially zero
        assert out.loss.regularisers[name].item() == pytest.approx(value.item(), abs=atols[name]), name
    assert out.loss.ce.item() == pytest.approx(ce.item(), abs=logit_atol)
    assert torch.equal(out.loss.total, out.loss.ce + sum(out.loss.regularisers.values()))


def test_teacher_text_is_computed_once_per_class_set_and_not_for_evaluation(caltech_root, tiny_clip_path, tmp_path,
                                                                            monkeypatch):
    calls = {"encode_text": 0}  # prompts through CLIP.encode_text
    encode_text = CLIP.encode_text

    def counting_encode_text(self, text):
        calls["encode_text"] += text.shape[0]
        return encode_text(self, text)

    monkeypatch.setattr(CLIP, "encode_text", counting_encode_text)
    out = tmp_path / "run"
    record = run_train(psrc_argv(caltech_root, tiny_clip_path, out))  # 2 epochs of several steps, then a test
    assert calls["encode_text"] == len(IMAGENET_TEMPLATES) * record["num_classes"]  # every template once
    new = build(psrc_argv(caltech_root, tiny_clip_path, tmp_path / "new", "DATASET.SUBSAMPLE_CLASSES", "new",
                          flags=("--eval-only",)))
    new.load_model(str(out), epoch=2)
    new.test()
    assert calls["encode_text"] == len(IMAGENET_TEMPLATES) * record["num_classes"] and new.model.frozen_text is None


def test_gpa_weights_follow_the_gaussian_formula():
    def formula(epochs, mean, std):  # the original: the normal density at 1..E, divided by its sum
        pdf = np.array([np.exp(-0.5 * ((a - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))
                        for a in range(1, epochs + 1)])
        return pdf / pdf.sum()

    for epochs, mean, std in [(20, 15, 1), (20, 6, 10), (50, 30, 30), (50, 45, 5), (3, 2, 1)]:
        weights = gpa_weights(epochs, mean, std)
        # Two float64 evaluations of E exponentials and their sum.
        assert np.allclose(weights, formula(epochs, mean, std), rtol=0, atol=fp32_atol(1.0, 2 * epochs, 1, 2.0**-53))
        assert math.isclose(sum(weights), 1.0, abs_tol=4 * epochs * 2.0**-53)
    weights = gpa_weights(20, 15, 1)  # the base-to-new recipe
    assert round(weights[14], 2) == 0.40 and round(weights[13], 2) == round(weights[15], 2) == 0.24
    assert round(weights[12], 2) == round(weights[16], 2) == 0.05 and sum(weights[:12] + weights[17:]) < 0.01
    # A mean far beyond the last epoch: every density underflows, the normalised weights do not.
    assert gpa_weights(2, 1000, 0.1) == [0.0, 1.0]


def test_gpa_checkpoint_holds_the_weighted_sum_of_the_epochs_and_resumes(caltech_root, tiny_clip_path, tmp_path,
                                                                        monkeypatch):
    epochs, opts = 3, ("OPTIM.MAX_EPOCH", "3", "TRAINER.PROMPTSRC.GPA_MEAN", "2", "TRAINER.PROMPTSRC.GPA_STD", "1",
                       "OPTIM.LR", "0.05", "DATASET.NUM_SHOTS", "2")
    seen: list[dict[str, torch.Tensor]] = []
    original_after_epoch = PromptSRC.after_epoch

    def record(self):
        seen.append({k: v.detach().clone().double() for k, v in self.model.vl_prompt_learner.named_parameters()})
        original_after_epoch(self)

    monkeypatch.setattr(PromptSRC, "after_epoch", record)
    full = tmp_path / "full"
    run_train(psrc_argv(caltech_root, tiny_clip_path, full, *opts))
    monkeypatch.setattr(PromptSRC, "after_epoch", original_after_epoch)
    assert len(seen) == epochs
    weights = gpa_weights(epochs, 2, 1)
    saved = torch.load(full / "VLPromptLearner" / f"model.pth.tar-{epochs}", weights_only=True)["state_dict"]
    for name in seen[0]:
        expected = sum(w * s[name] for w, s in zip(weights, seen))
        assert not torch.allclose(seen[-1][name], expected)  # the last epoch alone is not the aggregate
        # fp32 sum of 3 weighted terms, then the cast: a few roundings of the largest value.
        atol = fp32_atol(max(s[name].abs().max().item() for s in seen), 2 * epochs)
        assert torch.allclose(saved[name].double(), expected, rtol=0, atol=atol), name

    # Stopped after the first epoch and rerun: bit-identical (the running sum is in the resume point).
    from engine.trainer import SimpleTrainer

    original = SimpleTrainer.after_epoch

    def stop_after_first_epoch(self):
        original(self)
        if self.epoch == 0:
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(SimpleTrainer, "after_epoch", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_train(psrc_argv(caltech_root, tiny_clip_path, resumed, *opts))
    monkeypatch.setattr(SimpleTrainer, "after_epoch", original)
    run_train(psrc_argv(caltech_root, tiny_clip_path, resumed, *opts))
    again = torch.load(resumed / "VLPromptLearner" / f"model.pth.tar-{epochs}", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], again[k]) for k in saved)


def drift_after_training(trainer, initial: dict, batches: list, regularised: bool) -> tuple[float, float]:
    """mean|t - t_zs| and mean|f - f_zs| (normalised features) after one SGD step per batch from `initial`."""
    model = trainer.model
    model.prepare_training()
    model.vl_prompt_learner.load_state_dict(initial)
    optim = torch.optim.SGD([p for _, p in model.named_trainable_parameters()], lr=0.1)
    trainer.set_model_mode("train")
    for images, labels in batches:
        out = model.training_step(images, labels)
        optim.zero_grad()
        (out.loss.total if regularised else out.loss.ce).backward()
        optim.step()
    with torch.no_grad():
        images = next(iter(trainer.test_loader))["img"]
        t, f = F.normalize(model.encode_texts(), dim=-1), F.normalize(model.encode_images(images), dim=-1)
        f_zs = F.normalize(model.clip_model.encode_image(images), dim=-1)
        t_zs = F.normalize(model.frozen_text, dim=-1)
    return (t - t_zs).abs().mean().item(), (f - f_zs).abs().mean().item()


def test_the_regularisers_keep_the_features_near_frozen_clip(caltech_root, tiny_clip_path, tmp_path):
    torch.manual_seed(0)
    trainer = build(psrc_argv(caltech_root, tiny_clip_path, tmp_path))
    initial = {k: v.clone() for k, v in trainer.model.vl_prompt_learner.state_dict().items()}
    batches = [trainer.parse_batch_train(b) for _ in range(3) for b in trainer.train_loader_x]  # the same for both
    start_text, start_image = drift_after_training(trainer, initial, [], True)
    text_ce, image_ce = drift_after_training(trainer, initial, batches, regularised=False)
    text_src, image_src = drift_after_training(trainer, initial, batches, regularised=True)
    # Cross-entropy alone moves both towers' features away from frozen CLIP's; with the terms they stay nearer.
    # Measured: text 0.09 at the start -> 0.15 (CE) vs 0.06 (PromptSRC); image 0.04 -> 0.14 vs 0.06.
    assert text_ce > start_text + 0.01 and image_ce > start_image + 0.01, (start_text, text_ce, start_image, image_ce)
    assert text_src < 0.8 * text_ce, (start_text, text_src, text_ce)
    assert image_src < 0.8 * image_ce, (start_image, image_src, image_ce)


def test_the_originals_whole_model_checkpoint_loads(caltech_root, tiny_clip_path, tmp_path):
    """The original saves its whole CustomCLIP (frozen towers, the second image tower, prefix/suffix for
    its classes) under VLPromptLearner/: the learned tensors load, the rest is skipped."""
    trainer = build(psrc_argv(caltech_root, tiny_clip_path, tmp_path / "eval", flags=("--eval-only",)))
    learner = trainer.model.vl_prompt_learner
    generator = torch.Generator().manual_seed(1)
    learned = {k: torch.randn(p.shape, generator=generator) for k, p in learner.named_parameters()}
    clip_state = trainer.model.clip_model.state_dict()
    state = dict(learned)
    for key, value in clip_state.items():
        if key.startswith("visual."):
            state["image_encoder." + key[len("visual."):]] = value
            state["prompt_learner.ZS_image_encoder." + key[len("visual."):]] = value
        elif key.startswith(("transformer.", "ln_final.")) or key in ("positional_embedding", "text_projection"):
            state["text_encoder." + key] = value
    state["logit_scale"] = clip_state["logit_scale"]
    state["prompt_learner.token_prefix"] = torch.zeros(100, 1, 64)  # another class set: rebuilt, not loaded
    state["prompt_learner.token_suffix"] = torch.zeros(100, 72, 64)
    folder = tmp_path / "original" / "VLPromptLearner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 20, "optimizer": None, "scheduler": None, "val_result": None},
               folder / "model.pth.tar-20")
    trainer.load_model(str(tmp_path / "original"), epoch=20)
    for key, value in learned.items():
        assert torch.equal(dict(learner.named_parameters())[key], value), key
    assert learner.prompt_learner.token_prefix.shape[0] == trainer.num_classes


@pytest.mark.parametrize("opts, key", [
    (("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "0"), "PROMPT_DEPTH_TEXT"),
    (("TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "9"), "PROMPT_DEPTH_VISION"),  # the tiny CLIP has 2 blocks
    (("TRAINER.PROMPTSRC.GPA_STD", "0"), "GPA_STD"),
])
def test_settings_that_cannot_work_are_refused(opts, key, caltech_root, tiny_clip_path, tmp_path):
    with pytest.raises(ConfigValueError, match=key):
        build(psrc_argv(caltech_root, tiny_clip_path, tmp_path, *opts))


def test_vision_depth_zero_leaves_the_image_tower_unprompted(caltech_root, tiny_clip_path, tmp_path):
    trainer = build(psrc_argv(caltech_root, tiny_clip_path, tmp_path, "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "0",
                              flags=("--eval-only",)))
    names = [name for name, _ in trainer.model.named_trainable_parameters()]
    assert not any("image_encoder" in name for name in names) and names
    images = next(iter(trainer.test_loader))["img"]
    with torch.no_grad():
        assert torch.equal(trainer.model.encode_images(images), trainer.model.clip_model.encode_image(images))
