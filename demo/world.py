"""The demo world: deterministic procedural images of coloured shapes, named by words.

A class is a colour and a shape ("red circle", "blue star"). Each image draws one shape with a
random position, size, rotation and colour jitter on a tinted gradient background with noise.
Two rendering styles exist: "filled" (solid shapes) and "sketch" (thin outlines on a much
noisier background, the domain shift). The demo datasets are lit by a warm illuminant
(`DATASET_LIGHT`) while the CLIP pretraining stream is lit neutrally: like real downstream data,
they differ from the pretraining data in a way no class name describes, which is what few-shot
adaptation (CoOp) can learn and zero-shot prompts cannot.

Every image is a pure function of ``(stream, class index, image index)``: its random numbers come
from ``numpy.random.default_rng([STREAM_SEEDS[stream], class index, image index])``, so images can
be made in any order and regenerate bit for bit. Shapes are drawn at 4x the output size and
box-filtered down, which anti-aliases the edges without any library-version-dependent resampling.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "MAIN_SHAPES",
    "SYMBOL_SHAPES",
    "ALL_SHAPES",
    "STYLES",
    "DATASET_LIGHT",
    "IMAGE_SIZE",
    "STREAM_SEEDS",
    "DemoClass",
    "DemoSpec",
    "DEMO_DATASETS",
    "class_list",
    "render",
    "render_class_image",
]

IMAGE_SIZE = 32  # output images are IMAGE_SIZE x IMAGE_SIZE RGB
_SUPER = 4  # shapes are drawn at 4x and box-filtered down (anti-aliasing)

# name -> base RGB. Hues are far enough apart that brightness/saturation jitter keeps them apart.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 215, 30),
    "green": (40, 165, 55),
    "cyan": (30, 200, 215),
    "blue": (35, 70, 215),
    "purple": (135, 50, 185),
    "pink": (245, 120, 195),
}
# Shapes of the main dataset and the disjoint shapes of the cross-dataset one. No shape equals
# another under rotation (so there is no "diamond": it is a rotated square).
MAIN_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
SYMBOL_SHAPES = ("heart", "moon", "arrow", "pentagon")
ALL_SHAPES = MAIN_SHAPES + SYMBOL_SHAPES
STYLES = ("filled", "sketch")
# R, G, B gains of the demo datasets' warm light (the pretraining stream uses neutral light).
DATASET_LIGHT = (1.0, 0.8, 0.55)

# Seeds of the independent image streams. The demo datasets and the CLIP pretraining stream never
# share a seed, so the pretrained CLIP has never seen a demo test image.
STREAM_SEEDS: dict[str, int] = {
    "demo_shapes": 1001,
    "demo_shapes_sketch": 1002,
    "demo_symbols": 1003,
    "pretrain": 9001,
}


@dataclass(frozen=True)
class DemoClass:
    """One class: its colour and shape words; `name` is the folder name ("red_circle")."""

    color: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.color}_{self.shape}"

    @property
    def words(self) -> str:
        return f"{self.color} {self.shape}"


def class_list(shapes: Sequence[str], colors: Sequence[str] | None = None) -> list[DemoClass]:
    """Every colour x shape class, sorted by folder name (the label order of the datasets)."""
    colors = list(COLORS) if colors is None else list(colors)
    for shape in shapes:
        if shape not in ALL_SHAPES:
            raise ValueError(f"Unknown shape {shape!r}; expected one of {ALL_SHAPES}.")
    for color in colors:
        if color not in COLORS:
            raise ValueError(f"Unknown colour {color!r}; expected one of {tuple(COLORS)}.")
    return sorted((DemoClass(c, s) for c in colors for s in shapes), key=lambda k: k.name)


# ---------------------------------------------------------------------------------- geometry
def _polygon(n: int, radius: float, phase: float = math.pi / 2) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star(points: int = 5, outer: float = 1.1, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        r = outer if k % 2 == 0 else inner
        a = math.pi / 2 + math.pi * k / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _heart(n: int = 40) -> list[tuple[float, float]]:
    out = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        out.append((x / 16.0, -(y + 2.5) / 15.0))  # image y points down
    return out


_CROSS = [(-0.33, -1), (0.33, -1), (0.33, -0.33), (1, -0.33), (1, 0.33), (0.33, 0.33), (0.33, 1),
          (-0.33, 1), (-0.33, 0.33), (-1, 0.33), (-1, -0.33), (-0.33, -0.33)]
_ARROW = [(-1, -0.22), (0.15, -0.22), (0.15, -0.62), (1.05, 0), (0.15, 0.62), (0.15, 0.22), (-1, 0.22)]
# Unit outlines (radius ~1), centred on the origin; circle-based shapes are drawn separately.
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": _polygon(4, 1.1, math.pi / 4),
    "triangle": _polygon(3, 1.15),
    "star": _star(),
    "cross": _CROSS,
    "heart": _heart(),
    "arrow": _ARROW,
    "pentagon": _polygon(5, 1.05),
}


def _shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float, size: int) -> Image.Image:
    """An 'L' mask (size x size, drawn at that size) with the filled shape in 255."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cos, sin = math.cos(angle), math.sin(angle)

    def place(points):
        return [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in points]

    def disc(x: float, y: float, r: float, fill: int) -> None:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)

    if shape == "circle":
        disc(cx, cy, radius, 255)
    elif shape == "ring":
        disc(cx, cy, radius * 1.05, 255)
        disc(cx, cy, radius * 0.55, 0)
    elif shape == "moon":
        disc(cx, cy, radius, 255)
        # The bite: a slightly smaller disc shifted along the rotation direction.
        disc(cx + radius * 0.5 * cos, cy + radius * 0.5 * sin, radius * 0.85, 0)
    elif shape in _POLYGONS:
        draw.polygon(place(_POLYGONS[shape]), fill=255)
    else:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {ALL_SHAPES}.")
    return mask


