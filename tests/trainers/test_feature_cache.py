"""The frozen-feature cache through the method base: cached runs give exactly the uncached logits
(and trained weights), a changed transform, backbone or precision misses, a corrupt shard is
rebuilt, and a method whose image tower trains never reads it."""
from __future__ import annotations

import glob

import pytest
import torch

from engine.errors import ConfigValueError
from tests.conftest import config_path
from tests.factories.clip_checkpoint import write_random_clip

RESOLUTION = 32


@pytest.fixture
def caltech_root(tmp_path):
    """A small 6-class Caltech101 tree (1 train, 1 val, 2 test images per class): steps are what cost."""
    from tests.factories.datasets import make_caltech101_tree

    return make_caltech101_tree(tmp_path / "data", n_train=1, n_val=1, n_test=2)


def _argv(root, clip_path, out, cache_dir, *opts: str, trainer: str = "CoOp",
          config: str = "CoOp/vit_b16_ep50", prec_key: str = "TRAINER.COOP.PREC") -> list[str]:
    return [
        "--root", str(root), "--seed", "1", "--trainer", trainer,
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", *config.split("/")) + ".yaml",
        "--output-dir", str(out),
        "MODEL.BACKBONE.NAME", str(clip_path),
        "INPUT.SIZE", f"({RESOLUTION}, {RESOLUTION})",
        "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "DATALOADER.TEST.BATCH_SIZE", "5",
        prec_key, "fp32",
        "OPTIM.MAX_EPOCH", "1",
        "FEATURE_CACHE.DIR", str(cache_dir),
        *opts,
    ]


def _trainer(argv):
    import train
    from engine import build_trainer
    from engine.utils import set_random_seed

    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    set_random_seed(cfg.SEED)  # what train.py does: the same prompt initialisation in every build
    return build_trainer(cfg)


def _evaluate(trainer) -> tuple[torch.Tensor, dict]:
    trainer.test()
    return trainer.last_test["logits"], dict(getattr(trainer, "feature_cache_use", {}))


def _count_image_encoder_calls(trainer) -> list:
    calls: list = []
    trainer.model.clip_model.visual.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_cached_evaluation_gives_exactly_the_uncached_logits(caltech_root, tiny_clip_path, tmp_path):
    cache = tmp_path / "cache"
    argv = _argv(caltech_root, tiny_clip_path, tmp_path / "out", cache)
    uncached, use = _evaluate(_trainer(argv + ["FEATURE_CACHE.ENABLED", "False"]))
    assert use == {} and not cache.exists()

    built, use = _evaluate(_trainer(argv))
    assert use == {"test": "built"}
    hit_trainer = _trainer(argv)
    calls = _count_image_encoder_calls(hit_trainer)
    hit, use = _evaluate(hit_trainer)
    assert use == {"test": "hit"} and calls == []  # no image read, no encoder run
    assert torch.equal(built, uncached) and torch.equal(hit, uncached)
    assert hit_trainer.save_results()["feature_cache"] == {"enabled": True, "used": {"test": "hit"}, "train_views": 0}


@pytest.mark.parametrize("change", ["transform", "backbone", "precision"])
def test_a_changed_transform_backbone_or_precision_misses_the_cache(change, caltech_root, tiny_clip_path, tmp_path):
    cache = tmp_path / "cache"
    argv = _argv(caltech_root, tiny_clip_path, tmp_path / "out", cache)
    _evaluate(_trainer(argv))
    if change == "transform":
        changed = argv + ["INPUT.INTERPOLATION", "bilinear"]
    elif change == "backbone":  # the same geometry, other weights, in another file
        other = write_random_clip(tmp_path / "other_clip.pt", "vit", seed=7)
        changed = _argv(caltech_root, other, tmp_path / "out", cache)
    else:
        changed = argv + ["TRAINER.COOP.PREC", "fp16"]
    cached, use = _evaluate(_trainer(changed))
    assert use == {"test": "built"}
    uncached, _ = _evaluate(_trainer(changed + ["FEATURE_CACHE.ENABLED", "False"]))
    assert torch.equal(cached, uncached)


