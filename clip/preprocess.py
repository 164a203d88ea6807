"""What a CLIP expects of its input images, in timm's ``pretrained_cfg`` vocabulary.

A preprocessing config is a plain dict with the keys timm uses for the same purpose:
``input_size`` (3, H, W), ``mean``, ``std`` (per channel, after scaling pixels to [0, 1]),
``interpolation`` (of the resize) and ``crop_pct`` (the centre crop's share of the resized
image; 1.0 resizes the shorter side to the input size and crops the rest, as OpenAI does).
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from torchvision import transforms

OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


def openai_preprocess_cfg(resolution: int) -> Dict[str, Any]:
    """The preprocessing every OpenAI CLIP was trained with, at `resolution` pixels square."""
    return {
        "input_size": (3, int(resolution), int(resolution)),
        "mean": OPENAI_DATASET_MEAN,
        "std": OPENAI_DATASET_STD,
        "interpolation": "bicubic",
        "crop_pct": 1.0,
    }


def _convert_to_rgb(image):
    return image.convert("RGB")


def image_transform(n_px: int) -> Callable:
    """OpenAI's preprocessing: bicubic resize of the shorter side, center crop, RGB, to tensor, normalize."""
    cfg = openai_preprocess_cfg(n_px)
    return transforms.Compose(
        [
            transforms.Resize(n_px, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(n_px),
            _convert_to_rgb,
            transforms.ToTensor(),
            transforms.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
