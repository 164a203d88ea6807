"""FT-CLIP on a tiny random-weight CLIP and the tiny Caltech101 tree: what trains, the prompts, the
staged LR groups, a frozen text tower, and checkpoints (original layout, reload to identical logits)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import clip
from tests.conftest import run_train
from tests.trainers.test_skip_tuning import build_trainer_from, skip_argv


def ft_argv(root, clip_path, out, *opts, epochs=1, flags=()):
    return skip_argv(root, clip_path, out, *opts, epochs=epochs, trainer="FinetuneCLIP", flags=flags)


STEM = ("token_embedding.weight", "positional_embedding", "visual.class_embedding", "visual.conv1.weight",
        "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.positional_embedding", "logit_scale")


def test_everything_but_the_stem_trains_and_changes(caltech_root, tiny_clip_path, tmp_path):
    trainer = build_trainer_from(ft_argv(caltech_root, tiny_clip_path, tmp_path / "r", "OPTIM.LR", "0.01"))
    clip_model = trainer.model.clip_model
    trainable = {n for n, p in clip_model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in clip_model.named_parameters()} - set(STEM)
    # Per-dataset template of the original (not CoOp's "a photo of a {}.").
    names = trainer.dm.dataset.classnames
    assert torch.equal(trainer.model.tokenized_texts, clip.tokenize([f"itap of a {n}." for n in names]))
    assert len(trainer.optim.param_groups) == 1  # no STAGED_LR in the FT configs

    before = {n: p.detach().clone() for n, p in clip_model.named_parameters()}
    batch = next(iter(trainer.train_loader_x))
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 99
    trainer.set_model_mode("train")
    summary = trainer.forward_backward(batch)
    assert np.isfinite(summary["loss"])
    for n, p in clip_model.named_parameters():
        assert (not torch.equal(p, before[n])) == (n in trainable), n


def test_start_layer_prefix_modules_and_frozen_text(caltech_root, tiny_clip_path, tmp_path):
    trainer = build_trainer_from(ft_argv(
        caltech_root, tiny_clip_path, tmp_path / "a",
        "TRAINER.FINETUNE.START_LAYER", "1", "TRAINER.FINETUNE.LEARNABLE_PREFIX_MODULES", "ln+ipe"))
    grads = {n: p.requires_grad for n, p in trainer.model.clip_model.named_parameters()}
    assert not grads["transformer.resblocks.0.attn.in_proj_weight"] and not grads["visual.transformer.resblocks.0.mlp.c_fc.weight"]
    assert grads["transformer.resblocks.1.attn.in_proj_weight"] and grads["visual.transformer.resblocks.1.mlp.c_fc.weight"]
    assert grads["visual.ln_pre.weight"] and grads["visual.positional_embedding"]
    assert not grads["visual.conv1.weight"] and not grads["token_embedding.weight"]

    trainer = build_trainer_from(ft_argv(caltech_root, tiny_clip_path, tmp_path / "b", "TRAINER.FINETUNE.LEARNABLE_TEXT", "False"))
    assert list(trainer.model.learnable_params.keys()) == ["image_encoder"]
    assert not any(p.requires_grad for n, p in trainer.model.clip_model.named_parameters() if not n.startswith("visual."))
    fixed = trainer.model.encode_texts()
    # The features were computed once at build time by this very call: the same bits.
    assert torch.equal(fixed, trainer.model.clip_model.encode_text(trainer.model.tokenized_texts))

    with pytest.raises(ValueError, match="LEARNABLE_PREFIX_MODULES"):
        build_trainer_from(ft_argv(caltech_root, tiny_clip_path, tmp_path / "c", "TRAINER.FINETUNE.LEARNABLE_PREFIX_MODULES", "conv+xx"))


def test_training_saves_the_original_layout_and_reloads_to_identical_logits(caltech_root, tiny_clip_path, tmp_path):
    out = tmp_path / "run"
    record = run_train(ft_argv(caltech_root, tiny_clip_path, out, "TEST.SAVE_PREDICTIONS", "True"))
    assert record["trainer"] == "FinetuneCLIP" and record["train_images_per_s"] > 0
    saved = torch.load(out / "learnable_params" / "model.pth.tar-1", weights_only=True)["state_dict"]
    assert "text_encoder.transformer.resblocks.0.attn.in_proj_weight" in saved
    assert "image_encoder.conv1.weight" in saved and "text_encoder.token_embedding.weight" in saved
    # No --load-epoch and no model-best: the last epoch is loaded (the original's behaviour).
    run_train(ft_argv(caltech_root, tiny_clip_path, tmp_path / "eval", "TEST.SAVE_PREDICTIONS", "True",
                      flags=("--eval-only", "--model-dir", str(out))))
    trained = np.load(out / "predictions.npz")["logits"]
    assert np.array_equal(trained, np.load(tmp_path / "eval" / "predictions.npz")["logits"])
    with pytest.raises(FileNotFoundError, match="load-epoch"):
        run_train(ft_argv(caltech_root, tiny_clip_path, tmp_path / "e2", flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "7")))


def test_the_update_in_backward_trains_to_the_same_bits(caltech_root, tiny_clip_path, tmp_path):
    """OPTIM.UPDATE_IN_BACKWARD always (the default choice for ViT-B towers, whose gradients take
    hundreds of MB) against never, through the engine's optimisation step: the same parameters and
    momentum after two steps, bit for bit."""
    trainers = {choice: build_trainer_from(ft_argv(caltech_root, tiny_clip_path, tmp_path / choice, "OPTIM.LR", "0.01",
                                                   "OPTIM.UPDATE_IN_BACKWARD", choice))
                for choice in ("always", "never")}
    assert trainers["always"]._updates_in_backward and not trainers["never"]._updates_in_backward
    batches = [next(iter(trainers["never"].train_loader_x)) for _ in range(2)]
    for trainer in trainers.values():
        trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 99
        trainer.set_model_mode("train")
        for batch in batches:
            trainer.forward_backward(batch)
    params = {choice: dict(t.model.clip_model.named_parameters()) for choice, t in trainers.items()}
    for name, param in params["never"].items():
        assert torch.equal(param, params["always"][name]), name
    states = {choice: t.optim.state_dict()["state"] for choice, t in trainers.items()}
    assert states["never"].keys() == states["always"].keys() and states["never"]
    for index, entry in states["never"].items():
        assert torch.equal(entry["momentum_buffer"], states["always"][index]["momentum_buffer"]), index
