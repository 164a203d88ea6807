"""benchmarks.fast_mode_accuracy: method selection, each method's train.py arguments, and the aggregation
(the runs themselves take minutes and are not run here)."""
from __future__ import annotations

import math
import os

import pytest
from scipy import stats

from benchmarks import fast_mode_accuracy as fma
from engine.errors import ConfigValueError, run_cli
from engine.trainer import TRAINER_REGISTRY
import trainers  # noqa: F401  (registers the trainers)
from tests.conftest import config_path

EVERY_METHOD = ["CoOp", "KgCoOp", "CoCoOp", "MaPLe", "PromptSRC", "FinetuneCLIP", "SkipTuning", "TaskRes",
                "CLIP_Adapter", "DePT", "DyT"]


def test_summaries_are_mean_and_sample_std_and_the_verdict_uses_the_exact_spread():
    exact = fma.summarise("exact", [1, 2, 3], [70.0, 72.0, 77.0])
    # mean 73; sample variance ((-3)^2 + (-1)^2 + 4^2) / 2 = 13.
    assert exact.mean == 73.0 and math.isclose(exact.std, math.sqrt(13.0), rel_tol=1e-12)
    close = fma.summarise("fast", [1, 2, 3], [74.0, 75.0, 76.0])  # mean 75: 2 points < sqrt(13)
    far = fma.summarise("fast", [1, 2, 3], [77.0, 77.0, 77.0])  # mean 77: 4 points > sqrt(13)
    assert fma.within_seed_spread(exact, close) and not fma.within_seed_spread(exact, far)
    assert fma.summarise("exact", [1], [70.0]).std == 0.0
    text = fma.report(exact, far)
    assert "exact   73.00 ± 3.61" in text and "fast    77.00 ± 0.00" in text
    assert "fast - exact: +4.00 points, outside the exact runs' seed-to-seed spread (3.61)" in text


def test_the_pooled_criterion_judges_a_zero_exact_spread_by_both_modes_spread():
    recipe = fma.RECIPES["TaskRes"]
    exact = fma.summarise("exact", [1, 2, 3], [66.0, 66.0, 66.0])  # std 0: any difference fails the test
    fast = fma.summarise("fast", [1, 2, 3], [65.0, 66.0, 67.0])  # mean 66, sample std 1
    shifted = fma.summarise("fast", [1, 2, 3], [65.5, 66.5, 67.5])  # mean 66.5, std 1
    # pooled std sqrt((0 + 1) / 2) = 0.707: a 0.5-point shift is within it, but outside the exact std of 0.
    c = fma.compare(recipe, exact, shifted)
    assert math.isclose(c.pooled_std, math.sqrt(0.5), rel_tol=1e-12) and math.isclose(c.difference, 0.5)
    assert c.within_pooled_spread and not c.within_seed_spread
    # Welch's test with the exact std 0 reduces to a one-sample t-test of the fast runs against 66.
    assert math.isclose(c.welch_p, stats.ttest_1samp(shifted.accuracies, 66.0).pvalue, rel_tol=1e-9)
    same = fma.compare(recipe, exact, fast)
    assert same.within_seed_spread and same.within_pooled_spread and math.isclose(same.welch_p, 1.0)
    far = fma.compare(recipe, exact, fma.summarise("fast", [1, 2, 3], [67.0, 68.0, 69.0]))  # 2 > 0.707
    assert not far.within_pooled_spread and far.welch_p < 0.1
    # Both stds 0: the t-test is undefined, and the table says so rather than print a nan.
    flat = fma.compare(recipe, exact, exact)
    assert flat.welch_p is None and "| n/a |" in fma.table_row(flat)


def test_the_table_names_both_criteria_and_reports_a_failed_method():
    recipe = fma.RECIPES["DePT"]
    exact = fma.summarise("exact", [1, 2, 3], [66.0, 66.5, 67.0])  # std 0.5
    fast = fma.summarise("fast", [1, 2, 3], [66.0, 66.0, 66.0])  # -0.5 points; pooled std sqrt(0.125) = 0.354
    failure = fma.Failure("DyT", "DyT", "fast", 2, "RuntimeError: boom")
    text = fma.table([fma.compare(recipe, exact, fast)], [failure])
    assert ("| DePT (over CoOp) | 66.50 ± 0.50 | 66.00 ± 0.00 | -0.50 | within (0.50) | outside (0.35) |"
            in text)
    assert "| DyT | failed: fast mode, seed 2: RuntimeError: boom |" in text
    assert "seed spread: the issue's criterion" in text and "pooled spread: |fast - exact| <= sqrt(" in text


def test_all_expands_to_every_method_and_names_are_kept_in_order():
    assert [r.method for r in fma.resolve_methods(["all"])] == EVERY_METHOD
    assert [r.method for r in fma.resolve_methods(["DyT", "CoOp", "DyT"])] == ["DyT", "CoOp"]
    assert fma.build_parser().parse_args([]).trainer == ["CoOp"]


def test_an_unknown_method_is_a_one_line_user_error_naming_the_valid_ones(capsys):
    with pytest.raises(ConfigValueError, match="--trainer Foo: not a method with a fast mode; choose from CoOp, "):
        fma.resolve_methods(["CoOp", "Foo"])
    assert run_cli(lambda: fma.main(["--trainer", "ZeroshotCLIP"])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ZeroshotCLIP" in err and all(m in err for m in EVERY_METHOD)


@pytest.mark.parametrize("method", EVERY_METHOD)
def test_each_method_runs_its_own_demo_config_and_only_fast_mode_differs(method):
    recipe = fma.RECIPES[method]
    exact, fast = (fma.run_argv(recipe, mode, 2, "/out", "") for mode in ("exact", "fast"))
    assert [a for a, b in zip(exact, fast) if a != b] == ["False"]
    assert fast[fast.index("TRAIN.FAST_MODE") + 1] == "True" and "--root" not in fast
    trainer = fast[fast.index("--trainer") + 1]
    config = fast[fast.index("--config-file") + 1]
    assert config == config_path("trainers", trainer, "demo.yaml") and os.path.isfile(config)
    assert trainer in TRAINER_REGISTRY and trainer == recipe.trainer
    assert fma.run_argv(recipe, "exact", 2, "/out", "/data")[:2] == ["--root", "/data"]


def test_the_demo_runs_data_settings():
    shots_and_classes = {m: (r.shots, r.subsample) for m, r in fma.RECIPES.items()}
    # DyT's demo run (tests/demo/test_demo_dyt.py): every class of demo_shapes, 8 shots; the others 16 on base.
    assert shots_and_classes.pop("DyT") == (8, "all")
    assert set(shots_and_classes.values()) == {(16, "base")}
    assert fma.RECIPES["DePT"].trainer == "ExtrasLinearProbeCoOp"
    argv = fma.run_argv(fma.RECIPES["DyT"], "fast", 1, "/out", "")
    assert argv[argv.index("DATASET.NUM_SHOTS") + 1] == "8" and argv[argv.index("DATASET.SUBSAMPLE_CLASSES") + 1] == "all"
