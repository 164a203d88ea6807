"""One contract for every method in TRAINER_REGISTRY: a method added later is checked here without
new test code. Each runs with its own recipe (`ClipMethod.recipe`) on a small random CLIP whose depth
is ViT-B/16's (12 blocks per tower, so every method's default depth settings fit), in fp32 on CPU.
A method on a timm ViT (`backbone_kind = "timm_vit"`, e.g. DyT) gets a random 12-block ViT-Tiny at
32 px instead, named by its `arch_key`.

- it builds and evaluates;
- one training step changes its learnable parameters and nothing else;
- save then load gives identical logits;
- a model trained on the base classes loads and evaluates on the new classes;
- a run stopped after its first epoch and rerun ends bit-identical to an uninterrupted run;
- in fast mode on a CPU (bf16) no attention goes through the fused kernel, which is slower there.
"""
from __future__ import annotations

import pytest
import torch

import trainers  # noqa: F401  (registers the methods)
from engine import TRAINER_REGISTRY
from tests.conftest import config_path, run_train



def unavailable(name: str) -> str | None:
    """Why a registered trainer cannot run in this checkout (DePT's alias of a host not merged yet), else None."""
    reason = getattr(TRAINER_REGISTRY.get(name), "unavailable_reason", None)
    return reason() if reason is not None else None


# A trainer that cannot run here is left out (its error is tested in tests/trainers/test_dept.py); it joins the
# contract as soon as it can run. A name declared to run exactly what another registered name runs
# (`same_run_as`: `DePT` with its default host = `ExtrasLinearProbeCoOp`) is checked once, under that name.
METHODS = sorted(name for name in TRAINER_REGISTRY.registered_names()
                 if unavailable(name) is None and getattr(TRAINER_REGISTRY.get(name), "same_run_as", None) is None)
TRAINED = [name for name in METHODS if TRAINER_REGISTRY.get(name).has_training]


@pytest.fixture(scope="module")
def deep_clip_path(tmp_path_factory):
    """Width 64 (one attention head), 12 blocks in each tower, 32 px images in 2x2 patches."""
    from tests.factories.clip_checkpoint import write_random_clip

    return write_random_clip(tmp_path_factory.mktemp("clip") / "deep.pt", "vit", vision_layers=12, text_layers=12,
                             vision_patch_size=16, vision_width=64, text_width=64)


@pytest.fixture(scope="module")
def tiny_vit_path(tmp_path_factory):
    """timm's ViT-Tiny geometry (width 192, 12 blocks, 3 heads) at 32 px: 2x2 patches, random weights."""
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "vit_tiny_32.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def backbones(deep_clip_path, tiny_vit_path):
    return {"clip": deep_clip_path, "timm_vit": tiny_vit_path}