def test_a_corrupt_cache_file_is_rebuilt_not_trusted(caltech_root, tiny_clip_path, tmp_path):
    cache = tmp_path / "cache"
    argv = _argv(caltech_root, tiny_clip_path, tmp_path / "out", cache)
    reference, _ = _evaluate(_trainer(argv))
    (shard,) = glob.glob(str(cache / "*" / "*test*.pt"))
    data = torch.load(shard, weights_only=True)
    data["features"].mul_(2.0)  # a loadable file with wrong features
    torch.save(data, shard)
    rebuilt, use = _evaluate(_trainer(argv))
    assert use == {"test": "built"} and torch.equal(rebuilt, reference)
    with open(shard, "r+b") as f:  # and a truncated one
        f.truncate(100)
    rebuilt, use = _evaluate(_trainer(argv))
    assert use == {"test": "built"} and torch.equal(rebuilt, reference)
    assert torch.equal(_evaluate(_trainer(argv))[0], reference)


def test_training_on_cached_features_under_a_deterministic_transform_matches_uncached_training(
        caltech_root, tiny_clip_path, tmp_path):
    # Batch size 1 for both the cache's computation and training: each image is encoded alone either
    # way, so the features, and so every step, are bit-identical.
    opts = ["INPUT.TRANSFORMS", "('normalize',)", "DATALOADER.TRAIN_X.BATCH_SIZE", "1",
            "DATALOADER.TEST.BATCH_SIZE", "1", "TEST.NO_TEST", "True"]
    ctx = {}
    for name, enabled in (("uncached", "False"), ("built", "True"), ("hit", "True")):
        trainer = _trainer(_argv(caltech_root, tiny_clip_path, tmp_path / name, tmp_path / "cache", *opts,
                                 "FEATURE_CACHE.ENABLED", enabled))
        calls = _count_image_encoder_calls(trainer)
        trainer.train()
        ctx[name] = trainer.model.prompt_learner.ctx.detach().clone()
        if name == "hit":
            assert trainer.feature_cache_use == {"train_x": "hit"} and calls == []
    assert not torch.equal(ctx["uncached"], _trainer(_argv(caltech_root, tiny_clip_path, tmp_path / "fresh",
                                                           tmp_path / "cache", *opts)).model.prompt_learner.ctx)
    assert torch.equal(ctx["built"], ctx["uncached"]) and torch.equal(ctx["hit"], ctx["uncached"])


def test_random_augmentation_runs_the_encoder_unless_cached_views_are_asked_for(caltech_root, tiny_clip_path,
                                                                                  tmp_path):
    argv = _argv(caltech_root, tiny_clip_path, tmp_path / "a", tmp_path / "cache", "TEST.NO_TEST", "True")
    trainer = _trainer(argv)  # the recipe's random resized crop and flip
    calls = _count_image_encoder_calls(trainer)
    trainer.train()
    assert "train_x" not in trainer.feature_cache_use and len(calls) == len(trainer.train_loader_x)

    views = ["FEATURE_CACHE.TRAIN_VIEWS", "3"]
    results = []
    for run in ("b", "c"):  # the second reads the views the first computed, and trains identically
        trainer = _trainer(_argv(caltech_root, tiny_clip_path, tmp_path / run, tmp_path / "cache", *views))
        trainer.train()
        results.append((trainer.model.prompt_learner.ctx.detach().clone(), trainer.save_results()["feature_cache"]))
    assert results[0][1]["used"]["train_x"] == "built" and results[1][1]["used"]["train_x"] == "hit"
    assert results[1][1]["train_views"] == 3
    assert torch.equal(results[0][0], results[1][0])
    (shard,) = glob.glob(str(tmp_path / "cache" / "*" / "*train_x*.pt"))
    assert torch.load(shard, weights_only=True)["features"].shape[1] == 3  # [N, K, D]


