#!/usr/bin/env python
# Verbatim copy of the team's conformance kit generator (/work/shared/conformance/make_fixture.py)
# for the Caltech101-format fixture the golden outputs were made with. Do not edit the value-generating
# code: the goldens only match its exact output. See tests/conformance/README.md.
"""Write a tiny, deterministic dataset in the exact on-disk format of CoOp's
Caltech101 loader (datasets/caltech101.py):

    <root>/caltech-101/101_ObjectCategories/<folder>/image_NNNN.jpg
    <root>/caltech-101/split_zhou_Caltech101.json
        {"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}
        relpath is relative to 101_ObjectCategories, e.g. "Faces/image_0001.jpg"

Folders are real Caltech101 category folders, labels follow CoOp's rule
(sorted folder names, BACKGROUND_Google / Faces_easy ignored) and classnames
follow CoOp's NEW_CNAMES renaming (Faces->face, Leopards->leopard, ...), so
the first 10 folders give exactly the labels/classnames of the real split.
Images: random noise + a class-specific pattern (colour, stripe frequency and
orientation, a blob), varied sizes (80..320 px), a few greyscale ones; JPEG
quality 90 written by Pillow.  Everything is drawn from
numpy.random.RandomState(seed).

The few-shot cache directory (caltech-101/split_fewshot) is NOT written here;
CoOp-style loaders create it.  The goldens were made with no cache present
(delete it before a run if your loader caches few-shot splits there).

Usage: python make_fixture.py [--root DIR] [--num-classes 10] [--train 8]
                              [--val 4] [--test 4] [--seed 0] [--force]
Default DIR: $CONFORMANCE_DATA/fixture ($CONFORMANCE_DATA defaults to
<system temp dir>/conformance_data; non-default sizes/seeds go to
$CONFORMANCE_DATA/fixture_c{classes}_tr{train}_va{val}_te{test}_s{seed}).
Prints the root and a digest over all files (images + split file).

Self-contained (numpy + Pillow only).  The golden outputs of this kit were
made with the default fixture, tree digest
3914fdd743bcc26b37e24698b9bea65b7ee0f7eb4bb13176a46a41b12d9b1796; the JPEG
bytes depend on Pillow's / libjpeg's encoder, so check the digest.
"""
import argparse
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

# Caltech101 category folders (101_ObjectCategories), sorted as CoOp sorts them
# (plain str sort: upper case first), without BACKGROUND_Google / Faces_easy.
CALTECH101_FOLDERS = [
    "Faces", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor", "ant",
    "barrel", "bass", "beaver", "binocular", "bonsai", "brain", "brontosaurus",
    "buddha", "butterfly", "camera", "cannon", "car_side", "ceiling_fan",
    "cellphone", "chair", "chandelier", "cougar_body", "cougar_face", "crab",
    "crayfish", "crocodile", "crocodile_head", "cup", "dalmatian", "dollar_bill",
    "dolphin", "dragonfly", "electric_guitar", "elephant", "emu", "euphonium",
    "ewer", "ferry", "flamingo", "flamingo_head", "garfield", "gerenuk",
    "gramophone", "grand_piano", "hawksbill", "headphone", "hedgehog",
    "helicopter", "ibis", "inline_skate", "joshua_tree", "kangaroo", "ketch",
    "lamp", "laptop", "llama", "lobster", "lotus", "mandolin", "mayfly",
    "menorah", "metronome", "minaret", "nautilus", "octopus", "okapi", "pagoda",
    "panda", "pigeon", "pizza", "platypus", "pyramid", "revolver", "rhino",
    "rooster", "saxophone", "schooner", "scissors", "scorpion", "sea_horse",
    "snoopy", "soccer_ball", "stapler", "starfish", "stegosaurus", "stop_sign",
    "strawberry", "sunflower", "tick", "trilobite", "umbrella", "watch",
    "water_lilly", "wheelchair", "wild_cat", "windsor_chair", "wrench", "yin_yang",
]
assert len(CALTECH101_FOLDERS) == 100 and CALTECH101_FOLDERS == sorted(CALTECH101_FOLDERS)
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