def backbone_opts(name: str, backbones) -> list[str]:
    trainer = TRAINER_REGISTRY.get(name)
    kind = getattr(trainer, "backbone_kind", "clip")
    if kind == "clip":
        return ["MODEL.BACKBONE.NAME", str(backbones["clip"])]
    # The recipe's first steps warm up from LR 0 (DyT's): without warm-up the first step moves.
    return ["MODEL.BACKBONE.NAME", str(backbones[kind]), trainer.arch_key, "vit_tiny_patch16_224",
            "INPUT.SIZE", "(32, 32)", "OPTIM.WARMUP_EPOCH", "0"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from tests.factories.datasets import make_caltech101_tree

    return make_caltech101_tree(tmp_path_factory.mktemp("data") / "root")


def argv(name: str, root, backbones, out, *opts: str, subsample: str = "base", flags: tuple = ()) -> list[str]:
    trainer = TRAINER_REGISTRY.get(name)
    return [
        "--root", str(root), "--seed", "1", "--trainer", name, *flags,
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", f"{trainer.recipe}.yaml"), "--output-dir", str(out),
        *backbone_opts(name, backbones), trainer.precision_key, "fp32",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "8",
        "DATASET.SUBSAMPLE_CLASSES", subsample, "OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.01", *opts,
    ]


def train_one_step(trainer) -> None:
    """One `forward_backward` on the first batch of the first epoch, as `train()` would run it."""
    trainer.before_train()
    trainer.epoch = 0
    trainer.before_epoch()
    trainer.set_model_mode("train")
    batches = trainer.epoch_batches()
    trainer.batch_idx, trainer.num_batches = 0, len(batches)
    trainer.forward_backward(next(iter(batches)))
    trainer.close_writer()


def build(arguments: list[str]):
    import train
    from engine import build_trainer

    return build_trainer(train.setup_cfg(train.build_parser().parse_args(arguments)))


def test_every_method_has_a_recipe_and_a_precision_key():
    for name in METHODS:
        trainer = TRAINER_REGISTRY.get(name)
        assert trainer.precision_key and trainer.recipe, name


@pytest.mark.parametrize("name", METHODS)
def test_builds_on_a_small_clip_and_evaluates(name, data_root, backbones, tmp_path):
    flags = () if TRAINER_REGISTRY.get(name).has_training else ("--eval-only",)
    trainer = build(argv(name, data_root, backbones, tmp_path, flags=flags))
    batch = next(iter(trainer.test_loader))
    logits = trainer.model_inference(batch["img"])
    assert logits.shape == (len(batch["img"]), trainer.num_classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", TRAINED)
def test_one_step_changes_the_learnable_parameters_and_nothing_else(name, data_root, backbones, tmp_path):
    trainer = build(argv(name, data_root, backbones, tmp_path))
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict(keep_vars=False).items()}
    trainable = {k for k, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable, "a trained method must have trainable parameters"
    train_one_step(trainer)
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "one step changed nothing"
    # Parameters shared by two modules appear under both names in the state dict: compare by tensor.
    shared = {k for k, v in trainer.model.state_dict(keep_vars=True).items() if v.requires_grad}
    assert changed <= shared | trainable, sorted(changed - shared - trainable)[:5]
    with_grad = {k for k, p in trainer.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad <= changed, sorted(with_grad - changed)[:5]


@pytest.fixture(scope="module")
def trained_runs(data_root, backbones, tmp_path_factory):
    """Each trained method's uninterrupted 2-epoch run on the base classes, made once: name -> output dir."""
    runs = {}

    def get(name: str):
        if name not in runs:
            runs[name] = tmp_path_factory.mktemp(f"run_{name}")
            run_train(argv(name, data_root, backbones, runs[name]))
        return runs[name]

    return get


@pytest.mark.parametrize("name", TRAINED)
def test_save_then_load_gives_identical_logits_and_new_classes_load(name, data_root, backbones, tmp_path,
                                                                    trained_runs):
    trained_dir = trained_runs(name)
    first = build(argv(name, data_root, backbones, tmp_path / "a", flags=("--eval-only",)))
    images = next(iter(first.test_loader))["img"]
    untrained_logits = first.model_inference(images)
    first.load_model(str(trained_dir), epoch=2)
    second = build(argv(name, data_root, backbones, tmp_path / "b", flags=("--eval-only",)))
    second.load_model(str(trained_dir), epoch=2)
    logits = first.model_inference(images)
    assert torch.equal(logits, second.model_inference(images))
    assert not torch.equal(logits, untrained_logits)  # the checkpoint mattered

    new = build(argv(name, data_root, backbones, tmp_path / "new", subsample="new", flags=("--eval-only",)))
    new.load_model(str(trained_dir), epoch=2)
    batch = next(iter(new.test_loader))
    assert new.model_inference(batch["img"]).shape == (len(batch["img"]), new.num_classes)
    for module_name, module in new.model.learnable_modules().items():
        saved = torch.load(trained_dir / module_name / "model.pth.tar-2", weights_only=True)["state_dict"]
        own = module.state_dict()
        loaded = [k for k in saved if not new._skipped_key(k)]
        assert loaded and all(torch.equal(own[k], saved[k]) for k in loaded)


@pytest.mark.parametrize("name", TRAINED)
def test_a_run_stopped_after_its_first_epoch_resumes_bit_identically(name, data_root, backbones, tmp_path,
                                                                     monkeypatch, trained_runs):
    """The stopped and resumed run also updates its parameters during backward
    (OPTIM.UPDATE_IN_BACKWARD always), where the uninterrupted one updates after backward (auto: these
    gradients are small): the same bits at the end show both that the resume point restores
    everything and that the update in backward is the step after backward, for every method."""
    from engine.trainer import SimpleTrainer

    full = trained_runs(name)
    original_after_epoch = SimpleTrainer.after_epoch

    def stop_after_first_epoch(self):
        original_after_epoch(self)
        if self.epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(SimpleTrainer, "after_epoch", stop_after_first_epoch)
    in_backward = ("OPTIM.UPDATE_IN_BACKWARD", "always")
    with pytest.raises(KeyboardInterrupt):
        run_train(argv(name, data_root, backbones, tmp_path, *in_backward))
    monkeypatch.setattr(SimpleTrainer, "after_epoch", original_after_epoch)
    assert (tmp_path / "resume.pth.tar").is_file()
    run_train(argv(name, data_root, backbones, tmp_path, *in_backward))
    folders = sorted(p.name for p in full.iterdir() if (p / "model.pth.tar-2").is_file())
    assert folders and folders == sorted(p.name for p in tmp_path.iterdir() if (p / "model.pth.tar-2").is_file())
    for module_name in folders:
        a = torch.load(full / module_name / "model.pth.tar-2", weights_only=True)
        b = torch.load(tmp_path / module_name / "model.pth.tar-2", weights_only=True)
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for key in a["state_dict"]:
            assert torch.equal(a["state_dict"][key], b["state_dict"][key]), (module_name, key)


@pytest.mark.parametrize("name", TRAINED)
def test_fast_mode_attention_on_a_cpu_skips_the_fused_kernel(name, data_root, backbones, tmp_path,
                                                             fused_attention_calls):
    trainer = build(argv(name, data_root, backbones, tmp_path, "TRAIN.FAST_MODE", "True"))
    train_one_step(trainer)
    assert torch.bfloat16 not in fused_attention_calls.dtypes
