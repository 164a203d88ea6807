"""TaskRes and CLIP-Adapter on a tiny random CLIP: their maths against values computed here by hand
(TaskRes: the raw template-mean base, the residual normalised after the sum, the enhanced base's
projection swap; CLIP-Adapter: the two-ReLU bottleneck blended 0.2 / 0.8), the ImageNet -> A/R row
selection, the original's --enhanced-base flag, and every configs.py task of both passing train.py's check."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import clip
from engine.errors import ConfigValueError, MissingFileError
from engine.trainer import CheckpointMismatchError
from tests.conftest import config_path
from tests.factories.datasets import make_caltech101_tree
from tests.tolerances import (FP16_UNIT_ROUNDOFF, clip_image_relative_atol, clip_text_relative_atol,
                              cosine_logit_atol, low_precision_relative_error)
from trainers.taskres import TaskRes

# Folder names with underscores: TaskRes inserts them verbatim, CLIP-Adapter with spaces.
CLASSES = ("water_lilly", "wild_cat", "anchor", "ant")


@pytest.fixture
def root(tmp_path):
    return make_caltech101_tree(tmp_path / "data", classes=CLASSES)


def argv(trainer: str, config: str, root, clip_path, out, *opts: str, flags: tuple = ()) -> list[str]:
    prec = {"TaskRes": "TRAINER.TaskRes.PREC", "CLIP_Adapter": "TRAINER.CLIP_ADAPTER.PREC"}[trainer]
    return [
        "--root", str(root), "--seed", "1", "--trainer", trainer, *flags,
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", *config.split("/")), "--output-dir", str(out),
        "MODEL.BACKBONE.NAME", str(clip_path), "INPUT.SIZE", "(32, 32)", prec, "fp32",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "8",
        "DATASET.NUM_SHOTS", "2", *opts,
    ]


def taskres_argv(root, clip_path, out, *opts: str, flags: tuple = ()) -> list[str]:
    return argv("TaskRes", "TaskRes/adam_lr2e-3_B256_ep100.yaml", root, clip_path, out,
                "TRAINER.TaskRes.RESIDUAL_SCALE", "0.5", *opts, flags=flags)


def build(arguments: list[str]):
    import train
    from engine import build_trainer

    return build_trainer(train.setup_cfg(train.build_parser().parse_args(arguments)))


def test_taskres_base_is_the_raw_template_features_and_the_sum_is_normalised(root, tiny_clip_path, tmp_path):
    trainer = build(taskres_argv(root, tiny_clip_path, tmp_path))
    model, classnames = trainer.model, trainer.dm.dataset.classnames
    assert "water_lilly" in classnames  # verbatim, underscores kept
    with torch.no_grad():
        raw = model.clip_model.encode_text(clip.tokenize([f"a photo of a {c}." for c in classnames]))
    learner = model.prompt_learner
    # Not normalised: the stored base is the text tower's raw output (same computation, up to summation order).
    text_atol = clip_text_relative_atol(model.clip_model) * raw.abs().max().item()
    assert torch.allclose(learner.base_text_features, raw, rtol=0, atol=text_atol)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(classnames)), atol=0.1)
    assert torch.equal(learner.text_feature_residuals, torch.zeros_like(raw))
    assert [n for n, _ in model.named_trainable_parameters()] == ["prompt_learner.text_feature_residuals"]

    torch.manual_seed(0)
    with torch.no_grad():
        learner.text_feature_residuals.copy_(torch.randn_like(raw) * raw.norm(dim=-1, keepdim=True))
    images = next(iter(trainer.test_loader))["img"]
    logits = trainer.model_inference(images)
    with torch.no_grad():
        image = model.clip_model.encode_image(images)
    scale = model.clip_model.logit_scale.exp()
    expected = scale * F.normalize(image, dim=-1) @ F.normalize(raw + 0.5 * learner.text_feature_residuals, dim=-1).T
    prenormalised = scale * F.normalize(image, dim=-1) @ F.normalize(
        F.normalize(raw, dim=-1) + 0.5 * learner.text_feature_residuals, dim=-1).T
    atol = cosine_logit_atol(scale.item(), clip_image_relative_atol(model.clip_model),
                             clip_text_relative_atol(model.clip_model))
    assert torch.allclose(logits, expected, rtol=0, atol=atol)
    assert (logits - prenormalised).abs().max() > 10 * atol  # the order of normalising matters here


def test_enhanced_base_swaps_the_text_projection_for_the_base_only(root, tiny_clip_path, tmp_path):
    regular = build(taskres_argv(root, tiny_clip_path, tmp_path / "regular"))
    projection = regular.model.clip_model.text_projection.detach().clone()
    weight = torch.randn(projection.shape[1], projection.shape[0])  # Linear layout [D, width]
    # The original's layout, named through {dataset}/{shots}: strong_base/<Dataset>/rn50_<K>shots/model.pth.tar.
    path = tmp_path / "strong_base" / "Caltech101" / "rn50_2shots" / "model.pth.tar"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"weight": weight}}, path)
    template = str(tmp_path / "strong_base" / "{dataset}" / "rn50_{shots}shots" / "model.pth.tar")
    enhanced = build(taskres_argv(root, tiny_clip_path, tmp_path / "enhanced", flags=("--enhanced-base", template)))
    assert enhanced.cfg.TRAINER.TaskRes.ENHANCED_BASE == template

    swapped = copy.deepcopy(regular.model.clip_model)
    with torch.no_grad():
        swapped.text_projection.copy_(weight.t())
        expected = swapped.encode_text(clip.tokenize([f"a photo of a {c}." for c in enhanced.dm.dataset.classnames]))
    base = enhanced.model.prompt_learner.base_text_features
    assert torch.allclose(base, expected, rtol=0, atol=clip_text_relative_atol(swapped) * expected.abs().max().item())
    assert not torch.allclose(base, regular.model.prompt_learner.base_text_features, atol=1e-2)
    assert torch.equal(enhanced.model.clip_model.text_projection, projection)  # restored after the base

    with pytest.raises(MissingFileError, match="drive.google.com"):
        build(taskres_argv(root, tiny_clip_path, tmp_path / "missing", flags=("--enhanced-base", str(tmp_path / "x"))))
    torch.save({"state_dict": {"weight": weight.t()}}, path)
    with pytest.raises(ConfigValueError, match="shape"):
        build(taskres_argv(root, tiny_clip_path, tmp_path / "shape", flags=("--enhanced-base", str(path))))


def test_enhanced_base_flag_is_taskres_only(root, tiny_clip_path, tmp_path):
    import train

    coop = ["--root", str(root), "--trainer", "CoOp",
            "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
            "--config-file", config_path("trainers", "CoOp", "vit_b16_ep50.yaml")]
    train.setup_cfg(train.build_parser().parse_args([*coop, "--enhanced-base", "none"]))  # the original's default
    with pytest.raises(ConfigValueError, match="TaskRes"):
        train.setup_cfg(train.build_parser().parse_args([*coop, "--enhanced-base", "strong_base/x.pth.tar"]))


def test_a_checkpoint_of_all_imagenet_classes_keeps_the_rows_of_a_subset(tmp_path):
    names = ["goldfish", "tench", "great white shark", "hen", "ostrich", "crane"]
    (tmp_path / "classnames.txt").write_text("".join(f"n{i:08d} {n}\n" for i, n in enumerate(names)))
    dataset = SimpleNamespace(classnames=["hen", "goldfish", "crane"], dataset_dir=str(tmp_path))
    trainer = SimpleNamespace(dm=SimpleNamespace(dataset=dataset),
                              cfg=SimpleNamespace(DATASET=SimpleNamespace(NAME="ImageNetA")))
    rows = torch.arange(6.0)[:, None].repeat(1, 4)
    state = {"base_text_features": rows, "text_feature_residuals": -rows}
    out = TaskRes._rows_of_current_classes(trainer, state, "ckpt")
    assert out["base_text_features"][:, 0].tolist() == [3.0, 0.0, 5.0]
    assert out["text_feature_residuals"][:, 0].tolist() == [-3.0, -0.0, -5.0]
    # Same row count: loaded as stored. Another count without the class list: a clear error.
    same = TaskRes._rows_of_current_classes(trainer, {"base_text_features": rows[3:]}, "ckpt")
    assert torch.equal(same["base_text_features"], rows[3:])
    dataset.dataset_dir = str(tmp_path / "elsewhere")
    with pytest.raises(CheckpointMismatchError, match="per class"):
        TaskRes._rows_of_current_classes(trainer, state, "ckpt")


def test_clip_adapter_blends_a_two_relu_bottleneck_computed_by_hand(root, tiny_clip_path, tmp_path):
    trainer = build(argv("CLIP_Adapter", "CoOp/vit_b16_ep100.yaml", root, tiny_clip_path, tmp_path))
    model = trainer.model
    width = model.clip_model.visual.output_dim
    adapter = model.learnable_modules()["clip_adapter"]
    assert {k: tuple(v.shape) for k, v in adapter.state_dict().items()} == {
        "fc.0.weight": (width // 4, width), "fc.2.weight": (width, width // 4)}
    w1, w2 = adapter.fc[0].weight.detach(), adapter.fc[2].weight.detach()
    images = next(iter(trainer.test_loader))["img"]
    logits = trainer.model_inference(images)
    with torch.no_grad():
        f = model.clip_model.encode_image(images)
        text = model.clip_model.encode_text(
            clip.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in trainer.dm.dataset.classnames]))
    blended = 0.2 * F.relu(F.relu(f @ w1.T) @ w2.T) + 0.8 * f
    scale = model.clip_model.logit_scale.exp()
    expected = scale * F.normalize(blended, dim=-1) @ F.normalize(text, dim=-1).T
    atol = cosine_logit_atol(scale.item(), clip_image_relative_atol(model.clip_model),
                             clip_text_relative_atol(model.clip_model))
    assert torch.allclose(logits, expected, rtol=0, atol=atol)
    one_relu = scale * F.normalize(0.2 * (F.relu(f @ w1.T) @ w2.T) + 0.8 * f, dim=-1) @ F.normalize(text, dim=-1).T
    assert (logits - one_relu).abs().max() > 10 * atol  # the second ReLU matters on random weights


TASKS = ["taskres_all", "taskres_all_ep200", "taskres_flowers_all", "taskres_flowers_all_ep200", "taskres_imagenet_all",
         "taskres_imagenet_all_ep200", "taskres_xd", "clip_adapter", "clip_adapter_xd", "clip_adapter_all",
         "clip_adapter_all_ep100", "clip_adapter_all_ep200", "clip_adapter_imagenet_all"]


@pytest.mark.parametrize("data", [True, False], ids=["data", "demo"])
def test_every_task_passes_train_py_check(data, tmp_path, monkeypatch):
    import configs
    import train
    from runner.config import build_task
    from runner.tasks import expand_task

    if data:
        monkeypatch.setenv("DATA", str(tmp_path))
    else:
        monkeypatch.delenv("DATA", raising=False)
    for name in TASKS:
        jobs = expand_task(build_task(configs, name)).jobs
        assert jobs, name
        # Seeds and shot counts change no setting the check looks at: one job per dataset and role.
        for job in {(j.dataset, j.role): j for j in jobs}.values():
            outcome = train._check_one(json.dumps(job.check_argv()))
            assert outcome.ok, (name, job.command(), outcome.error)


def test_fp16_computes_the_taskres_base_in_fp16_and_runs_the_rest_in_fp32(root, tiny_clip_path, tmp_path):
    """As the original: CLIP's fp16 weights give T, then the model is cast to fp32 (image tower included)."""
    trainer = build(taskres_argv(root, tiny_clip_path, tmp_path, "TRAINER.TaskRes.PREC", "fp16",
                                 flags=("--eval-only",)))
    model = trainer.model
    assert model.clip_model.visual.conv1.weight.dtype == torch.float32
    assert model.prompt_learner.base_text_features.dtype == torch.float32
    fp32 = build(taskres_argv(root, tiny_clip_path, tmp_path / "fp32", flags=("--eval-only",)))
    base16, base32 = model.prompt_learner.base_text_features, fp32.model.prompt_learner.base_text_features
    assert not torch.equal(base16, base32)  # rounded through fp16
    # Per class, the fp16 text tower's relative error bound (18 roundings per block + 4 at the ends,
    # as tests/clip/test_precision.py counts them).
    bound = low_precision_relative_error(18 * fp32.model.clip_model.transformer.layers + 4, FP16_UNIT_ROUNDOFF)
    assert ((base16 - base32).norm(dim=-1) / base32.norm(dim=-1)).max() <= bound
    images = next(iter(trainer.test_loader))["img"]
    assert trainer.model_inference(images).dtype == torch.float32