# ---------------------------------------------------------------------------------- rendering
def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    """Grey erosion with a k x k square (separable: a row minimum, then a column minimum)."""
    pad = k // 2
    padded = np.pad(mask, pad, mode="constant")
    rows = sliding_window_view(padded, k, axis=1).min(axis=-1)
    return sliding_window_view(rows, k, axis=0).min(axis=-1)


def _jitter_color(rgb: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    h = (h + rng.uniform(-0.025, 0.025)) % 1.0
    s = min(1.0, s * rng.uniform(0.75, 1.1))
    v = min(1.0, v * rng.uniform(0.7, 1.1))
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float64) * 255.0


def _background(rng: np.random.Generator, size: int, noise: float) -> np.ndarray:
    """Greyish tinted linear gradient plus Gaussian noise, float RGB [size, size, 3]."""
    base = rng.uniform(70, 190) + rng.uniform(-18, 18, size=3)
    direction = rng.uniform(0, 2 * math.pi)
    amplitude = rng.uniform(0, 45)
    coords = (np.arange(size) - (size - 1) / 2) / size
    ramp = math.cos(direction) * coords[None, :] + math.sin(direction) * coords[:, None]
    image = base[None, None, :] + amplitude * ramp[:, :, None]
    return image + rng.normal(0.0, noise, size=(size, size, 3))


