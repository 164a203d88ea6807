"""Fixtures for the data-layer tests: small images and item lists on disk."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import Datum


def write_images(folder: Path, labels: list[int], size=(24, 18), domains: list[int] | None = None) -> list[Datum]:
    """One small JPEG per label in `folder`; returns the Datum list (index i -> image i)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    items = []
    for i, label in enumerate(labels):
        path = folder / f"img_{i:03d}.jpg"
        arr = rng.randint(0, 256, size=(size[1], size[0], 3)).astype(np.uint8)
        Image.fromarray(arr).save(path)
        domain = domains[i] if domains else 0
        items.append(Datum(str(path), label, domain, f"class_{label}"))
    return items


@pytest.fixture
def make_items(tmp_path):
    """`make_items(labels, size=..., domains=...)` -> list of Datum backed by real JPEGs."""

    def _make(labels, size=(24, 18), domains=None, sub="imgs"):
        return write_images(tmp_path / sub, list(labels), size=size, domains=domains)

    return _make
