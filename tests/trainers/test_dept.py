"""DePT over CoOp, CoCoOp and KgCoOp on a tiny random CLIP: the fused test logits and the training loss
against values computed here from the host's features, the base-mode rule, the staged learning rates,
the original's checkpoint layout (and its full-CustomCLIP files loading), new classes without the
classifier, and the errors for a host that is absent or unfit."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import train
from engine import TRAINER_REGISTRY, build_trainer
from engine.errors import ConfigValueError, UserError
from tests.conftest import config_path, run_train
from tests.tolerances import fp32_atol
from trainers.dept import DePT, DePTModel, FiLM, is_base_mode
from trainers.kgcoop import knowledge_guidance

# (registered name, extra options, recipe): the aliases and the generic trainer with a host from the config.
HOSTS = {
    "CoOp": ("ExtrasLinearProbeCoOp", (), "ExtrasLinearProbeCoOp/vit_b16_ep10_bs4_lr35"),
    "CoCoOp": ("DePT", ("TRAINER.DEPT.HOST", "CoCoOp", "TRAINER.COCOOP.PREC", "fp32"),
               "ExtrasLinearProbeCoCoOp/vit_b16_c4_ep10_batch1_ctxv1"),
    "KgCoOp": ("ExtrasLinearProbeKgCoOp", (), "ExtrasLinearProbeKgCoOp/vit_b16_ep10_ctxv1_bs4_lr35"),
}


def dept_argv(root, clip_path, out, host="CoOp", *opts: str, subsample="base", flags=()) -> list[str]:
    name, host_opts, recipe = HOSTS[host]
    return [
        "--root", str(root), "--seed", "1", "--trainer", name, "--output-dir", str(out), *flags,
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", f"{recipe}.yaml"),
        "MODEL.BACKBONE.NAME", str(clip_path), "INPUT.SIZE", "(32, 32)", "TRAINER.COOP.PREC", "fp32", *host_opts,
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "8",
        "OPTIM.MAX_EPOCH", "1", "DATASET.SUBSAMPLE_CLASSES", subsample, *opts,
    ]


def build(argv):
    return build_trainer(train.setup_cfg(train.build_parser().parse_args(argv)))


def perturb_head(model: DePTModel) -> None:
    """Move the cwT layers off the identity so that they matter in the comparisons."""
    with torch.no_grad():
        for film in (model.film_lp_img, model.film_lp_text):
            film.scale.add_(0.3 * torch.randn_like(film.scale))
            film.bias.add_(0.1 * torch.randn_like(film.bias))


def logit_atol(*logits: torch.Tensor, width: int) -> float:
    """Two evaluations of the same logits differing in summation order over the feature width."""
    return fp32_atol(max(float(x.abs().max()) for x in logits), width)


@pytest.mark.parametrize("host", list(HOSTS))
def test_test_logits_fuse_the_host_and_cat_heads_on_base_classes(host, caltech_root, tiny_clip_path, tmp_path):
    trainer = build(dept_argv(caltech_root, tiny_clip_path, tmp_path, host))
    model = trainer.model
    assert type(model.host).__name__ == f"{host}Model" and isinstance(model.linear_probe_proj, nn.Linear)
    perturb_head(model)
    images = next(iter(trainer.test_loader))["img"]
    with torch.no_grad():
        features = model.host.features(images)
        itm = model.host.logits(features)
        image = model.film_lp_img.scale * features.image + model.film_lp_img.bias
        cat = image @ model.linear_probe_proj.weight.t() + model.linear_probe_proj.bias
    atol = logit_atol(itm, cat, width=image.shape[1])
    fused = trainer.model_inference(images)
    assert torch.allclose(fused, 0.3 * itm + 0.7 * cat, rtol=0, atol=atol)  # λ = 0.7, raw logits
    model.settings = dataclasses.replace(model.settings, test_time_fusion=False)
    assert torch.allclose(trainer.model_inference(images), cat, rtol=0, atol=atol)


@pytest.mark.parametrize("host", list(HOSTS))
def test_training_loss_is_the_originals(host, caltech_root, tiny_clip_path, tmp_path):
    trainer = build(dept_argv(caltech_root, tiny_clip_path, tmp_path, host))
    model = trainer.model
    perturb_head(model)
    images, labels = trainer.parse_batch_train(next(iter(trainer.train_loader_x)))
    out = model.training_step(images, labels)
    with torch.no_grad():
        features = model.host.features(images)
        itm = model.host.logits(features)
        text = model.film_lp_text.scale * features.text + model.film_lp_text.bias
        # Each sample's own class row: of the shared [C, D] features, or of its own [B, C, D] (CoCoOp).
        rows = torch.stack([(text[y] if text.dim() == 2 else text[i, y]) for i, y in enumerate(labels.tolist())])
        image = model.film_lp_img.scale * features.image + model.film_lp_img.bias
        cat = torch.cat([rows, image]) @ model.linear_probe_proj.weight.t() + model.linear_probe_proj.bias
        expected = 0.3 * F.cross_entropy(itm, labels) + 0.7 * F.cross_entropy(cat, torch.cat([labels, labels]))
    # Cross-entropy is 1-Lipschitz in each logit: the logits' bound bounds the loss.
    atol = logit_atol(itm, cat, width=image.shape[1])
    assert torch.allclose(out.loss.ce, expected, rtol=0, atol=atol)
    if host == "KgCoOp":  # the host's regulariser is kept, at the original DePT's W = 2.0
        kg = 2.0 * knowledge_guidance(features.text, model.host.clip_text_features)
        assert set(out.loss.regularisers) == {"kg"}
        assert torch.allclose(out.loss.regularisers["kg"], kg, rtol=0, atol=fp32_atol(2.0, image.shape[1]))
    else:
        assert out.loss.regularisers == {}


def test_base_mode_is_the_originals_rule():
    cfg = train.default_cfg("DePT")

    def mode(subsample: str, dataset: str, base_mode: str = "auto") -> bool:
        cfg.DATASET.SUBSAMPLE_CLASSES, cfg.DATASET.NAME, cfg.TRAINER.DEPT.BASE_MODE = subsample, dataset, base_mode
        return is_base_mode(cfg)

    assert mode("base", "Caltech101") and mode("base", "ImageNet")
    assert not mode("new", "Caltech101") and not mode("new", "ImageNet")
    # Cross-dataset: the ImageNet source and its ImageNet-family targets use the head, other targets do not.
    assert mode("all", "ImageNet") and mode("all", "ImageNetV2") and mode("all", "ImageNetSketch")
    assert not mode("all", "Caltech101") and not mode("all", "DescribableTextures")
    assert mode("all", "DescribableTextures", "always")  # ours, for few-shot runs on all classes


def test_original_defaults_and_staged_learning_rates(caltech_root, tiny_clip_path, tmp_path):
    cfg = train.default_cfg("ExtrasLinearProbeCoOp")
    assert (cfg.OPTIM.LR_EXP, cfg.OPTIM.STAGED_LR, list(cfg.OPTIM.NEW_LAYERS), cfg.OPTIM.BASE_LR_MULT) == (
        6.5, True, ["linear_probe", "film"], 1.0)
    assert (cfg.TRAINER.LINEAR_PROBE.TYPE, cfg.TRAINER.LINEAR_PROBE.WEIGHT, cfg.TRAINER.FILM.LINEAR_PROBE,
            cfg.TRAINER.COOP.W, cfg.TRAINER.COCOOP.N_CTX, cfg.TRAINER.MAPLE.PROMPT_DEPTH) == (
        "linear", 0.7, True, 2.0, 4, 9)
    trainer = build(dept_argv(caltech_root, tiny_clip_path, tmp_path))
    groups = trainer.optim.param_groups
    assert [g["initial_lr"] for g in groups] == [0.0035, pytest.approx(0.0035 * 6.5)]  # the recipe's LR
    model = trainer.model
    assert [id(p) for p in groups[0]["params"]] == [id(model.host.prompt_learner.ctx)]
    head = [model.film_lp_img.scale, model.film_lp_img.bias, model.film_lp_text.scale, model.film_lp_text.bias,
            model.linear_probe_proj.weight, model.linear_probe_proj.bias]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in head]
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        "host.prompt_learner.ctx", "film_lp_img.scale", "film_lp_img.bias", "film_lp_text.scale", "film_lp_text.bias",
        "linear_probe_proj.weight", "linear_probe_proj.bias"}


def test_checkpoint_layout_is_the_originals_and_new_classes_use_the_host_alone(caltech_root, tiny_clip_path,
                                                                                 tmp_path):
    run_dir = tmp_path / "run"
    run_train(dept_argv(caltech_root, tiny_clip_path, run_dir))
    saved_path = run_dir / "PromptLearner" / "model.pth.tar-1"
    saved = torch.load(saved_path, weights_only=True)["state_dict"]
    assert set(saved) == {"prompt_learner.ctx", "prompt_learner.token_prefix", "prompt_learner.token_suffix",
                          "film_lp_img.scale", "film_lp_img.bias", "film_lp_text.scale", "film_lp_text.bias",
                          "linear_probe_proj.weight", "linear_probe_proj.bias"}
    assert not torch.equal(saved["film_lp_img.scale"], torch.ones_like(saved["film_lp_img.scale"]))  # it trained

    # The original saves its whole CustomCLIP: its frozen-CLIP entries are skipped on load.
    full = torch.load(saved_path, weights_only=True)
    full["state_dict"].update({"image_encoder.conv1.weight": torch.zeros(3), "logit_scale": torch.zeros(()),
                               "text_encoder.text_projection": torch.zeros(2)})
    torch.save(full, saved_path)

    new = build(dept_argv(caltech_root, tiny_clip_path, tmp_path / "new", subsample="new", flags=("--eval-only",)))
    assert isinstance(new.model.linear_probe_proj, nn.Identity)  # no classifier for the new classes
    new.load_model(str(run_dir), epoch=1)
    for key in ("prompt_learner.ctx", "film_lp_img.scale", "film_lp_text.bias"):
        assert torch.equal(new.model.learnable_modules()["PromptLearner"].state_dict()[key], saved[key])
    images = next(iter(new.test_loader))["img"]
    assert torch.equal(new.model_inference(images), new.model.host(images).float())

    base = build(dept_argv(caltech_root, tiny_clip_path, tmp_path / "base", flags=("--eval-only",)))
    base.load_model(str(run_dir), epoch=1)
    assert torch.equal(base.model.linear_probe_proj.weight, saved["linear_probe_proj.weight"])


def test_training_needs_base_mode(caltech_root, tiny_clip_path, tmp_path):
    with pytest.raises(ConfigValueError, match="TRAINER.DEPT.BASE_MODE always"):
        run_train(dept_argv(caltech_root, tiny_clip_path, tmp_path / "a", subsample="all"))
    trainer = build(dept_argv(caltech_root, tiny_clip_path, tmp_path / "b", "CoOp", "TRAINER.DEPT.BASE_MODE", "always",
                              subsample="all"))
    assert trainer.model.linear_probe_proj.out_features == trainer.num_classes == 6  # the head on all classes


def test_a_host_that_is_absent_or_unfit_is_a_clear_error(caltech_root, tiny_clip_path, tmp_path):
    absent = type("ExtrasLinearProbeNoSuchHost", (DePT,), {"default_host": "NoSuchHost", "same_run_as": None})
    assert "NoSuchHost" in absent.unavailable_reason()
    cfg = train.default_cfg("DePT")
    cfg.TRAINER.DEPT.HOST = "NoSuchHost"
    with pytest.raises(UserError, match="applies DePT to the trainer NoSuchHost, which is not registered"):
        absent.host_class(cfg)
    # The original's MaPLe name is registered either way; it runs once MaPLe is.
    maple = TRAINER_REGISTRY.get("ExtrasLinearProbeMaPLe")
    assert (maple.unavailable_reason() is None) == ("MaPLe" in TRAINER_REGISTRY)
    with pytest.raises(ConfigValueError, match="not a trainable method"):
        run_train(dept_argv(caltech_root, tiny_clip_path, tmp_path / "a", "CoOp", "TRAINER.DEPT.HOST", "ZeroshotCLIP"))
    with pytest.raises(ConfigValueError, match="Use --trainer DePT to choose another host"):
        run_train(dept_argv(caltech_root, tiny_clip_path, tmp_path / "b", "CoOp", "TRAINER.DEPT.HOST", "KgCoOp"))


def test_film_is_a_channelwise_affine_map_cast_to_the_input_dtype():
    film = FiLM(3)
    with torch.no_grad():
        film.scale.copy_(torch.tensor([1.0, 2.0, -1.0]))
        film.bias.copy_(torch.tensor([0.5, 0.0, 1.0]))
    x = torch.tensor([[1.0, 1.0, 1.0], [2.0, -1.0, 0.0]], dtype=torch.float64)
    y = film(x)
    assert y.dtype == torch.float64
    assert torch.equal(y, torch.tensor([[1.5, 2.0, 0.0], [2.5, -2.0, 1.0]], dtype=torch.float64))


def test_cross_dataset_the_imagenet_head_is_sliced_for_imagenet_a(tiny_clip_path, tmp_path):
    from tests.factories.coop_datasets_b import WNIDS, make_imagenet_tree, make_imagenet_variant_tree

    root = make_imagenet_tree(tmp_path / "data", WNIDS)
    make_imagenet_variant_tree(root, "a", entries=[WNIDS[4], WNIDS[2], WNIDS[0]], classnames=WNIDS)

    def argv(dataset: str, out, *flags: str) -> list[str]:
        return [
            "--root", str(root), "--seed", "1", "--trainer", "ExtrasLinearProbeCoOp", "--output-dir", str(out), *flags,
            "--dataset-config-file", config_path("datasets", f"{dataset}.yaml"),
            "--config-file", config_path("trainers", "ExtrasLinearProbeCoOp", "vit_b16_ep10_bs4_lr35.yaml"),
            "MODEL.BACKBONE.NAME", str(tiny_clip_path), "INPUT.SIZE", "(32, 32)", "TRAINER.COOP.PREC", "fp32",
            "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2",
        ]

    run_train(argv("imagenet", tmp_path / "source"))  # all classes of an ImageNet dataset: the head trains
    saved = torch.load(tmp_path / "source" / "PromptLearner" / "model.pth.tar-1", weights_only=True)["state_dict"]
    assert saved["linear_probe_proj.weight"].shape[0] == 5
    target = build(argv("imagenet_a", tmp_path / "target", "--eval-only"))
    target.load_model(str(tmp_path / "source"), epoch=1)
    # ImageNet-A holds wnids 0, 2 and 4 of classnames.txt: those rows, in that order (= its sorted labels).
    assert torch.equal(target.model.linear_probe_proj.weight, saved["linear_probe_proj.weight"][[0, 2, 4]])
    assert torch.equal(target.model.linear_probe_proj.bias, saved["linear_probe_proj.bias"][[0, 2, 4]])
