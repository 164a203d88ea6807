"""Conformance of MaPLe with the ORIGINAL (muzairkhattak/multimodal-prompt-learning @ 69bce21): evaluating
the original's checkpoint must reproduce the original's logits on the base and on the new classes.

The original saves its whole CustomCLIP (526 MB, mostly the frozen random CLIP), so the kit ships
only its trained tensors (`golden/maple/model_learnable.pt`). The test rebuilds the original's file
from them and the random CLIP: `MultiModalPromptLearner/model.pth.tar-2`, a Dassl dict whose
`state_dict` has the original's CustomCLIP keys (prompt_learner.*, image_encoder.*, text_encoder.*,
logit_scale) in the run's precision (fp32: the original calls `clip_model.float()` for PREC fp32).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clip
from tests.conformance.compare import compare_predictions
from tests.conformance.helpers import CLIP_NAME, HERE, fill_argv, load_meta, run_train_inprocess

GOLDEN = HERE / "golden" / "maple"
MODEL_NAME = "MultiModalPromptLearner"
EPOCH = 2
# OpenAI state-dict prefixes -> the original CustomCLIP's (its TextEncoder holds the text tower's parts).
CLIP_TO_CUSTOM = {"visual.": "image_encoder.", "transformer.": "text_encoder.transformer.",
                  "positional_embedding": "text_encoder.positional_embedding", "ln_final.": "text_encoder.ln_final.",
                  "text_projection": "text_encoder.text_projection", "logit_scale": "logit_scale"}


def learnable_tensors() -> dict[str, torch.Tensor]:
    """The trained tensors of the original's run, keyed as in its state_dict (`prompt_learner.*`)."""
    shipped = torch.load(GOLDEN / "model_learnable.pt", map_location="cpu", weights_only=True)
    prefix = f"{MODEL_NAME}/"
    assert all(key.startswith(prefix) for key in shipped)
    return {key[len(prefix):]: value for key, value in shipped.items()}


def custom_clip_state_dict(clip_state: dict[str, torch.Tensor], classnames: list[str]) -> dict[str, torch.Tensor]:
    """The original's CustomCLIP state_dict for PREC fp32, trained on `classnames`."""
    state: dict[str, torch.Tensor] = {}
    learned = learnable_tensors()
    # Buffers of the trained classes: embeddings of "a photo of a <class>." split around the 2 ctx tokens.
    n_ctx = learned["prompt_learner.ctx"].shape[0]
    tokens = clip.tokenize([f"a photo of a {name}." for name in classnames])
    embedding = clip_state["token_embedding.weight"].float()[tokens]
    state["prompt_learner.token_prefix"] = embedding[:, :1].clone()
    state["prompt_learner.token_suffix"] = embedding[:, 1 + n_ctx:].clone()
    state.update(learned)
    for key, value in clip_state.items():
        for src, dst in CLIP_TO_CUSTOM.items():
            if key.startswith(src):
                state[dst + key[len(src):]] = value.float()
                break
    return state


def dassl_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict:
    """Dassl's save_checkpoint dict. The optimiser (SGD over all CustomCLIP parameters, momentum for
    the trained ones) and scheduler entries have the original's structure; evaluation does not read them."""
    learned = set(learnable_tensors())
    names = [k for k in state_dict if k not in ("prompt_learner.token_prefix", "prompt_learner.token_suffix")]
    optimizer = {
        "state": {i: {"momentum_buffer": torch.zeros_like(state_dict[k])} for i, k in enumerate(names) if k in learned},
        "param_groups": [{"lr": 0.0035, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0005, "nesterov": False,
                          "initial_lr": 0.0035, "params": list(range(len(names)))}],
    }
    scheduler = {"cons_lr": 1e-05, "warmup_epoch": 1, "base_lrs": [0.0035], "last_epoch": EPOCH, "_step_count": EPOCH + 1,
                 "_last_lr": [0.0035]}
    return {"state_dict": state_dict, "epoch": EPOCH, "optimizer": optimizer, "scheduler": scheduler,
            "val_result": None}


@pytest.fixture(scope="module")
def original_model_dir(conformance_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """`--model-dir` of the original's training run on the base classes, rebuilt from the kit."""
    clip_state = torch.load(conformance_data / "clip" / CLIP_NAME, map_location="cpu", weights_only=True)
    base = load_meta("maple")["phases"]["train"]["classnames"]
    directory = tmp_path_factory.mktemp("maple_model")
    folder = directory / MODEL_NAME
    folder.mkdir()
    torch.save(dassl_checkpoint(custom_clip_state_dict(clip_state, base)), folder / f"model.pth.tar-{EPOCH}")
    (folder / "checkpoint").write_text(f"model.pth.tar-{EPOCH}\n")
    yield directory
    (folder / f"model.pth.tar-{EPOCH}").unlink()  # ~0.5 GB


def test_shipped_tensors_are_the_trained_prompt_learner():
    """All of MaPLe's learnable tensors (N=2, depth 9, ViT-B/16 widths), trained away from their init:
    the 8 deep projections start as copies of one Linear, so after training they must differ."""
    learned = learnable_tensors()
    assert learned["prompt_learner.ctx"].shape == (2, 512)
    assert learned["prompt_learner.proj.weight"].shape == (768, 512)
    assert sorted(k for k in learned if k.startswith("prompt_learner.compound_prompts_text.")) == [
        f"prompt_learner.compound_prompts_text.{i}" for i in range(8)]
    projections = [learned[f"prompt_learner.compound_prompt_projections.{i}.weight"] for i in range(8)]
    assert not torch.equal(projections[0], projections[1])
    assert len(learned) == 1 + 2 + 8 + 16


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["train", "test_new"])
def test_matches_original_logits(phase: str, original_model_dir: Path, clean_fewshot_cache: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    entry = load_meta("maple")["phases"][phase]
    out = tmp_path / "out"
    argv = [a.replace("$MODEL_DIR", str(original_model_dir)) for a in fill_argv(entry["check_argv"],
                                                                               clean_fewshot_cache, out)]
    if torch.cuda.is_available():
        argv += ["USE_CUDA", "False"]  # the goldens are CPU arithmetic
    run_train_inprocess(argv, monkeypatch)

    result = compare_predictions(out / "predictions.npz", GOLDEN / entry["golden_file"], name=f"maple/{phase}")
    assert result.ok, result.report()