def test_clip_adapter_keeps_the_adapter_in_fp32_under_fp16(root, tiny_clip_path, tmp_path):
    trainer = build(argv("CLIP_Adapter", "CoOp/vit_b16_ep100.yaml", root, tiny_clip_path, tmp_path,
                         "TRAINER.CLIP_ADAPTER.PREC", "fp16", flags=("--eval-only",)))
    assert trainer.model.clip_model.visual.conv1.weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in trainer.model.adapter.parameters())
    images = next(iter(trainer.test_loader))["img"]
    assert torch.isfinite(trainer.model_inference(images)).all()


def test_domain_generalisation_evaluates_imagenet_a_with_the_stored_rows(tmp_path, tiny_clip_path):
    """Train on (a tiny) ImageNet, evaluate on an ImageNet-A subset: the checkpoint's base and residual rows
    of the subset's classes are used, not a base rebuilt with the target's single template."""
    from tests.factories.coop_datasets_b import WNIDS, make_imagenet_tree, make_imagenet_variant_tree

    root = make_imagenet_tree(tmp_path / "data", n_train=2, n_val=1)
    subset = [WNIDS[4], WNIDS[0], WNIDS[2]]  # not in ImageNet's order
    make_imagenet_variant_tree(root, "a", entries=subset, classnames=WNIDS)

    def dg_argv(dataset: str, out, *extra: str, flags: tuple = ()) -> list[str]:
        return ["--root", str(root), "--seed", "1", "--trainer", "TaskRes", *flags,
                "--dataset-config-file", config_path("datasets", f"{dataset}.yaml"),
                "--config-file", config_path("trainers", "TaskRes", "adam_lr2e-4_B256_ep200.yaml"),
                "--output-dir", str(out), "MODEL.BACKBONE.NAME", str(tiny_clip_path), "INPUT.SIZE", "(32, 32)",
                "TRAINER.TaskRes.PREC", "fp32", "TRAINER.TaskRes.RESIDUAL_SCALE", "0.5", "DATALOADER.NUM_WORKERS", "0",
                "OPTIM.MAX_EPOCH", "1", "OPTIM.LR", "0.1", *extra]

    from tests.conftest import run_train

    source = tmp_path / "imagenet_run"
    run_train(dg_argv("imagenet", source, "DATASET.NUM_SHOTS", "2"))
    saved = torch.load(source / "prompt_learner" / "model.pth.tar-1", weights_only=True)["state_dict"]
    target = build(dg_argv("imagenet_a", tmp_path / "a", flags=("--eval-only",)))
    rebuilt = target.model.prompt_learner.base_text_features.clone()
    target.load_model(str(source), epoch=1)
    # ImageNet-A's labels follow its sorted wnids: tench (0), great white shark (2), hammerhead shark (4).
    rows = [0, 2, 4]
    learner = target.model.prompt_learner
    assert torch.equal(learner.base_text_features, saved["base_text_features"][rows])
    assert torch.equal(learner.text_feature_residuals, saved["text_feature_residuals"][rows])
    assert learner.text_feature_residuals.abs().sum() > 0  # trained
    assert not torch.allclose(rebuilt, learner.base_text_features, atol=1e-3)  # 8 templates vs 1
