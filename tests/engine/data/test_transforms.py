"""build_transform: pipeline order, sizes, normalisation, and parity with CLIP's preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from engine.config import get_cfg_default
from engine.data import INTERPOLATION_MODES, build_transform
from engine.data.transforms import Cutout, GaussianNoise, InstanceNormalization, Random2DTranslation
from tests.factories.datasets import CLIP_MEAN, CLIP_STD
from tests.tolerances import FP32_UNIT_ROUNDOFF, fp32_atol


def clip_cfg(size=224, transforms=("random_resized_crop", "random_flip", "normalize")):
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (size, size)
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.PIXEL_MEAN = list(CLIP_MEAN)
    cfg.INPUT.PIXEL_STD = list(CLIP_STD)
    cfg.INPUT.TRANSFORMS = list(transforms)
    return cfg


def noise_image(w, h, seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8))


def test_clip_train_pipeline_order_and_output():
    tfm = build_transform(clip_cfg(), is_train=True)
    kinds = [type(t) for t in tfm.transforms]
    assert kinds == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    rrc = tfm.transforms[0]
    assert rrc.size == (224, 224) and rrc.scale == (0.08, 1.0)
    assert rrc.interpolation == INTERPOLATION_MODES["bicubic"]
    torch.manual_seed(0)
    out = tfm(noise_image(300, 170))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32


def test_full_train_order():
    names = ["instance_norm", "gaussian_noise", "normalize", "cutout", "gaussian_blur", "randomgrayscale",
             "colorjitter", "random_flip", "random_crop", "random_translation", "center_crop"]
    tfm = build_transform(clip_cfg(size=32, transforms=names), is_train=True)
    kinds = [type(t).__name__ for t in tfm.transforms]
    assert kinds == [
        "Random2DTranslation", "RandomCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale",
        "RandomApply", "ToTensor", "Cutout", "Normalize", "GaussianNoise", "InstanceNormalization",
    ]
    torch.manual_seed(0)
    assert tfm(noise_image(50, 40)).shape == (3, 32, 32)


def test_train_resizes_to_exact_size_without_crop():
    cfg = clip_cfg(transforms=["normalize"])
    cfg.INPUT.SIZE = (20, 30)
    tfm = build_transform(cfg, is_train=True)
    assert isinstance(tfm.transforms[0], T.Resize) and tfm.transforms[0].size == (20, 30)
    assert tfm(noise_image(64, 64)).shape == (3, 20, 30)


def test_normalize_values_constant_image():
    colour = (200, 100, 30)
    img = Image.new("RGB", (50, 40), colour)
    out = build_transform(clip_cfg(size=16), is_train=False)(img)
    expected = [(c / 255.0 - m) / s for c, m, s in zip(colour, CLIP_MEAN, CLIP_STD)]
    # fp32 against exact: ToTensor's /255, the fp32 mean and std, the subtraction and the division
    # round once each (<= u relative to at most (1 + mean) / std). A resized constant stays constant.
    atol = 5 * FP32_UNIT_ROUNDOFF * (1 + max(CLIP_MEAN)) / min(CLIP_STD)
    for ch in range(3):
        assert torch.allclose(out[ch], torch.full((16, 16), expected[ch]), atol=atol, rtol=0)


def test_test_pipeline_shorter_side_then_center_crop_matches_clip():
    import open_clip
    img = noise_image(300, 200, seed=1)  # landscape: shorter side 200 -> 224, width 336
    ours = build_transform(clip_cfg(), is_train=False)(img)
    # Hand computation with PIL: bicubic resize to 336x224, then the centred 224x224 window.
    resized = img.resize((336, 224), Image.BICUBIC)
    crop = resized.crop((56, 0, 280, 224))
    hand = T.Normalize(CLIP_MEAN, CLIP_STD)(T.ToTensor()(crop))
    assert ours.shape == (3, 224, 224)
    # The same steps on the same bytes: PIL resizes in integer arithmetic, and /255, subtraction and
    # division are correctly rounded IEEE operations, so the bits agree on any CPU.
    assert torch.equal(ours, hand)
    # Independent implementation: open_clip's eval preprocessing with OpenAI's statistics.
    ref = open_clip.image_transform(224, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
    assert torch.equal(ours, ref(img))
    # A resize to (224, 224) instead would distort the image and differ.
    squashed = T.Normalize(CLIP_MEAN, CLIP_STD)(T.ToTensor()(img.resize((224, 224), Image.BICUBIC)))
    assert not torch.allclose(ours, squashed, atol=1e-2)


def test_no_transform_unknown_and_unsupported():
    cfg = clip_cfg()
    cfg.INPUT.NO_TRANSFORM = True
    assert build_transform(cfg) is None
    with pytest.raises(ValueError, match="random_rotate"):
        build_transform(clip_cfg(transforms=["random_rotate"]))
    with pytest.raises(NotImplementedError, match="randaugment"):
        build_transform(clip_cfg(transforms=["randaugment", "normalize"]))
    cfg = clip_cfg()
    cfg.INPUT.INTERPOLATION = "lanczos"
    with pytest.raises(ValueError, match="lanczos"):
        build_transform(cfg, is_train=False)


def test_tensor_ops():
    torch.manual_seed(0)
    x = torch.rand(3, 20, 20) + 1.0
    z = torch.rand(3, 8, 8) + 1.0  # 64 values per channel: biased and unbiased std differ by 1/128
    y = InstanceNormalization()(z)
    # Reductions over 64 values, first in the transform and then in the check, on values up to
    # max|z| / std (centring cancels that much); any summation order stays within this.
    atol = fp32_atol(float(z.max() / z.reshape(3, -1).std(1).min()), accumulation=64, layers=2)
    assert torch.allclose(y.mean((1, 2)), torch.zeros(3), atol=atol, rtol=0)
    assert torch.allclose(y.reshape(3, -1).std(1), torch.ones(3), atol=atol, rtol=0)
    cut = Cutout(1, 8)(x)
    zeros = (cut == 0).all(0)
    assert 16 <= int(zeros.sum()) <= 64 and torch.equal(cut[:, ~zeros], x[:, ~zeros])
    always = GaussianNoise(0.0, 0.15, p=1.0)(torch.zeros(3, 64, 64))
    assert 0.12 < float(always.std()) < 0.18
    assert torch.equal(GaussianNoise(p=0.0)(x), x)
    img = noise_image(40, 30)
    assert Random2DTranslation(16, 24, p=1.0)(img).size == (24, 16)
    assert Random2DTranslation(16, 24, p=0.0)(img).size == (24, 16)