def render(
    color: str,
    shape: str,
    style: str,
    rng: np.random.Generator,
    size: int = IMAGE_SIZE,
    light: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """One image (uint8 [size, size, 3]) of a `color` `shape` in `style`, using `rng` only.

    `light` multiplies the R, G, B channels (a coloured illuminant, each factor jittered by +-0.05);
    None is neutral light and draws no random numbers for it.
    """
    if style not in STYLES:
        raise ValueError(f"Unknown style {style!r}; expected one of {STYLES}.")
    big = size * _SUPER
    # Moderate variation: a from-scratch ViT trained for minutes on a CPU must still learn the shapes.
    radius = rng.uniform(0.24, 0.4) * size
    cx = rng.uniform(0.32, 0.68) * size * _SUPER
    cy = rng.uniform(0.32, 0.68) * size * _SUPER
    angle = rng.uniform(-0.5, 0.5)  # radians, about +-30 degrees
    mask = _shape_mask(shape, cx, cy, radius * _SUPER, angle, big)
    if style == "sketch":
        # Outline = shape minus its erosion (a ~1.2 px stroke at the output size).
        filled = np.asarray(mask, dtype=np.float64)
        mask_array = filled - _erode(filled, 9)
    else:
        mask_array = np.asarray(mask, dtype=np.float64)
    # Box filter: the mean over each 4x4 block is the pixel's coverage.
    coverage = mask_array.reshape(size, _SUPER, size, _SUPER).mean(axis=(1, 3)) / 255.0
    noise = rng.uniform(4, 14) if style == "filled" else rng.uniform(18, 34)
    background = _background(rng, size, noise)
    color_rgb = _jitter_color(COLORS[color], rng)
    # Soft shading across the shape so that it is not a flat patch.
    shade = 1.0 + rng.uniform(-0.12, 0.12) * (np.arange(size) - size / 2)[None, :, None] / size
    foreground = color_rgb[None, None, :] * shade + rng.normal(0.0, 5.0, size=(size, size, 3))
    alpha = coverage[:, :, None]
    image = background * (1 - alpha) + foreground * alpha
    if light is not None:
        image = image * (np.asarray(light, dtype=np.float64) + rng.uniform(-0.05, 0.05, size=3))[None, None, :]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def image_rng(stream: str, class_index: int, image_index: int) -> np.random.Generator:
    """The generator of one image of a stream (independent of generation order)."""
    if stream not in STREAM_SEEDS:
        raise ValueError(f"Unknown stream {stream!r}; expected one of {tuple(STREAM_SEEDS)}.")
    return np.random.default_rng([STREAM_SEEDS[stream], class_index, image_index])


def render_class_image(
    stream: str,
    classes: Sequence[DemoClass],
    class_index: int,
    image_index: int,
    style: str,
    light: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Image `image_index` of class `classes[class_index]` in `stream`."""
    k = classes[class_index]
    return render(k.color, k.shape, style, image_rng(stream, class_index, image_index), light=light)


# The demo datasets drawn from this world (written by demo.make_data, read by demo.datasets)
@dataclass(frozen=True)
class DemoSpec:
    """One demo dataset: which shapes, which style, and how many images per class in each split."""

    name: str  # the registered dataset class name (DATASET.NAME)
    dataset_dir: str  # folder under the root; also the image stream (seed) name
    shapes: tuple[str, ...]
    style: str
    n_train: int = 24
    n_val: int = 8
    n_test: int = 20
    # R, G, B gains of the illuminant (jittered per image); None renders the same images in neutral light.
    light: tuple[float, float, float] | None = DATASET_LIGHT

    @property
    def classes(self) -> list[DemoClass]:
        return class_list(self.shapes)

    @property
    def split_file(self) -> str:
        return f"split_{self.name}.json"

    @property
    def counts(self) -> dict[str, int]:
        n = len(self.classes)
        return {"classes": n, "train": n * self.n_train, "val": n * self.n_val, "test": n * self.n_test}


DEMO_DATASETS: dict[str, DemoSpec] = {
    spec.dataset_dir: spec
    for spec in (
        # main: 8 colours x 6 shapes = 48 classes (base/new: 24/24)
        DemoSpec("DemoShapes", "demo_shapes", MAIN_SHAPES, "filled"),
        # domain shift: the same 48 classes as outlines on heavy noise
        DemoSpec("DemoShapesSketch", "demo_shapes_sketch", MAIN_SHAPES, "sketch"),
        # cross-dataset: 8 colours x 4 other shapes = 32 classes, none shared with the main one
        DemoSpec("DemoSymbols", "demo_symbols", SYMBOL_SHAPES, "filled"),
    )
}
