"""Conformance with the ORIGINAL implementations: our `train.py` evaluated with the original's
settings (and, for CoOp, the original's checkpoint) must reproduce the original's per-image test
logits on the kit's random CLIP and fixture (max |dlogit| <= 2e-3, identical argmax).

See tests/conformance/README.md for where every file comes from.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conformance.compare import DEFAULT_TOL, compare_predictions
from tests.conformance.helpers import HERE, fill_argv, load_meta, run_train_inprocess, sha256_file

GOLDEN = HERE / "golden"
CASES = [("zsclip", "zeroshot"), ("coop", "train"), ("cocoop", "train"), ("cocoop", "test_new"),
         ("kgcoop", "train"), ("kgcoop", "test_new"), ("taskres", "train"), ("clip_adapter", "train")]
# Methods whose golden logits come from the original's own checkpoint, shipped under golden/<m>/model.
CHECKPOINTS = ["coop", "cocoop", "kgcoop", "taskres", "clip_adapter"]


# ---- the shipped data and the comparison helper (fast)

@pytest.mark.parametrize("method", CHECKPOINTS)
def test_shipped_checkpoint_is_the_originals(method: str) -> None:
    meta = load_meta(method)
    for rel, info in meta["checkpoint"]["original_files"].items():
        path = GOLDEN / method / "model" / rel
        assert path.stat().st_size == info["bytes"]
        assert sha256_file(path) == info["sha256"]
        assert (path.parent / "checkpoint").read_text().strip() == "model.pth.tar-2"


@pytest.mark.parametrize("method,phase", CASES)
def test_check_argv_is_the_originals_plus_eval_flags(method: str, phase: str) -> None:
    """check_argv = the original run's argv + eval flags + our backbone path and predictions switch."""
    entry = load_meta(method)["phases"][phase]
    argv, check = entry["argv"], entry["check_argv"]
    # TaskRes's flag sits at another place among the flags of the check (flag order does not matter).
    argv, enhanced = _pop_flag(argv, "--enhanced-base")
    check, check_enhanced = _pop_flag(check, "--enhanced-base")
    assert enhanced == check_enhanced
    assert check[-4:] == ["MODEL.BACKBONE.NAME", "$CONFORMANCE_DATA/clip/ViT-B-16_random_seed0_r112.pt",
                          "TEST.SAVE_PREDICTIONS", "True"]
    stripped, argv = list(check[:-4]), list(argv)
    if "--model-dir" in stripped:
        i = stripped.index("--eval-only")
        assert stripped[i:i + 5] == ["--eval-only", "--model-dir", f"$CONFORMANCE_KIT/golden/{method}/model",
                                     "--load-epoch", "2"]
        del stripped[i:i + 5]
    if "--model-dir" in argv:
        # The original's --eval-only run on the new classes loaded its own training run's output.
        i = argv.index("--model-dir")
        assert argv[i:i + 5] == ["--model-dir", "$MODEL_DIR", "--load-epoch", "2", "--eval-only"]
        del argv[i:i + 5]
    assert stripped == argv


def _pop_flag(argv: list[str], flag: str) -> tuple[list[str], str | None]:
    """argv without `flag VALUE`, and VALUE (None when the flag is absent)."""
    if flag not in argv:
        return list(argv), None
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:], argv[i + 1]


def _fake_predictions(path: Path, golden: Path, perm: np.ndarray, logits=None, labels=None) -> None:
    with np.load(golden) as g:
        np.savez(
            path,
            logits=(g["logits"] if logits is None else logits)[perm],
            labels=(g["labels"] if labels is None else labels)[perm],
            impaths=g["impaths"][perm],
        )


def test_compare_accepts_reordered_rows_within_tolerance(tmp_path: Path) -> None:
    golden = GOLDEN / "coop" / "logits.npz"
    rng = np.random.default_rng(0)
    with np.load(golden) as g:
        logits = g["logits"] + rng.uniform(-0.9 * DEFAULT_TOL, 0.9 * DEFAULT_TOL, g["logits"].shape)
        n = len(g["impaths"])
    _fake_predictions(tmp_path / "p.npz", golden, rng.permutation(n), logits=logits)
    result = compare_predictions(tmp_path / "p.npz", golden)
    assert result.ok, result.report()
    assert 0 < result.max_abs_diff <= DEFAULT_TOL


def test_compare_rejects_drift_argmax_labels_and_missing_rows(tmp_path: Path) -> None:
    golden = GOLDEN / "zsclip" / "logits.npz"
    with np.load(golden) as g:
        logits, labels, n = g["logits"].astype(np.float64), g["labels"].copy(), len(g["impaths"])
    ident = np.arange(n)

    drift = logits.copy()
    drift[3, 0] += 3 * DEFAULT_TOL
    _fake_predictions(tmp_path / "a.npz", golden, ident, logits=drift)
    r = compare_predictions(tmp_path / "a.npz", golden)
    assert not r.ok and "exceed tol" in r.problems[0]

    # An argmax flip within the tolerance still fails: make row 0's top-2 nearly tied, then swap them.
    tied = logits.copy()
    a, b = np.argsort(tied[0])[-2:]
    tied[0, a] = tied[0, b] - 5e-4
    np.savez(tmp_path / "golden_tied.npz", logits=tied, labels=labels, impaths=np.load(golden)["impaths"])
    flip = tied.copy()
    flip[0, a], flip[0, b] = tied[0, b], tied[0, a]
    _fake_predictions(tmp_path / "b.npz", golden, ident, logits=flip)
    r = compare_predictions(tmp_path / "b.npz", tmp_path / "golden_tied.npz")
    assert not r.ok and r.max_abs_diff <= DEFAULT_TOL and r.problems == ["argmax differs on 1 images"]

    wrong = labels.copy()
    wrong[0] = (wrong[0] + 1) % logits.shape[1]
    _fake_predictions(tmp_path / "c.npz", golden, ident, labels=wrong)
    r = compare_predictions(tmp_path / "c.npz", golden)
    assert not r.ok and any("labels" in p for p in r.problems)

    _fake_predictions(tmp_path / "d.npz", golden, ident[1:])
    r = compare_predictions(tmp_path / "d.npz", golden)
    assert not r.ok and "missing" in r.problems[0]


# ---- the real checks (slow: ViT-B/16 geometry on CPU)

@pytest.mark.slow
@pytest.mark.parametrize("method,phase", CASES)
def test_matches_original_logits(
    method: str, phase: str, clean_fewshot_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = load_meta(method)["phases"][phase]
    out = tmp_path / "out"
    argv = fill_argv(entry["check_argv"], clean_fewshot_cache, out)
    if torch.cuda.is_available():
        # The goldens are CPU arithmetic (zsclip even fp16 CPU kernels); a GPU run is not expected to match.
        argv += ["USE_CUDA", "False"]
    run_train_inprocess(argv, monkeypatch)

    pred = out / "predictions.npz"
    assert pred.is_file(), f"train.py wrote no {pred} although TEST.SAVE_PREDICTIONS is True"
    result = compare_predictions(pred, GOLDEN / method / entry["golden_file"], name=f"{method}/{phase}")
    assert result.ok, result.report()
