"""Zero-shot CLIP: logits equal CLIP's own zero-shot classifier with the dataset's template."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import clip
from tests.conftest import config_path, run_train
from tests.tolerances import clip_image_relative_atol, clip_text_relative_atol, cosine_logit_atol


def zs_argv(root, clip_path, out, trainer="ZeroshotCLIP", *opts):
    return [
        "--root", str(root), "--trainer", trainer,
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "CoOp", "vit_b16.yaml"),
        "--output-dir", str(out), "--eval-only",
        "MODEL.BACKBONE.NAME", str(clip_path), "INPUT.SIZE", "(32, 32)",
        "DATALOADER.NUM_WORKERS", "0", "TEST.SAVE_PREDICTIONS", "True", "TRAINER.ZSCLIP.PREC", "fp32", *opts,
    ]


@torch.no_grad()
def reference_zero_shot(clip_path, root, impaths, classnames, templates):
    """CLIP's zero-shot logits for the images, and the tolerance for comparing another evaluation."""
    model, preprocess = clip.load(str(clip_path), device="cpu")
    images = torch.stack([preprocess(Image.open(root / p)) for p in impaths])
    image = model.encode_image(images)
    image = image / image.norm(dim=-1, keepdim=True)
    per_template = []
    for template in templates:
        text = model.encode_text(clip.tokenize([template.format(c.replace("_", " ")) for c in classnames]))
        per_template.append(text / text.norm(dim=-1, keepdim=True))
    text = torch.stack(per_template).mean(0)
    # Averaging unit vectors that point apart shrinks the mean: relative errors grow by 1/|mean|.
    averaging_gain = float(1.0 / text.norm(dim=-1).min())
    text = text / text.norm(dim=-1, keepdim=True)
    # Our run does the same fp32 maths in other orders (batches, truncated text): logits are
    # 100 * cosines, moved by at most the towers' relative errors.
    atol = cosine_logit_atol(100.0, clip_image_relative_atol(model), averaging_gain * clip_text_relative_atol(model))
    return (100.0 * image @ text.t()).numpy(), atol


def test_zeroshot_clip_matches_clip_zero_shot_classifier(caltech_root, tiny_clip_path, tmp_path):
    record = run_train(zs_argv(caltech_root, tiny_clip_path, tmp_path))
    preds = np.load(tmp_path / "predictions.npz")
    classnames = ["face", "leopard", "motorbike", "accordion", "airplane", "anchor"]
    templates = ["a photo of a {}."]
    expected, atol = reference_zero_shot(tiny_clip_path, caltech_root, preds["impaths"], classnames, templates)
    np.testing.assert_allclose(preds["logits"], expected, atol=atol, rtol=0)
    assert preds["logits"].dtype == np.float32 and preds["labels"].dtype == np.int64
    assert record["trainable_params"] == 0 and record["num_test"] == 12
    assert record["accuracy"] == pytest.approx(100.0 * (preds["logits"].argmax(1) == preds["labels"]).mean())
    assert not (tmp_path / "tensorboard").exists()  # eval-only runs write no event files


def test_zeroshot_clip2_averages_the_template_ensemble(caltech_root, tiny_clip_path, tmp_path):
    from trainers.common import IMAGENET_TEMPLATES_SELECT

    run_train(zs_argv(caltech_root, tiny_clip_path, tmp_path, "ZeroshotCLIP2"))
    preds = np.load(tmp_path / "predictions.npz")
    classnames = ["face", "leopard", "motorbike", "accordion", "airplane", "anchor"]
    templates = IMAGENET_TEMPLATES_SELECT + ["a photo of a {}."]  # Caltech101 adds its own template
    expected, atol = reference_zero_shot(tiny_clip_path, caltech_root, preds["impaths"], classnames, templates)
    np.testing.assert_allclose(preds["logits"], expected, atol=atol, rtol=0)


def test_base_and_new_halves_are_evaluated_among_their_own_classes(caltech_root, tiny_clip_path, tmp_path):
    base = run_train(zs_argv(caltech_root, tiny_clip_path, tmp_path / "base", "ZeroshotCLIP",
                             "DATASET.SUBSAMPLE_CLASSES", "base"))
    new = run_train(zs_argv(caltech_root, tiny_clip_path, tmp_path / "new", "ZeroshotCLIP",
                            "DATASET.SUBSAMPLE_CLASSES", "new"))
    assert base["num_classes"] == 3 and new["num_classes"] == 3
    new_preds = np.load(tmp_path / "new" / "predictions.npz")
    assert set(new_preds["labels"].tolist()) == {0, 1, 2}
    assert all("/accordion/" in p or "/airplanes/" in p or "/anchor/" in p for p in new_preds["impaths"])


def test_zero_shot_without_eval_only_says_what_to_do(caltech_root, tiny_clip_path, tmp_path):
    argv = zs_argv(caltech_root, tiny_clip_path, tmp_path)
    argv.remove("--eval-only")
    with pytest.raises(ValueError, match="nothing to train: run it with --eval-only"):
        run_train(argv)
