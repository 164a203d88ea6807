"""benchmarks.readme_numbers without measuring: the marker replacement, that README.md holds every
block the command writes, and the rendering of given (made-up) records."""
from __future__ import annotations

import re

import pytest

from benchmarks import readme_numbers as rn
from engine.errors import run_cli
from tests.conftest import REPO_ROOT

PROV = rn.Provenance("python -m benchmarks.readme_numbers --only x --write", "Test CPU 9000", 3, "3.11.2",
                     "9.9.9", "2001-02-03", 0.7)


def run(accuracy: float, classes: int = 10, test: int = 100, wall: float = 2.5) -> rn.RunResult:
    return rn.RunResult(accuracy, classes, test, wall)


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every table row (header and separator included) in `markdown`."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("|")]


# --------------------------------------------------------------------------- markers
TEXT = """# Title
intro
<!-- readme_numbers:one -->
old one
<!-- /readme_numbers:one -->
middle
<!-- readme_numbers:two -->
old two
<!-- /readme_numbers:two -->
end
"""


def test_a_block_is_replaced_and_the_text_outside_its_markers_is_untouched():
    out = rn.replace_blocks(TEXT, {"one": "new\n\ntext"})
    head, tail = TEXT.split("old one\n")
    assert out == head + "new\n\ntext\n" + tail
    # Replacing again with the same content changes nothing (re-running --write is a no-op).
    assert rn.replace_blocks(out, {"one": "new\n\ntext"}) == out
    # Both blocks at once; the text between and around them is kept byte for byte.
    both = rn.replace_blocks(TEXT, {"two": "2", "one": "1"})
    assert both == TEXT.replace("old one", "1").replace("old two", "2")
    assert set(rn.find_blocks(both)) == {"one", "two"}


def test_printed_blocks_carry_their_markers():
    wrapped = rn.wrap_block("one", "\ncontent\n")
    assert wrapped == "<!-- readme_numbers:one -->\ncontent\n<!-- /readme_numbers:one -->"
    assert rn.replace_blocks(TEXT, {"one": "content"}).count(wrapped) == 1


@pytest.mark.parametrize("text, message", [
    (TEXT, r"no block 'three'.*<!-- readme_numbers:three -->"),
    (TEXT.replace("<!-- /readme_numbers:one -->\n", ""), r":6: block 'two' opens inside block 'one'"),
    (TEXT.replace("<!-- /readme_numbers:two -->\n", ""), r"block 'two' is never closed"),
    (TEXT.replace("<!-- readme_numbers:two -->\n", ""), r":8: closing marker of 'two' without an opening marker"),
    (TEXT.replace("/readme_numbers:two", "/readme_numbers:one"), r"closing marker of 'one' inside block 'two'"),
    (TEXT + TEXT[TEXT.index("<!-- readme_numbers:two"):], r"block 'two' appears twice"),
])
def test_missing_or_unbalanced_markers_are_a_clear_error(text, message):
    with pytest.raises(rn.MarkerError, match=message):
        rn.replace_blocks(text, {"three" if "three" in message else "one": "x"})


def test_readme_holds_every_block_of_the_command_in_order():
    blocks = rn.find_blocks((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    # Same names both ways: a renamed block cannot leave README numbers that nothing regenerates.
    assert sorted(blocks, key=lambda name: blocks[name].start) == list(rn.BLOCKS)


def test_the_command_checks_the_markers_before_measuring(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(TEXT)
    assert run_cli(lambda: rn.main(["--readme", str(readme), "--only", "demo_coop", "--write"])) == 2
    assert "no block 'demo_coop'" in capsys.readouterr().err
    assert readme.read_text() == TEXT
    assert run_cli(lambda: rn.main(["--only", "demo_cop"])) == 2
    assert "unknown block demo_cop; known blocks: quick_start" in capsys.readouterr().err
    assert rn.main(["--list"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == list(rn.BLOCKS)


# --------------------------------------------------------------------------- rendering
def bench_record(trainer: str, step_s: float, step_mb: float, gflops: float, trainable: int, **extra) -> dict:
    return {"trainer": trainer, "step_kind": "eval_batch" if trainer == "ZeroshotCLIP" else "train_step",
            "median_step_s": step_s, "peak_memory_mb": 1000.0 + step_mb, "step_memory_mb": step_mb,
            "trainable_params": trainable, "flops_per_step": gflops * 1e9, "peak_memory_kind": "cpu_peak_rss",
            "geometry": "vit_b16", "precision": "fp32", "batch": 4, "classes": 100, "image_size": 224, "steps": 3,
            "threads": 2, "torch": "9.9.9", **extra}


BENCH = [
    bench_record("ZeroshotCLIP", 0.5, 10.0, 50.0, 0),
    bench_record("FinetuneCLIP", 4.0, 2000.0, 600.0, 1234567),
    bench_record("SkipTuning", 1.6, 500.0, 200.0, 7654, cache_s_per_batch=0.25, cache_flops_per_batch=7e10,
                 median_step_incl_cache_s=1.85, trainer_cfg={"SKIP": {"START_LAYER": 6}}),
]


def test_benchmark_table_from_records():
    header, _, zs, ft, skip = table_rows(rn.benchmark_table(BENCH))
    assert header == ["trainer", "step", "median s", "× FT", "peak RSS MB", "step MB", "× FT", "trainable params",
                      "GFLOPs/step", "× FT", "GFLOP/s", "of GEMM"]
    # GFLOP/s: 600 GFLOPs in 4 s; records without a GEMM measurement have no fraction.
    assert ft == ["FinetuneCLIP", "train step", "4.00", "1.00", "3000", "2000", "1.00", "1,234,567", "600.0", "1.00",
                  "150", "-"]
    # Ratios are against FinetuneCLIP: 1.6/4, 500/2000, 200/600.
    assert skip[:4] == ["SkipTuning", "train step", "1.60", f"{1.6 / 4:.2f}"]
    assert skip[6:10] == [f"{500 / 2000:.2f}", "7,654", "200.0", f"{200 / 600:.2f}"]
    assert zs[1] == "eval batch" and zs[7] == "0"
    # Without FinetuneCLIP there is nothing to compare with.
    assert table_rows(rn.benchmark_table(BENCH[:1]))[2][3] == "-"


def test_benchmark_table_in_both_modes_compares_within_a_mode():
    fast = [dict(r, mode="fast", compute_dtype="bfloat16", median_step_s=r["median_step_s"] / 2, gemm_gflops_per_s=500.0,
                 gemm_size=2048, gemm_fraction=r["flops_per_step"] / (r["median_step_s"] / 2) / 1e9 / 500.0)
            for r in BENCH]
    exact = [dict(r, mode="exact", compute_dtype="float32", gemm_gflops_per_s=200.0, gemm_size=2048,
                  gemm_fraction=r["flops_per_step"] / r["median_step_s"] / 1e9 / 200.0) for r in BENCH]
    header, _, *rows = table_rows(rn.benchmark_table(exact + fast))
    assert header[:3] == ["trainer", "mode", "step"] and header[-2:] == ["GFLOP/s", "of GEMM"]
    skip_fast = rows[5]
    assert skip_fast[:2] == ["SkipTuning", "fast"]
    # Against FinetuneCLIP in fast mode (0.8 / 2.0), not in exact mode; 200 GFLOPs in 0.8 s of a 500 GFLOP/s GEMM.
    assert skip_fast[4] == f"{0.8 / 2.0:.2f}" and skip_fast[-2:] == ["250", "50.0%"]
    text = " ".join(rn.render_cost_benchmark(rn.BenchmarkRecord(exact + fast, ("--mode", "both")), PROV).split())
    assert "exact mode fp32, fast mode bfloat16 autocast on fp32 weights" in text
    assert "(2048³, measured in the same run): 200 GFLOP/s in float32, 500 GFLOP/s in bfloat16." in text
    # The Skip Tuning sentences quote exact-mode steps.
    assert f"takes {4 / 1.6:.1f}× less time" in text
    scaled = BENCH + [dict(r, classes=1000) for r in BENCH]
    assert table_rows(rn.benchmark_table(scaled))[0][:3] == ["trainer", "classes", "step"]
    assert "batch 4, 100 and 1000 classes," in " ".join(rn.render_cost_benchmark(
        rn.BenchmarkRecord(scaled, ()), PROV).split())


def test_cost_benchmark_sentences_quote_the_records():
    text = rn.render_cost_benchmark(rn.BenchmarkRecord(BENCH, ("--trainer", "all")), PROV)
    assert "Command: `python -m benchmarks.train_step --trainer all`." in text
    assert "ViT-B/16 geometry, fp32, batch 4, 100 classes, 224 px, 3 timed steps, 2 torch threads" in text
    flat = " ".join(text.split())
    assert "cost 0.25 s and 70.0 GFLOPs per batch of 4 images, which gives 1.85 s per step" in flat
    assert "7,654 for Skip Tuning with ω = 6, 1,234,567 for FT-CLIP." in flat
    assert (f"takes {4 / 1.6:.1f}× less time, {2000 / 500:.1f}× less step memory and {600 / 200:.1f}× fewer FLOPs"
            in flat)
    # A slower Skip Tuning step would be said so, not hidden behind "less".
    slower = [dict(r, median_step_s=8.0) if r["trainer"] == "SkipTuning" else r for r in BENCH]
    assert f"takes {8 / 4:.1f}× more time" in " ".join(rn.render_cost_benchmark(
        rn.BenchmarkRecord(slower, ()), PROV).split())
    assert text.endswith(PROV.line())


def test_demo_zero_shot_table_and_light_sentence():
    record = rn.ZeroShotRecord([
        rn.ZeroShotRow("Alpha", run(40.0, 40), run(70.5, 40), base=run(55.0, 20), new=run(25.0, 20)),
        rn.ZeroShotRow("Beta", run(12.25, 25), run(20.0, 25)),
    ], light=(1.0, 0.5, 0.25))
    text = rn.render_demo_zero_shot(record, PROV)
    _, _, alpha, beta = table_rows(text)
    assert alpha == ["Alpha", "40", f"{100 / 40:.1f}%", "40.0% (base 20 classes: 55.0%, new 20: 25.0%)"]
    assert beta == ["Beta", "25", f"{100 / 25:.1f}%", f"{12.25:.1f}%"]
    flat = " ".join(text.split())
    assert "R, G, B gains 1.0, 0.5, 0.25" in flat
    assert "test splits of Alpha / Beta reach 70.5% / 20.0% with the same checkpoint" in flat
    assert f"costs zero-shot CLIP {70.5 - 40:.1f} / {20 - 12.25:.1f} points" in flat


def test_demo_coop_sentence_follows_the_signs():
    settings = rn.CoopSettings(shots=4, seed=3, epochs=7, lr=0.5, batch=8, optimizer="SGD", ctx_init="x y",
                               precision="fp32")

    def render(coop_base: float, coop_new: float) -> str:
        record = rn.CoopRecord(settings, zero_shot_base=run(50.0, 6, 60), zero_shot_new=run(40.0, 5, 50),
                               coop_base=run(coop_base, 6, 60, 12.0), coop_new=run(coop_new, 5, 50, 1.5),
                               zero_shot_all=run(45.0, 11, 110, 3.0), generation_s=2.0, startup_s=4.0)
        return " ".join(rn.render_demo_coop(record, PROV).split())

    text = render(60.0, 35.0)
    assert 'CoOp, 4 shots, seed 3, trained on the 6 base classes' in text
    assert '(context initialised from "x y", SGD lr 0.5, 7 epochs, batch 8, fp32)' in text
    assert "| CoOp, 4 shots | 60.0% | 35.0% |" in text and "| zero-shot CLIP | 50.0% | 40.0% |" in text
    assert "| | base (6 classes, 60 test images) | new (5 classes, 50 test images) |" in text
    assert "gains 10.0 points on the classes it was trained on and loses 5.0 on unseen ones, the base/new" in text
    assert "12 s for the CoOp run (training and test), 1.5 s for its evaluation" in text
    assert "3.0 s for a zero-shot run on all 11 classes" in text and "adds 4.0 s for starting Python" in text
    # No CoCoOp pattern claimed when CoOp also gains on the new classes.
    other = render(45.0, 41.0)
    assert "loses 5.0 on the classes it was trained on and gains 1.0 points on unseen ones." in other
    assert "CoCoOp" not in other


def test_digits_and_quick_start_quote_their_records():
    digits = " ".join(rn.render_demo_digits(rn.DigitsRecord(123, run(11.0, 10, 37), run(13.5, 10, 37)), PROV).split())
    assert "(123 images" in digits and "37 test images" in digits
    assert "zero-shot CLIP scores 11.0% and CoOp (16 shots" in digits and "13.5%; chance for 10 classes is 10.0%" in digits
    quick = " ".join(rn.render_quick_start(rn.QuickStartRecord(77.4, 9, ["a", "b", "c"], [1, 2]), PROV).split())
    assert "(3 datasets x 2 seeds" in quick and "9 `train.py` runs" in quick and "it took 77 s" in quick


def batching_result(variant: str, calls: int, tokens: int, diff: float, step_s: float, step_mb: float,
                    eval_s: float, loop_step_s: float, loop_eval_s: float) -> dict:
    return {"variant": variant, "text_calls_per_step": calls, "tokens_per_prompt": tokens, "max_abs_logit_diff": diff,
            "median_step_s": step_s, "step_s_per_image": step_s / 4, "step_memory_mb": step_mb,
            "peak_memory_mb": 2000.0 + step_mb, "median_eval_s": eval_s, "speedup_step": loop_step_s / step_s,
            "speedup_eval": loop_eval_s / eval_s}


BATCHING = rn.BatchingRecord({
    "results": [batching_result("batched", 1, 11, 2e-5, 8.0, 1500.0, 2.0, 60.0, 20.0),
                batching_result("batched, chunks <= 256 MB", 14, 11, 3e-5, 12.0, 300.0, 2.5, 60.0, 20.0),
                batching_result("per-image loop (original)", 4, 77, 0.0, 60.0, 9000.0, 20.0, 60.0, 20.0)],
    "logit_tolerance": 0.5, "batch": 4, "classes": 100, "image_size": 224, "steps": 2, "device": "cpu",
    "precision": "fp32", "geometry": "vit_b16", "chunk_mb": 256.0, "memory_kind": "cpu_peak_rss", "torch": "9.9.9",
    "threads": 2,
}, ("--batch", "4"))


def test_cocoop_batching_block_quotes_the_record():
    text = rn.render_cocoop_batching(BATCHING, PROV)
    flat = " ".join(text.split())
    assert "Command: `python -m benchmarks.cocoop_batching --batch 4`." in text
    assert "ViT-B/16 geometry (random weights), fp32, batch 4, 100 classes, 224 px, 2 timed steps" in flat
    rows = table_rows(rn.batching_table(BATCHING.record["results"]))
    assert rows[0][:3] == ["variant", "text calls / step", "tokens / prompt"]
    assert rows[2] == ["batched", "1", "11", "2.0e-05", "8.00", "2.00", f"{60 / 8:.1f}", "1500", "2.00",
                       f"{20 / 2:.1f}"]
    assert f"takes {60 / 8:.1f}× less time per image than the per-image loop and {9000 / 1500:.1f}× less step" in flat
    assert f"Chunks of at most 256 MB take {1500 / 300:.1f}× less step memory than one call, for {12 / 8:.1f}×" in flat


FAKE = {
    "quick_start": rn.QuickStartRecord(60.0, 8, ["a", "b"], [1, 2]),
    "demo_digits": rn.DigitsRecord(100, run(10.0), run(10.0)),
    "demo_zero_shot": rn.ZeroShotRecord([rn.ZeroShotRow("A", run(1.0), run(2.0))], (1.0, 1.0, 1.0)),
    "demo_coop": rn.CoopRecord(rn.CoopSettings(1, 1, 1, 0.1, 1, "SGD", "a", "fp32"), *(run(1.0),) * 5, 1.0, 1.0),
    "cost_benchmark": rn.BenchmarkRecord(BENCH, ("--trainer", "all")),
    "cocoop_batching": BATCHING,
}


def test_every_block_renders_into_readme_without_touching_the_rest():
    assert set(FAKE) == set(rn.BLOCKS)  # a new block needs a made-up record here
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    contents = {name: block.render(FAKE[name], PROV) for name, block in rn.BLOCKS.items()}
    out = rn.replace_blocks(readme, contents)
    marker = re.compile(r"<!-- readme_numbers:\w+ -->.*?<!-- /readme_numbers:\w+ -->", re.S)
    assert marker.split(out) == marker.split(readme)  # everything outside the blocks, unchanged
    for name, content in contents.items():
        assert rn.wrap_block(name, content) in out and PROV.line() in content
    assert rn.replace_blocks(out, contents) == out


def test_provenance_names_the_command_and_the_machine():
    prov = rn.Provenance.now("demo_coop")
    line = " ".join(prov.line().split())  # wrapped at README's width
    assert prov.command == "python -m benchmarks.readme_numbers --only demo_coop --write"
    assert f"`{prov.command}`" in line and prov.cpu in line and f"({prov.cores} cores)" in line
    assert f"torch {prov.torch}" in line and re.search(r", \d{4}-\d\d-\d\d", line)


def test_a_marker_quoted_inside_a_line_is_not_a_marker():
    text = "Blocks sit between `<!-- readme_numbers:NAME -->` lines.\n" + TEXT
    assert set(rn.find_blocks(text)) == {"one", "two"}


def test_other_work_is_what_the_machine_did_besides_our_processes():
    # 30 busy CPU-seconds on the machine in 20 s, 10 of them ours: others kept one core busy.
    assert rn.others_cores(machine_busy=30.0, own=10.0, wall=20.0) == 1.0
    assert rn.others_cores(machine_busy=9.0, own=10.0, wall=20.0) == 0.0  # clock-tick rounding, never negative
    assert "other processes kept 1.0 of the 2 cores busy" in " ".join(
        rn.Provenance("c", "cpu", 2, "3", "t", "d", 1.0).line().split())
    # More than a quarter of a core of other work counts as a busy machine (its times are inflated).
    assert rn.Provenance("c", "cpu", 2, "3", "t", "d", 0.3).busy()
    assert not rn.Provenance("c", "cpu", 2, "3", "t", "d", 0.1).busy()
    assert not rn.Provenance("c", "cpu", 2, "3", "t", "d", None).busy()