def _image(rs, label, n_classes, grey):
    w = int(rs.randint(80, 321))
    h = int(rs.randint(80, 321))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # class-specific pattern
    hue = label / max(n_classes, 1)
    base = np.array([np.sin(2 * np.pi * (hue + k / 3.0)) * 0.5 + 0.5 for k in range(3)], np.float32)
    theta = np.pi * label / max(n_classes, 1)
    freq = 2.0 + 3.0 * (label % 5)
    phase = rs.uniform(0, 2 * np.pi)
    u = (xx * np.cos(theta) + yy * np.sin(theta)) / max(w, h)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * u + phase)
    cx, cy = rs.uniform(0.25, 0.75) * w, rs.uniform(0.25, 0.75) * h
    r = rs.uniform(0.15, 0.35) * min(w, h)
    blob = (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r).astype(np.float32)
    img = (0.45 * base[None, None, :] * stripes[..., None]
           + 0.25 * blob[..., None] * (1.0 - base[None, None, :])
           + 0.30 * rs.uniform(0, 1, size=(h, w, 3)).astype(np.float32))
    img = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    im = Image.fromarray(img, "RGB")
    if grey:
        im = im.convert("L")
    return im


def data_root():
    d = os.environ.get("CONFORMANCE_DATA") or os.path.join(tempfile.gettempdir(), "conformance_data")
    return os.path.abspath(d)


def default_root(num_classes=10, train=8, val=4, test=4, seed=0):
    name = "fixture" if (num_classes, train, val, test, seed) == (10, 8, 4, 4, 0) else \
        f"fixture_c{num_classes}_tr{train}_va{val}_te{test}_s{seed}"
    return os.path.join(data_root(), name)


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
    return h.hexdigest()


def make(root=None, num_classes=10, train=8, val=4, test=4, seed=0, force=False):
    root = root or default_root(num_classes, train, val, test, seed)
    ds = os.path.join(root, "caltech-101")
    split_path = os.path.join(ds, "split_zhou_Caltech101.json")
    if os.path.exists(split_path) and not force:
        return root, _digest(ds)
    if os.path.exists(ds):
        shutil.rmtree(ds)
    img_dir = os.path.join(ds, "101_ObjectCategories")
    assert 1 <= num_classes <= len(CALTECH101_FOLDERS)
    rs = np.random.RandomState(seed)
    split = {"train": [], "val": [], "test": []}
    n_per = train + val + test
    for label, folder in enumerate(CALTECH101_FOLDERS[:num_classes]):
        os.makedirs(os.path.join(img_dir, folder), exist_ok=True)
        cname = NEW_CNAMES.get(folder, folder)
        rel = []
        for i in range(n_per):
            im = _image(rs, label, num_classes, grey=(i % 7 == 6))
            name = f"image_{i + 1:04d}.jpg"
            im.save(os.path.join(img_dir, folder, name), format="JPEG", quality=90)
            rel.append(f"{folder}/{name}")
        order = rs.permutation(n_per)  # like DTD.read_and_split_data: shuffle per class
        rel = [rel[j] for j in order]
        split["train"] += [[p, label, cname] for p in rel[:train]]
        split["val"] += [[p, label, cname] for p in rel[train:train + val]]
        split["test"] += [[p, label, cname] for p in rel[train + val:]]
    with open(split_path, "w") as f:
        json.dump(split, f, indent=4, separators=(",", ": "))
    return root, _digest(ds)


def _digest(ds):
    """Digest over the images and the split file only (not split_fewshot/)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(ds):
        dirnames[:] = sorted(d for d in dirnames if d != "split_fewshot")
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            h.update(os.path.relpath(p, ds).encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="default: $CONFORMANCE_DATA/fixture (or fixture_c.. for non-default sizes)")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--train", type=int, default=8, help="train images per class")
    ap.add_argument("--val", type=int, default=4, help="val images per class")
    ap.add_argument("--test", type=int, default=4, help="test images per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    root, digest = make(a.root, a.num_classes, a.train, a.val, a.test, a.seed, a.force)
    print(root)
    print(f"SHA256(tree) {digest}")


if __name__ == "__main__":
    main()
