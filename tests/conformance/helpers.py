"""Paths, hashes and the check_argv runner shared by the conformance fixtures and tests."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.conformance import make_clip

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
FIXTURE_DIR = HERE / "fixture"  # shipped: split file + the 40 test images (verbatim bytes)
FIXTURE_MANIFEST = HERE / "fixture_sha256.json"  # SHA256 of every file of the kit's fixture

# From the kit's README / meta.json.
CLIP_FILE_SHA256 = "782ac2d6f3a8681660b2506122bcc063befc675b59f9232cb98eb11477e653cf"
FIXTURE_TREE_SHA256 = "3914fdd743bcc26b37e24698b9bea65b7ee0f7eb4bb13176a46a41b12d9b1796"
# Ours: `tensor_digest` of that file, for torch versions that serialise the same tensors differently.
CLIP_TENSOR_SHA256 = "b9e5cee81a782a5ee0a9d754c2204a30b68f4e78a5cb785e4c585b8d8e3d75b7"
CLIP_NAME = "ViT-B-16_random_seed0_r112.pt"


def sha256_file(path: str | Path) -> str:
    return make_clip.sha256_file(str(path))


def tensor_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA256 over (name, dtype, shape, raw bytes) of every tensor, in sorted key order."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous().reshape(-1)
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(state_dict[key].shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_meta(method: str) -> dict:
    with open(HERE / "golden" / method / "meta.json") as f:
        return json.load(f)


def fill_argv(argv: list[str], data_dir: Path, output_dir: Path) -> list[str]:
    """Fill the kit's placeholders; our folder mirrors the kit's layout (golden/<m>/model)."""
    return [
        a.replace("$CONFORMANCE_DATA", str(data_dir))
        .replace("$CONFORMANCE_KIT", str(HERE))
        .replace("$OUTPUT_DIR", str(output_dir))
        for a in argv
    ]


def run_train_inprocess(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`python train.py ARGV` from the repo root (config paths in the argv are relative)."""
    import train

    if argv and argv[0] == "train.py":
        argv = argv[1:]
    monkeypatch.chdir(REPO_ROOT)
    train.main(train.build_parser().parse_args(argv))
