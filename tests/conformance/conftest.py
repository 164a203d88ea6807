"""Fixtures for the conformance tests: the kit's random CLIP (regenerated, hash-checked) and the
Caltech101-format fixture (shipped test images + regenerated train/val images) laid out as the
kit's `$CONFORMANCE_DATA`."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Iterator

import pytest
import torch

from tests.conformance import make_clip, make_fixture
from tests.conformance.helpers import (
    CLIP_FILE_SHA256,
    CLIP_NAME,
    CLIP_TENSOR_SHA256,
    FIXTURE_DIR,
    FIXTURE_MANIFEST,
    FIXTURE_TREE_SHA256,
    sha256_file,
    tensor_digest,
)

logger = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def conformance_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A `$CONFORMANCE_DATA` directory: `clip/<CLIP_NAME>` and `fixture/caltech-101/...`."""
    data = tmp_path_factory.mktemp("conformance_data")
    clip_path = data / "clip" / CLIP_NAME
    _write_clip(clip_path)
    _assemble_fixture(data / "fixture", tmp_path_factory.mktemp("regenerated_fixture"))
    yield data
    # pytest keeps the last few base temp dirs; do not leave 300 MB behind in each.
    clip_path.unlink(missing_ok=True)


@pytest.fixture
def clean_fewshot_cache(conformance_data: Path) -> Path:
    """The goldens were made with no few-shot cache present; remove one an earlier run wrote."""
    shutil.rmtree(conformance_data / "fixture" / "caltech-101" / "split_fewshot", ignore_errors=True)
    return conformance_data


def _write_clip(out: Path) -> None:
    path, digest = make_clip.make(resolution=112, seed=0, out=str(out))
    if digest == CLIP_FILE_SHA256:
        return
    # Another torch version may serialise identical tensors into different bytes; the tensors are
    # what the goldens depend on, so fall back to a hash over them.
    got = tensor_digest(torch.load(path, map_location="cpu", weights_only=True))
    assert got == CLIP_TENSOR_SHA256, (
        f"Regenerated random CLIP {path} differs from the kit's: file SHA256 {digest} (expected "
        f"{CLIP_FILE_SHA256}), tensor digest {got} (expected {CLIP_TENSOR_SHA256}). "
        "tests/conformance/make_clip.py must stay a verbatim copy of the kit's generator."
    )
    logger.info("Random CLIP file hash differs (torch serialisation) but its tensors match the kit's")


def _assemble_fixture(root: Path, scratch: Path) -> None:
    """Shipped split file + test images, plus train/val images regenerated with the kit's generator.

    The loader checks that every image in the split file exists, but an eval-only run reads only
    the test images, so those ship verbatim (their JPEG bytes depend on Pillow's encoder) and the
    rest are regenerated here to keep the repository small.
    """
    with open(FIXTURE_MANIFEST) as f:
        manifest: dict[str, str] = json.load(f)
    dst = root / "caltech-101"
    shutil.copytree(FIXTURE_DIR / "caltech-101", dst)
    shipped = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()}
    for rel in sorted(shipped):
        got = sha256_file(dst / rel)
        assert got == manifest.get(rel), (
            f"Shipped fixture file tests/conformance/fixture/caltech-101/{rel} has SHA256 {got}, expected "
            f"{manifest.get(rel)}. Restore it from the repository (binary files must not be rewritten)."
        )

    regen_root, tree_digest = make_fixture.make(root=str(scratch / "fixture"))
    regen = Path(regen_root) / "caltech-101"
    differing = []
    for rel, digest in manifest.items():
        if rel in shipped:
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(regen / rel, dst / rel)
        if sha256_file(dst / rel) != digest:
            differing.append(rel)
    if tree_digest != FIXTURE_TREE_SHA256 or differing:
        # Only the train/val images can differ here, and the eval-only checks do not read them.
        logger.warning(
            "Regenerated fixture tree digest %s != kit's %s (%d train/val images differ, e.g. %s): "
            "this Pillow encodes JPEGs differently. The eval-only checks read only the shipped test images.",
            tree_digest, FIXTURE_TREE_SHA256, len(differing), differing[:1],
        )
