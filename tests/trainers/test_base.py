"""The method base's extension points, exercised the way the coming methods will use them.

A plug-in in the manner of DePT wraps a host method through its features/logits split, adds a head
on the image features with its own learning-rate group, is saved under its own name, and is
skipped (not loaded into a wrong shape) on new classes. The class-prompt builder assembles shared,
class-specific and per-image prompts from a given context.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from trainers.base import Features, Loss, MethodModel, staged_param_groups
from trainers.prompts import ClassPrompts, initial_context


class HeadPlugin(MethodModel):
    """Any host plus a linear head on its image features, trained on the classes it is built for."""

    def __init__(self, host: MethodModel, num_classes: int, weight: float = 0.5, fuse: bool = True) -> None:
        super().__init__(host.clip_model)
        self.host = host
        width = host.clip_model.visual.output_dim
        self.head = nn.Linear(width, num_classes).to(host.dtype)
        self.weight = weight
        self.fuse = fuse  # False: the head does not apply (new classes) and is not loaded

    def learnable_modules(self) -> dict[str, nn.Module]:
        return {**self.host.learnable_modules(), "head": self.head}

    def set_trainable(self) -> None:
        self.host.set_trainable()
        self.head.requires_grad_(True)

    def param_groups(self, optim_cfg) -> list[dict]:
        return staged_param_groups(list(self.named_trainable_parameters()), optim_cfg, new_lr=optim_cfg.LR * 10)

    def checkpoint_skip_patterns(self) -> tuple[str, ...]:
        host = self.host.checkpoint_skip_patterns()
        return host if self.fuse else (*host, "weight", "bias")  # the head's own keys, in its own folder

    def features(self, images, text=None) -> Features:
        return self.host.features(images, text)

    def logits(self, features: Features) -> torch.Tensor:
        itm = self.host.logits(features)
        if not self.fuse:
            return itm
        return (1 - self.weight) * itm + self.weight * self.head(features.image.type(self.head.weight.dtype))

    def loss(self, features: Features, logits: torch.Tensor, labels: torch.Tensor) -> Loss:
        host = self.host.loss(features, self.host.logits(features), labels)
        head = F.cross_entropy(self.head(features.image.type(self.head.weight.dtype)), labels)
        return Loss((1 - self.weight) * host.ce + self.weight * head, dict(host.regularisers))


def _plugged(trainer_cls, fuse: bool = True):
    class Plugged(trainer_cls):
        def build_method(self, clip_model, classnames):
            return HeadPlugin(super().build_method(clip_model, classnames), len(classnames), fuse=fuse)

    Plugged.__name__ = f"HeadPlugin{trainer_cls.__name__}"
    return Plugged


def _argv(root, clip_path, out, subsample="base", *opts):
    from tests.conftest import config_path

    return [
        "--root", str(root), "--seed", "1", "--trainer", "CoOp", "--output-dir", str(out),
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "CoOp", "vit_b16_ep50.yaml"),
        "MODEL.BACKBONE.NAME", str(clip_path), "TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.N_CTX", "4",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.MAX_EPOCH", "1",
        "OPTIM.LR", "0.01", "OPTIM.STAGED_LR", "True", "OPTIM.NEW_LAYERS", "('head',)", "OPTIM.BASE_LR_MULT", "1.0",
        "DATASET.SUBSAMPLE_CLASSES", subsample, *opts,
    ]


def test_a_plugin_wraps_a_host_through_its_features_and_logits(caltech_root, tiny_clip_path, tmp_path):
    import train
    from trainers.coop import CoOp

    cfg = train.setup_cfg(train.build_parser().parse_args(_argv(caltech_root, tiny_clip_path, tmp_path / "run")))
    trainer = _plugged(CoOp)(cfg)
    assert trainer.get_model_names() == ["prompt_learner", "head"]
    assert [g["initial_lr"] for g in trainer.optim.param_groups] == [0.01 * 1.0, 0.01 * 10]  # prompts, then the head
    ctx, head = trainer.model.host.prompt_learner.ctx.detach().clone(), trainer.model.head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(ctx, trainer.model.host.prompt_learner.ctx)
    assert not torch.equal(head, trainer.model.head.weight)
    saved = torch.load(tmp_path / "run" / "head" / "model.pth.tar-1", weights_only=True)
    assert torch.equal(saved["state_dict"]["weight"], trainer.model.head.weight)

    # New classes: the head belongs to the base classes; it is skipped, not loaded into a wrong shape.
    new_cfg = train.setup_cfg(train.build_parser().parse_args(
        _argv(caltech_root, tiny_clip_path, tmp_path / "new", "new")))
    evaluator = _plugged(CoOp, fuse=False)(new_cfg)
    evaluator.load_model(str(tmp_path / "run"), epoch=1)
    assert torch.equal(evaluator.model.host.prompt_learner.ctx, trainer.model.host.prompt_learner.ctx)
    images = next(iter(evaluator.test_loader))["img"]
    host_only = evaluator.model.host(images)
    assert torch.equal(evaluator.model_inference(images), host_only.float())


def test_staged_lr_has_one_meaning(tmp_path):
    from engine.config import get_cfg_default

    cfg = get_cfg_default().OPTIM
    cfg.LR, cfg.BASE_LR_MULT, cfg.NEW_LAYERS = 0.1, 0.5, ("image_encoder",)
    a, b, c = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    named = [("learnable_params.text_encoder.w", a), ("learnable_params.image_encoder.w", b), ("x.image_encoder", c)]
    cfg.STAGED_LR = False
    assert [len(g["params"]) for g in staged_param_groups(named, cfg, new_lr=0.3)] == [3]
    cfg.STAGED_LR = True
    groups = staged_param_groups(named, cfg, new_lr=0.3)
    assert [(g["lr"], [id(p) for p in g["params"]]) for g in groups] == [(0.05, [id(a)]), (0.3, [id(b), id(c)])]


def test_class_prompts_assemble_shared_class_specific_and_per_image_context(tiny_clip_path):
    model = clip.build_model(clip.load_state_dict(str(tiny_clip_path)), precision="fp32")
    names = ["red_car", "dog", "hot air balloon"]
    context = initial_context(model, 4)
    prompts = ClassPrompts(model, names, context.n_ctx, context.prefix_text)
    shared = prompts.assemble(context.vectors)
    assert shared.shape == (3, 77, model.transformer.width)
    for i in range(3):
        assert torch.equal(shared[i, 1:5], context.vectors)  # the context sits after SOS
    tokens = clip.tokenize([f"X X X X {n.replace('_', ' ')}." for n in names])
    assert torch.equal(shared[:, 5:], model.token_embedding(tokens)[:, 5:].detach())  # then the class name, "." ...
    specific = prompts.assemble(torch.randn(3, 4, model.transformer.width))
    assert specific.shape == shared.shape and not torch.equal(specific[0, 1:5], specific[1, 1:5])
    per_image = prompts.assemble_per_image(torch.randn(2, 4, model.transformer.width))
    assert per_image.shape == (2, 3, 77, model.transformer.width)
    assert torch.equal(per_image[1, 2], prompts.assemble(per_image[1, 0, 1:5])[2])
    words = initial_context(model, 16, "a photo of a")
    assert words.n_ctx == 4 and words.prefix_text == "a photo of a"  # the words replace N_CTX
    with pytest.raises(ValueError, match="class token position"):
        ClassPrompts(model, names, 4, "X X X X", class_token_position="left")
