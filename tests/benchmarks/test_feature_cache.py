"""benchmarks.feature_cache on a tiny geometry: the JSON contract, and that the cached evaluation it
times is a real cache hit with the uncached logits. Timings are not targets here."""
from __future__ import annotations

import json

import pytest

from benchmarks import feature_cache
from engine.errors import ConfigValueError

TINY = ["--geometry", "tiny", "--images", "6", "--classes", "3", "--batch", "4", "--device", "cpu"]


def test_the_benchmark_times_a_real_cache_hit_with_the_uncached_logits(tmp_path):
    path = tmp_path / "fc.json"
    feature_cache.main(["--trainer", "ZeroshotCLIP", "--json", str(path), *TINY])
    (record,) = json.loads(path.read_text())
    assert record["trainer"] == "ZeroshotCLIP" and record["images"] == 6
    assert record["eval_cache_use"] == "hit" and record["eval_logits_equal"] is True
    assert all(record[k] > 0 for k in ("eval_uncached_s", "eval_cache_build_s", "eval_cache_hit_s"))
    assert "epoch_deterministic_uncached_s" not in record  # zero-shot CLIP does not train


def test_an_unknown_trainer_is_a_usage_error():
    with pytest.raises(ConfigValueError, match="CoOp"):
        feature_cache.main(["--trainer", "CoOpp", *TINY])
