"""Pieces of the provenance card: the cached file digest, the recorded prompts, the config hash."""
from __future__ import annotations

import hashlib
import json
import os

import clip
from engine.provenance import config_hash, file_sha256, recording_prompts


def test_file_digest_is_cached_by_path_mtime_and_size(tmp_path):
    data = tmp_path / "weights.pt"
    data.write_bytes(b"abc" * 1000)
    cache = tmp_path / "cache.json"
    assert file_sha256(str(data), str(cache)) == hashlib.sha256(b"abc" * 1000).hexdigest()
    # A planted cache entry is answered without reading the file: the digest is not recomputed.
    entries = json.loads(cache.read_text())
    entries[str(data)]["sha256"] = "planted"
    cache.write_text(json.dumps(entries))
    assert file_sha256(str(data), str(cache)) == "planted"
    # A new version of the file (other size and mtime) is hashed again.
    data.write_bytes(b"abcd" * 1000)
    os.utime(data, ns=(1, 1))
    assert file_sha256(str(data), str(cache)) == hashlib.sha256(b"abcd" * 1000).hexdigest()


def test_recording_prompts_sees_what_is_tokenised_and_restores_the_tokenizer():
    original = clip.tokenize
    with recording_prompts() as prompts:
        clip.tokenize(["a photo of a cat.", "a photo of a dog."])
        clip.tokenize("itap of a car.")
    assert prompts == ["a photo of a cat.", "a photo of a dog.", "itap of a car."]
    assert clip.tokenize is original


def test_config_hash_ignores_locations_but_not_settings():
    cfg = {"OUTPUT_DIR": "/a", "DATASET": {"ROOT": "/data", "NAME": "Caltech101", "NUM_SHOTS": 16}}
    moved = {"OUTPUT_DIR": "/b", "DATASET": {"ROOT": "/elsewhere", "NAME": "Caltech101", "NUM_SHOTS": 16}}
    changed = {"OUTPUT_DIR": "/a", "DATASET": {"ROOT": "/data", "NAME": "Caltech101", "NUM_SHOTS": 8}}
    assert config_hash(cfg) == config_hash(moved) != config_hash(changed)
