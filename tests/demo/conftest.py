"""Helpers of the demo-world tests (the `demo_root` fixture lives in tests/conftest.py)."""
from __future__ import annotations

import demo  # noqa: F401  (registers the demo CLIP name and the demo datasets, as entry points do)


def demo_cfg(root, name: str = "DemoShapes", **overrides):
    """A config for building a demo dataset directly (no trainer)."""
    from engine.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.SEED = 1
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg
