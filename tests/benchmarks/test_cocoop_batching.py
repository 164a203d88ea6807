"""benchmarks.cocoop_batching on a tiny geometry: the three variants give the same logits, the
record says how each called the text tower. Timings are not targets here."""
from __future__ import annotations

import json
import math

from benchmarks import cocoop_batching
from trainers.common import TEXT_ACTIVATION_FACTOR

TINY = ["--geometry", "tiny", "--image-size", "32", "--classes", "5", "--batch", "3", "--steps", "1",
        "--device", "cpu"]


def test_variants_agree_and_call_the_text_tower_as_described(tmp_path, capsys):
    budget_mb = 2.0  # a few of the tiny tower's prompts (~0.4 MB each with gradients)
    record = cocoop_batching.main([*TINY, "--chunk-mb", str(budget_mb), "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == record
    batched, chunked, loop = record["results"]
    # measure() raises when the logits differ by more than the bound; the record shows they were compared.
    for r in record["results"]:
        assert 0 <= r["max_abs_logit_diff"] <= record["logit_tolerance"]
        assert r["median_step_s"] > 0 and r["median_eval_s"] > 0
    assert loop["max_abs_logit_diff"] == 0.0 and loop["speedup_step"] == 1.0
    assert batched["text_calls_per_step"] == 1 and loop["text_calls_per_step"] == 3  # one per image
    assert loop["tokens_per_prompt"] == 77 and batched["tokens_per_prompt"] < 77  # cut after the last EOT
    # The 3 x 5 prompts in chunks within the budget (tokens x width 64 x 4 bytes x factor x 12 blocks
    # per prompt with gradients), each chunk run again in the backward pass.
    per_prompt_mb = chunked["tokens_per_prompt"] * 64 * 4 * TEXT_ACTIVATION_FACTOR * 12 / 2**20
    chunks = math.ceil(15 / math.floor(budget_mb / per_prompt_mb))
    assert chunks > 1 and chunked["text_calls_per_step"] == 2 * chunks
    assert "per-image loop (original)" in capsys.readouterr().out
