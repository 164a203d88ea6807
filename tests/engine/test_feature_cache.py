"""The feature store on its own: verified shards, corrupt ones removed, concurrent writers."""
from __future__ import annotations

import multiprocessing
import os

import torch

from engine.feature_cache import FeatureKey, FeatureStore, is_deterministic
from engine.data.transforms import build_transform
from engine.config import get_cfg_default

KEY = FeatureKey(backbone_sha256="0" * 64, encoder="MethodModel.encode_frozen_images", transform="T", precision="fp32",
                 autocast=False, device="cpu", torch_version=torch.__version__, batch_size=4)
IDS = [f"/data/img_{i}.jpg|100|{i}" for i in range(64)]
OWN = {1: slice(0, 20), 2: slice(20, 50)}


def _features(seed: int) -> torch.Tensor:
    return torch.randn(len(IDS), 256, generator=torch.Generator().manual_seed(seed))


def test_written_features_are_read_back_by_id_and_other_keys_do_not_see_them(tmp_path):
    store = FeatureStore(str(tmp_path), KEY)
    features = _features(0)
    store.write("ds_test", IDS[:40], features[:40])
    store.write("ds_test", IDS[40:], features[40:])
    found = store.load("ds_test", list(reversed(IDS)))
    assert torch.equal(torch.stack([found[i] for i in IDS]), features)
    assert store.load("ds_val", IDS) == {}
    other = FeatureKey(**{**KEY.__dict__, "precision": "fp16"})
    assert FeatureStore(str(tmp_path), other).load("ds_test", IDS) == {}


def test_a_truncated_or_tampered_shard_is_removed_not_trusted(tmp_path):
    store = FeatureStore(str(tmp_path), KEY)
    path = store.write("ds_test", IDS, _features(0))
    with open(path, "r+b") as f:  # a job killed while copying the cache, a full disk, ...
        f.truncate(os.path.getsize(path) // 2)
    assert store.load("ds_test", IDS) == {}
    assert not os.path.exists(path)

    path = store.write("ds_test", IDS, _features(0))
    shard = torch.load(path, weights_only=True)
    shard["features"][3, 7] += 1.0  # loadable, but not what was computed
    torch.save(shard, path)
    assert store.load("ds_test", IDS) == {}
    assert not os.path.exists(path)


def _write_repeatedly(root: str, seed: int, times: int) -> None:
    store = FeatureStore(root, KEY)
    for i in range(times):
        # Two jobs write the same shard (the same images, the same features) and one of their own
        # (each its own few-shot images).
        store.write("ds_test", IDS, _features(0))
        store.write("ds_train", IDS[OWN[seed]], _features(0)[OWN[seed]])


def test_two_writers_at_once_leave_a_valid_cache_and_readers_never_see_a_partial_file(tmp_path):
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_repeatedly, args=(str(tmp_path), seed, 15)) for seed in (1, 2)]
    for writer in writers:
        writer.start()
    store = FeatureStore(str(tmp_path), KEY)
    expected = _features(0)
    reads = 0
    while any(w.is_alive() for w in writers) or reads == 0:
        found = store.load("ds_test", IDS)
        if found:  # a reader sees either nothing yet or the whole, verified shard
            assert torch.equal(torch.stack([found[i] for i in IDS]), expected)
            reads += 1
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert reads > 0
    found = store.load("ds_test", IDS)
    assert torch.equal(torch.stack([found[i] for i in IDS]), expected)
    found = store.load("ds_train", IDS[:50])
    assert torch.equal(torch.stack([found[i] for i in IDS[:50]]), expected[:50])
    assert not [name for name in os.listdir(store.folder) if name.endswith(".tmp")]


def test_only_transforms_without_random_steps_count_as_deterministic():
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (32, 32)
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    assert not is_deterministic(build_transform(cfg, is_train=True))
    assert is_deterministic(build_transform(cfg, is_train=False))
    cfg.INPUT.TRANSFORMS = ("normalize",)
    assert is_deterministic(build_transform(cfg, is_train=True))
    assert not is_deterministic(None)
