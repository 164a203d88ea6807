"""The demo world: procedural datasets and a tiny pretrained CLIP, so every part runs out of the box.

``import demo`` registers them: the CLIP name ``demo`` (`MODEL.BACKBONE.NAME demo`) and the
datasets DemoShapes, DemoShapesSketch and DemoSymbols. Entry points (train.py, benchmarks,
`python -m demo.doctor`) import it; `clip/` and `datasets/` know nothing of the demo.

- `demo.world`: the deterministic image generator (colour x shape classes) and the dataset specs.
- `demo.datasets`: the dataset classes (generated on first use).
- `demo.make_data`: writes the demo datasets in the real datasets' layout (`python -m demo.make_data`).
- `demo.pretrain_clip`: re-creates the shipped demo CLIP (`python -m demo.pretrain_clip`).
- `demo.doctor`: the dataset doctor with the demo datasets known (`python -m demo.doctor`).
- `demo/assets/demo_clip.pt`: the demo CLIP, an OpenAI-format state dict.
"""
from __future__ import annotations

import os

import clip
from demo import datasets as _datasets  # noqa: F401  (registers the demo datasets)
from demo import vit as _vit  # noqa: F401  (registers the timm architecture of the demo image tower)

__all__ = ["DEMO_MODEL_NAME", "DEMO_CLIP_PATH"]

DEMO_MODEL_NAME = "demo"
DEMO_CLIP_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo_clip.pt")

clip.register_local_model(
    DEMO_MODEL_NAME,
    DEMO_CLIP_PATH,
    missing_hint="Restore it from the repository (git checkout -- demo/assets) or re-create it with "
    "`python -m demo.pretrain_clip`.",
)
