#!/usr/bin/env python
# Verbatim copy of the team's conformance kit generator (/work/shared/conformance/make_clip.py)
# for the random CLIP the golden outputs were made with. Do not edit the value-generating
# code: the goldens only match its exact output. See tests/conformance/README.md.
"""Write a deterministic random-weight CLIP ViT-B/16 checkpoint in OpenAI's
state-dict format (the key names / shapes that clip.model.build_model infers the
architecture from).

* widths: vision 768 (12 layers, 12 heads, patch 16), text 512 (12 layers,
  8 heads), embed dim 512, vocab 49408, context 77 -- i.e. real ViT-B/16;
* image resolution is set only through the length of visual.positional_embedding
  ((res/16)^2 + 1 rows), default 112 (7x7 grid + CLS) to save CPU time;
  use --resolution 224 for the real ViT-B/16 geometry;
* values: CLIP's own init recipe (normal, small std; see initialize_parameters in
  openai/CLIP), plus small random perturbations of LayerNorm gains/biases and
  of all biases so that a re-implementation that drops a bias or an LN affine
  cannot match by accident; logit_scale = ln(100) as in trained CLIP;
* every tensor is stored as float16 (like OpenAI's released checkpoints), so
  build_model()+.float() is exact whichever loader path is taken;
* the extra int64 scalars input_resolution / context_length / vocab_size that
  OpenAI's JIT state dict carries are included (build_model deletes them);
* random numbers come from numpy.random.RandomState(seed) (stream is frozen by
  numpy's compatibility policy), drawn in the fixed key order below.

Usage:  python make_clip.py [--resolution 112] [--seed 0] [--out PATH]
Default PATH: $CONFORMANCE_DATA/clip/ViT-B-16_random_seed{seed}_r{resolution}.pt
($CONFORMANCE_DATA defaults to <system temp dir>/conformance_data).
Prints the output path and its SHA256.

Self-contained (numpy + torch only).  The golden outputs of this kit were made
with the file from `python make_clip.py --resolution 112 --seed 0`, SHA256
782ac2d6f3a8681660b2506122bcc063befc675b59f9232cb98eb11477e653cf (torch 2.x
zip serialisation; another torch version may serialise differently, but the
tensors are the same).
"""
import argparse
import hashlib
import math
import os
import tempfile

import numpy as np
import torch

EMBED_DIM = 512
VISION_WIDTH = 768
VISION_LAYERS = 12
PATCH = 16
TEXT_WIDTH = 512
TEXT_LAYERS = 12
VOCAB = 49408
CONTEXT = 77


def build_state_dict(resolution=112, seed=0):
    assert resolution % PATCH == 0
    grid = resolution // PATCH
    rs = np.random.RandomState(seed)
    sd = {}

    def normal(shape, std):
        return (rs.standard_normal(size=shape).astype(np.float32) * np.float32(std))

    def put(name, arr):
        sd[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(torch.float16)

    def ln(prefix, width):
        put(prefix + ".weight", 1.0 + normal((width,), 0.02))
        put(prefix + ".bias", normal((width,), 0.02))

    def blocks(prefix, width, layers):
        attn_std = width ** -0.5
        proj_std = (width ** -0.5) * ((2 * layers) ** -0.5)
        fc_std = (2 * width) ** -0.5
        for i in range(layers):
            p = f"{prefix}.resblocks.{i}"
            put(p + ".attn.in_proj_weight", normal((3 * width, width), attn_std))
            put(p + ".attn.in_proj_bias", normal((3 * width,), 0.01))
            put(p + ".attn.out_proj.weight", normal((width, width), proj_std))
            put(p + ".attn.out_proj.bias", normal((width,), 0.01))
            ln(p + ".ln_1", width)
            put(p + ".mlp.c_fc.weight", normal((4 * width, width), fc_std))
            put(p + ".mlp.c_fc.bias", normal((4 * width,), 0.01))
            put(p + ".mlp.c_proj.weight", normal((width, 4 * width), proj_std))
            put(p + ".mlp.c_proj.bias", normal((width,), 0.01))
            ln(p + ".ln_2", width)

    # ---- text tower (top-level keys, as in OpenAI's state dict)
    put("positional_embedding", normal((CONTEXT, TEXT_WIDTH), 0.01))
    put("text_projection", normal((TEXT_WIDTH, EMBED_DIM), TEXT_WIDTH ** -0.5))
    sd["logit_scale"] = torch.tensor(math.log(100.0), dtype=torch.float16)
    # ---- vision tower
    scale = VISION_WIDTH ** -0.5
    put("visual.class_embedding", normal((VISION_WIDTH,), scale))
    put("visual.positional_embedding", normal((grid * grid + 1, VISION_WIDTH), scale))
    put("visual.proj", normal((VISION_WIDTH, EMBED_DIM), scale))
    put("visual.conv1.weight", normal((VISION_WIDTH, 3, PATCH, PATCH), (3 * PATCH * PATCH) ** -0.5))
    ln("visual.ln_pre", VISION_WIDTH)
    blocks("visual.transformer", VISION_WIDTH, VISION_LAYERS)
    ln("visual.ln_post", VISION_WIDTH)
    # ---- text tower (rest)
    put("token_embedding.weight", normal((VOCAB, TEXT_WIDTH), 0.02))
    blocks("transformer", TEXT_WIDTH, TEXT_LAYERS)
    ln("ln_final", TEXT_WIDTH)
    # ---- scalars present in OpenAI's JIT state dicts (deleted by build_model)
    sd["input_resolution"] = torch.tensor(resolution)
    sd["context_length"] = torch.tensor(CONTEXT)
    sd["vocab_size"] = torch.tensor(VOCAB)
    return sd


def data_root():
    d = os.environ.get("CONFORMANCE_DATA") or os.path.join(tempfile.gettempdir(), "conformance_data")
    return os.path.abspath(d)


def default_path(resolution=112, seed=0):
    return os.path.join(data_root(), "clip", f"ViT-B-16_random_seed{seed}_r{resolution}.pt")


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
    return h.hexdigest()


def make(resolution=112, seed=0, out=None, force=False):
    out = out or default_path(resolution, seed)
    if os.path.exists(out) and not force:
        return out, sha256_file(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    sd = build_state_dict(resolution, seed)
    tmp = out + ".tmp"
    # save through a file object: the zip's internal archive name is then the
    # constant "archive", so the file's SHA256 does not depend on its path
    with open(tmp, "wb") as f:
        torch.save(sd, f)
    os.replace(tmp, out)
    return out, sha256_file(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=112)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default: $CONFORMANCE_DATA/clip/ViT-B-16_random_seed{seed}_r{res}.pt")
    ap.add_argument("--force", action="store_true", help="rewrite even if the file exists")
    args = ap.parse_args()
    out, digest = make(args.resolution, args.seed, args.out, force=args.force)
    print(out)
    print(f"SHA256 {digest}")


if __name__ == "__main__":
    main()
