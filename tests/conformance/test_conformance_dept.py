"""Conformance of DePT (CoOp w/ DePT, the original's `ExtrasLinearProbeCoOp`) with the ORIGINAL
implementation: evaluating the original's checkpoint must reproduce its per-image logits on the base
classes (ITM and CAT heads fused) and on the new classes (ITM head only).

The original saves its whole CustomCLIP (0.5 GB, mostly the frozen random CLIP), so the kit ships only
its trained tensors (`model_learnable.pt`). The test rebuilds the original's checkpoint from them: the
same folder (`PromptLearner/`), file (`model.pth.tar-2`) and state-dict keys, with the frozen CLIP entries
(`image_encoder.*`, `text_encoder.*`, `logit_scale`) taken from the random CLIP and the class-name
buffers (`prompt_learner.token_prefix` / `token_suffix`) computed as the original does.
See tests/conformance/README.md for where every file comes from.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conformance.compare import compare_predictions
from tests.conformance.helpers import CLIP_NAME, HERE, fill_argv, load_meta, run_train_inprocess, sha256_file

GOLDEN = HERE / "golden" / "dept"
LEARNABLE_SHA256 = "fd130f42c9d915cf3437bebcaf6fe0ac95ad255608f60e9d5d15be65930c67d2"  # the kit's file
MODEL_NAME = "PromptLearner"  # the original's register_model name for ExtrasLinearProbeCoOp
# The original's CustomCLIP children built from CLIP, and the CLIP state-dict prefix each comes from.
FROZEN_FROM_CLIP = {"image_encoder.": "visual.", "text_encoder.transformer.": "transformer.",
                    "text_encoder.positional_embedding": "positional_embedding",
                    "text_encoder.ln_final.": "ln_final.", "text_encoder.text_projection": "text_projection",
                    "logit_scale": "logit_scale"}


def original_checkpoint(model_dir: Path, clip_path: Path, classnames: list[str]) -> None:
    """Write `<model_dir>/PromptLearner/{checkpoint, model.pth.tar-2}` as the original trainer saved them."""
    import clip

    learnable = torch.load(GOLDEN / "model_learnable.pt", weights_only=True)
    state = {key.split("/", 1)[1]: value for key, value in learnable.items()}
    clip_state = torch.load(clip_path, map_location="cpu", weights_only=True)
    for ours, theirs in FROZEN_FROM_CLIP.items():
        state.update({ours + k[len(theirs):]: v for k, v in clip_state.items() if k.startswith(theirs)})
    n_ctx = state["prompt_learner.ctx"].shape[0]
    prompts = [" ".join(["X"] * n_ctx) + " " + name.replace("_", " ") + "." for name in classnames]
    with torch.no_grad():
        embedding = torch.nn.functional.embedding(clip.tokenize(prompts), clip_state["token_embedding.weight"])
    state["prompt_learner.token_prefix"] = embedding[:, :1, :]
    state["prompt_learner.token_suffix"] = embedding[:, 1 + n_ctx:, :]
    folder = model_dir / MODEL_NAME
    folder.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 2, "optimizer": {}, "scheduler": {}, "val_result": None},
               folder / "model.pth.tar-2")
    (folder / "checkpoint").write_text("model.pth.tar-2\n")


def test_shipped_learnable_tensors_are_the_kits() -> None:
    assert sha256_file(GOLDEN / "model_learnable.pt") == LEARNABLE_SHA256
    keys = set(torch.load(GOLDEN / "model_learnable.pt", weights_only=True))
    assert keys == {f"{MODEL_NAME}/{k}" for k in ("prompt_learner.ctx", "film_lp_img.scale", "film_lp_img.bias",
                                                  "film_lp_text.scale", "film_lp_text.bias",
                                                  "linear_probe_proj.weight", "linear_probe_proj.bias")}


@pytest.mark.parametrize("phase", ["train", "test_new"])
def test_check_argv_is_the_originals_plus_eval_flags(phase: str) -> None:
    entry = load_meta("dept")["phases"][phase]
    argv, check = list(entry["argv"]), list(entry["check_argv"])
    assert check[-4:] == ["MODEL.BACKBONE.NAME", f"$CONFORMANCE_DATA/clip/{CLIP_NAME}", "TEST.SAVE_PREDICTIONS", "True"]
    check = check[:-4]
    i = check.index("--eval-only")
    assert check[i:i + 5] == ["--eval-only", "--model-dir", "$MODEL_DIR", "--load-epoch", "2"]
    del check[i:i + 5]
    if "--model-dir" in argv:  # the original's new-class run loaded its own training run's output
        i = argv.index("--model-dir")
        assert argv[i:i + 5] == ["--model-dir", "$MODEL_DIR", "--load-epoch", "-1", "--eval-only"]
        del argv[i:i + 5]
    assert check == argv


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["train", "test_new"])
def test_matches_original_logits(phase: str, clean_fewshot_cache: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    meta = load_meta("dept")
    model_dir = tmp_path / "model"
    original_checkpoint(model_dir, clean_fewshot_cache / "clip" / CLIP_NAME, meta["phases"]["train"]["classnames"])
    entry = meta["phases"][phase]
    out = tmp_path / "out"
    argv = [a.replace("$MODEL_DIR", str(model_dir)) for a in fill_argv(entry["check_argv"], clean_fewshot_cache, out)]
    if torch.cuda.is_available():
        argv += ["USE_CUDA", "False"]  # the goldens are CPU arithmetic
    run_train_inprocess(argv, monkeypatch)

    result = compare_predictions(out / "predictions.npz", GOLDEN / entry["golden_file"], name=f"dept/{phase}")
    print(result.report())
    assert result.ok, result.report()
