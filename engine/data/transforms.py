"""Image transforms built from `cfg.INPUT` (Dassl's `build_transform`).

Training pipelines apply the chosen operations in a fixed order (see `build_transform`); the test
pipeline is Resize(shorter side = max(SIZE)) -> CenterCrop(SIZE) -> ToTensor -> [Normalize], which
with bicubic interpolation and CLIP's mean/std is exactly CLIP's own preprocessing.

Random choices made here use torch's RNG (not Python's `random`), so DataLoader workers, which
torch seeds from the global generator, stay reproducible.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
import torchvision.transforms as T
from engine.errors import ConfigValueError
from PIL import Image
from torchvision.transforms import InterpolationMode

__all__ = [
    "build_transform",
    "INTERPOLATION_MODES",
    "AVAI_CHOICES",
    "Random2DTranslation",
    "Cutout",
    "GaussianNoise",
    "InstanceNormalization",
]

logger = logging.getLogger(__name__)

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

AVAI_CHOICES = (
    "random_flip",
    "random_resized_crop",
    "normalize",
    "instance_norm",
    "random_crop",
    "random_translation",
    "center_crop",  # accepted; the test pipeline always centre-crops, training ignores it
    "cutout",
    "imagenet_policy",
    "cifar10_policy",
    "svhn_policy",
    "randaugment",
    "randaugment_fixmatch",
    "randaugment2",
    "gaussian_noise",
    "colorjitter",
    "randomgrayscale",
    "gaussian_blur",
)

# Accepted names we do not implement (Dassl's AutoAugment/RandAugment ports); no CLIP config uses them.
_UNSUPPORTED = ("imagenet_policy", "cifar10_policy", "svhn_policy", "randaugment", "randaugment_fixmatch", "randaugment2")

_PIL_RESAMPLE = {
    InterpolationMode.BILINEAR: Image.BILINEAR,
    InterpolationMode.BICUBIC: Image.BICUBIC,
    InterpolationMode.NEAREST: Image.NEAREST,
}


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


class Random2DTranslation:
    """With probability p, enlarge the image to 1.125x (W, H) and crop a random (W, H) window;
    otherwise resize to (W, H)."""

    def __init__(
        self, height: int, width: int, p: float = 0.5, interpolation: InterpolationMode = InterpolationMode.BILINEAR
    ) -> None:
        self.height, self.width, self.p = height, width, p
        self.resample = _PIL_RESAMPLE[interpolation]

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() > self.p:
            return img.resize((self.width, self.height), self.resample)
        new_w, new_h = int(round(self.width * 1.125)), int(round(self.height * 1.125))
        resized = img.resize((new_w, new_h), self.resample)
        x1 = int(round(_uniform(0, new_w - self.width)))
        y1 = int(round(_uniform(0, new_h - self.height)))
        return resized.crop((x1, y1, x1 + self.width, y1 + self.height))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(height={self.height}, width={self.width}, p={self.p})"


class Cutout:
    """Zero `n_holes` random squares of side `length` (clipped at the border) in a CxHxW tensor."""

    def __init__(self, n_holes: int = 1, length: int = 16) -> None:
        self.n_holes, self.length = n_holes, length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        mask = torch.ones((h, w), dtype=img.dtype)
        for _ in range(self.n_holes):
            y = int(torch.randint(h, ()).item())
            x = int(torch.randint(w, ()).item())
            y1, y2 = max(y - self.length // 2, 0), min(y + self.length // 2, h)
            x1, x2 = max(x - self.length // 2, 0), min(x + self.length // 2, w)
            mask[y1:y2, x1:x2] = 0.0
        return img * mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_holes={self.n_holes}, length={self.length})"


class GaussianNoise:
    """With probability p, add N(mean, std) noise to a tensor."""

    def __init__(self, mean: float = 0.0, std: float = 0.15, p: float = 0.5) -> None:
        self.mean, self.std, self.p = mean, std, p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(()).item() > self.p:
            return img
        return img + torch.randn(img.shape) * self.std + self.mean

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std}, p={self.p})"


class InstanceNormalization:
    """Normalise each channel of a CxHxW tensor to zero mean and unit (unbiased) std."""

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        c = img.shape[0]
        flat = img.reshape(c, -1)
        mean = flat.mean(1).view(c, 1, 1)
        std = flat.std(1).view(c, 1, 1)
        return (img - mean) / (std + self.eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"


def _interpolation(cfg) -> InterpolationMode:
    name = cfg.INPUT.INTERPOLATION
    if name not in INTERPOLATION_MODES:
        raise ConfigValueError(
            f"INPUT.INTERPOLATION={name!r} is not supported; use one of {sorted(INTERPOLATION_MODES)}."
        )
    return INTERPOLATION_MODES[name]


def build_transform(cfg, is_train: bool = True, choices: Sequence[str] | None = None) -> T.Compose | None:
    """Build the train or test pipeline from `cfg.INPUT` (None when INPUT.NO_TRANSFORM is set).

    Training order: [Resize(SIZE) unless a crop is chosen] -> random_translation -> random_crop ->
    random_resized_crop -> random_flip -> colorjitter -> randomgrayscale -> gaussian_blur ->
    ToTensor -> cutout -> normalize -> gaussian_noise -> instance_norm.
    """
    if cfg.INPUT.NO_TRANSFORM:
        logger.info("Note: no transform is applied!")
        return None
    if choices is None:
        choices = cfg.INPUT.TRANSFORMS
    unknown = [c for c in choices if c not in AVAI_CHOICES]
    if unknown:
        raise ConfigValueError(f"INPUT.TRANSFORMS contains unknown names {unknown}; allowed: {list(AVAI_CHOICES)}.")
    unsupported = [c for c in choices if c in _UNSUPPORTED]
    if unsupported:
        raise NotImplementedError(
            f"INPUT.TRANSFORMS {unsupported}: the AutoAugment/RandAugment policies are not supported by "
            f"this engine. Remove them, or pass your own transform (DataManager(custom_tfm_train=...))."
        )
    normalize = T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    builder = _build_transform_train if is_train else _build_transform_test
    return builder(cfg, list(choices), normalize)


def _build_transform_train(cfg, choices: list[str], normalize: T.Normalize) -> T.Compose:
    logger.info("Building transform_train")
    interp = _interpolation(cfg)
    size = tuple(cfg.INPUT.SIZE)
    tfms: list = []
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        logger.info("+ resize to %dx%d", size[0], size[1])
        tfms.append(T.Resize(size, interpolation=interp))
    if "random_translation" in choices:
        logger.info("+ random translation")
        tfms.append(Random2DTranslation(size[0], size[1]))
    if "random_crop" in choices:
        logger.info("+ random crop (padding = %d)", cfg.INPUT.CROP_PADDING)
        tfms.append(T.RandomCrop(size, padding=cfg.INPUT.CROP_PADDING))
    if "random_resized_crop" in choices:
        scale = tuple(cfg.INPUT.RRCROP_SCALE)
        logger.info("+ random resized crop (size=%s, scale=%s)", size, scale)
        tfms.append(T.RandomResizedCrop(size, scale=scale, interpolation=interp))
    if "random_flip" in choices:
        logger.info("+ random flip")
        tfms.append(T.RandomHorizontalFlip())
    if "colorjitter" in choices:
        i = cfg.INPUT
        logger.info("+ color jitter")
        tfms.append(
            T.ColorJitter(
                brightness=i.COLORJITTER_B, contrast=i.COLORJITTER_C, saturation=i.COLORJITTER_S, hue=i.COLORJITTER_H
            )
        )
    if "randomgrayscale" in choices:
        logger.info("+ random gray scale")
        tfms.append(T.RandomGrayscale(p=cfg.INPUT.RGS_P))
    if "gaussian_blur" in choices:
        logger.info("+ gaussian blur (kernel=%d)", cfg.INPUT.GB_K)
        tfms.append(T.RandomApply([T.GaussianBlur(cfg.INPUT.GB_K)], p=cfg.INPUT.GB_P))
    logger.info("+ to torch tensor of range [0, 1]")
    tfms.append(T.ToTensor())
    if "cutout" in choices:
        logger.info("+ cutout (n_holes=%d, length=%d)", cfg.INPUT.CUTOUT_N, cfg.INPUT.CUTOUT_LEN)
        tfms.append(Cutout(cfg.INPUT.CUTOUT_N, cfg.INPUT.CUTOUT_LEN))
    if "normalize" in choices:
        logger.info("+ normalization (mean=%s, std=%s)", cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
        tfms.append(normalize)
    if "gaussian_noise" in choices:
        logger.info("+ gaussian noise (mean=%s, std=%s)", cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD)
        tfms.append(GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD))
    if "instance_norm" in choices:
        logger.info("+ instance normalization")
        tfms.append(InstanceNormalization())
    return T.Compose(tfms)


def _build_transform_test(cfg, choices: list[str], normalize: T.Normalize) -> T.Compose:
    logger.info("Building transform_test")
    interp = _interpolation(cfg)
    size = tuple(cfg.INPUT.SIZE)
    # An int size resizes the shorter side and keeps the aspect ratio (CLIP's preprocessing).
    logger.info("+ resize the smaller edge to %d", max(size))
    logger.info("+ %dx%d center crop", size[0], size[1])
    tfms: list = [T.Resize(max(size), interpolation=interp), T.CenterCrop(size), T.ToTensor()]
    if "normalize" in choices:
        logger.info("+ normalization (mean=%s, std=%s)", cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
        tfms.append(normalize)
    if "instance_norm" in choices:
        logger.info("+ instance normalization")
        tfms.append(InstanceNormalization())
    return T.Compose(tfms)