def test_a_trainable_image_tower_never_reads_the_cache(caltech_root, tiny_clip_path, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    ft_argv = _argv(caltech_root, tiny_clip_path, tmp_path / "ft", cache, trainer="FinetuneCLIP",
                    config="FinetuneCLIP/vit_b16_ep10_bs4", prec_key="TRAINER.PREC")
    trainer = _trainer(ft_argv)
    calls = _count_image_encoder_calls(trainer)
    trainer.test()
    assert calls and not cache.exists() and trainer.save_results()["feature_cache"]["enabled"] is False
    with pytest.raises(ConfigValueError, match="FEATURE_CACHE.TRAIN_VIEWS"):
        _trainer(ft_argv + ["FEATURE_CACHE.TRAIN_VIEWS", "2"]).train()

    # A model that claims a frozen tower while training it is stopped before reading anything.
    from trainers.coop import CoOpModel

    monkeypatch.setattr(CoOpModel, "set_trainable", lambda self: self.requires_grad_(True))
    with pytest.raises(RuntimeError, match="frozen_image_features"):
        _trainer(_argv(caltech_root, tiny_clip_path, tmp_path / "coop", cache)).test()
    assert not cache.exists()


@pytest.mark.parametrize("trainer, config, prec_key", [
    ("TaskRes", "TaskRes/adam_lr2e-4_B256_ep200_ViT16", "TRAINER.TaskRes.PREC"),
    ("CLIP_Adapter", "CoOp/vit_b16_ep50", "TRAINER.CLIP_ADAPTER.PREC"),
    ("ExtrasLinearProbeCoOp", "ExtrasLinearProbeCoOp/vit_b16_ep10_bs4_lr35", "TRAINER.COOP.PREC"),
])
def test_frozen_tower_methods_read_the_cache_and_give_the_uncached_logits(trainer, config, prec_key, caltech_root,
                                                                          tiny_clip_path, tmp_path):
    # Base classes: DePT's head (on the host's image features) takes part in the logits.
    argv = _argv(caltech_root, tiny_clip_path, tmp_path / "out", tmp_path / "cache", "DATASET.SUBSAMPLE_CLASSES",
                 "base", trainer=trainer, config=config, prec_key=prec_key)
    uncached, _ = _evaluate(_trainer(argv + ["FEATURE_CACHE.ENABLED", "False"]))
    _evaluate(_trainer(argv))  # builds the cache
    hit_trainer = _trainer(argv)
    calls = _count_image_encoder_calls(hit_trainer)
    hit, use = _evaluate(hit_trainer)
    assert use == {"test": "hit"} and calls == []
    assert torch.equal(hit, uncached)


def test_the_key_holds_the_precision_the_image_tower_really_runs_in(caltech_root, tiny_clip_path, tmp_path):
    # TaskRes under PREC fp16 computes its base in fp16, then runs CLIP (image tower included) in fp32:
    # its features must not be read as those of a CoOp fp16 run, whose tower is fp16.
    common = dict(prec_key="TRAINER.COOP.PREC")
    coop = _trainer(_argv(caltech_root, tiny_clip_path, tmp_path / "a", tmp_path / "cache", **common))
    taskres = _trainer(_argv(caltech_root, tiny_clip_path, tmp_path / "b", tmp_path / "cache", "TRAINER.TaskRes.PREC",
                             "fp16", trainer="TaskRes", config="TaskRes/adam_lr2e-4_B256_ep200_ViT16",
                             prec_key="TRAINER.TaskRes.PREC"))
    transform = taskres.test_loader.dataset.transform
    assert "image tower float32" in taskres._feature_key(transform, False, 5).precision
    assert taskres._feature_key(transform, False, 5) != coop._feature_key(transform, False, 5)
