"""Pieces of the provenance card: the cached file digest, the recorded prompts, the config hash."""
from __future__ import annotations

import hashlib
import json
import os

import clip
from engine.provenance import config_hash, file_sha256


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


def test_recording_texts_sees_what_is_tokenised_only_inside_the_block():
    from clip.tokenizer import tokenize as imported_by_name

    with clip.recording_texts() as prompts:
        clip.tokenize(["a photo of a cat.", "a photo of a dog."])
        imported_by_name("itap of a car.")  # a method that imported the function itself is seen too
    clip.tokenize("after the block.")
    assert prompts == ["a photo of a cat.", "a photo of a dog.", "itap of a car."]


def test_config_hash_ignores_locations_but_not_settings():
    cfg = {"OUTPUT_DIR": "/a", "DATASET": {"ROOT": "/data", "NAME": "Caltech101", "NUM_SHOTS": 16}}
    moved = {"OUTPUT_DIR": "/b", "DATASET": {"ROOT": "/elsewhere", "NAME": "Caltech101", "NUM_SHOTS": 16}}
    changed = {"OUTPUT_DIR": "/a", "DATASET": {"ROOT": "/data", "NAME": "Caltech101", "NUM_SHOTS": 8}}
    assert config_hash(cfg) == config_hash(moved) != config_hash(changed)


def test_card_of_a_training_run_and_of_an_evaluation_from_its_checkpoint(caltech_root, tiny_clip_path, tmp_path,
                                                                         monkeypatch):
    from tests.conftest import run_train
    from tests.trainers.test_coop import coop_argv

    monkeypatch.setenv("CLIP_ADAPT_HASH_CACHE", str(tmp_path / "sha256.json"))
    trained = run_train(coop_argv(caltech_root, tiny_clip_path, tmp_path / "train", "DATASET.NUM_SHOTS", "2",
                                  epochs=2))
    card = trained["provenance"]
    assert card["backbone"]["sha256"] == hashlib.sha256(tiny_clip_path.read_bytes()).hexdigest()
    split = caltech_root / "caltech-101" / "split_zhou_Caltech101.json"
    assert card["data"]["split_sha256"] == hashlib.sha256(split.read_bytes()).hexdigest()
    assert card["data"]["fewshot_sample"]["images"] == 2 * card["data"]["num_classes"]
    assert card["checkpoint"] == {"evaluated": "last", "epoch": 2, "model_dir": None, "trained_on": "Caltech101"}
    assert "RandomResizedCrop" in card["transforms"]["train"] and "CenterCrop" in card["transforms"]["test"]
    assert card["config"]["resolved"]["OPTIM"]["MAX_EPOCH"] == 2
    assert card["versions"]["torch"] == torch_version()

    evaluated = run_train(coop_argv(caltech_root, tiny_clip_path, tmp_path / "eval", "DATASET.NUM_SHOTS", "2",
                                    "DATASET.SUBSAMPLE_CLASSES", "new", epochs=2,
                                    flags=("--eval-only", "--model-dir", str(tmp_path / "train"), "--load-epoch", "2")))
    assert card["prompts"]["count"] == card["data"]["num_classes"] == 6
    card_new = evaluated["provenance"]
    assert card_new["checkpoint"] == {"evaluated": "last", "epoch": 2, "model_dir": str(tmp_path / "train"),
                                      "trained_on": "Caltech101"}
    # One prompt per new class (a random context has no initialisation text), with CoOp's placeholders.
    assert card_new["prompts"]["count"] == card_new["data"]["num_classes"] == 3
    assert card_new["prompts"]["first"][0].startswith("X X X X ")
    assert card_new["data"]["classnames_sha256"] != card["data"]["classnames_sha256"]


def torch_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("torch")


def test_digest_cache_forgets_deleted_files(tmp_path):
    cache = tmp_path / "cache.json"
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(b"a")
    second.write_bytes(b"b")
    file_sha256(str(first), str(cache))
    first.unlink()
    file_sha256(str(second), str(cache))
    assert list(json.loads(cache.read_text())) == [str(second)]
