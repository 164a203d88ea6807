"""Contrastively pretrain the tiny demo CLIP on captioned images of the demo world.

    python -m demo.pretrain_clip [--out demo/assets/demo_clip.pt] [--steps 3000] [--seed 0]

The model is our `clip.model.CLIP` in OpenAI's geometry conventions (ViT image tower, causal text
transformer, context 77, the real 49408-token BPE vocabulary), small enough for a CPU:
32 px images, patch 8, vision width 128 x 3 layers, text width 64 x 3 layers, embedding 64.

Data: a pool of images from the "pretrain" stream of `demo.world` (its own seed: no image of the
demo datasets is ever seen), over all 8 colours x 10 shapes, 75% filled and 25% sketch style.
Each image gets a caption from a varied template set ("a photo of a red circle.", "a sketch of
a blue star.", "a star that is blue.", ...), tokenized with CLIP's tokenizer.

Loss: CLIP's symmetric InfoNCE, with every caption of the same class counted as a positive
(a batch of 128 from 80 classes holds several images per class; treating them as negatives
would push identical concepts apart).

Only the token rows that the captions use are trained (a compact embedding that is scattered
into the 49408 rows at export); every other row is zero in the checkpoint. The file is a plain
`torch.save`d fp16 state dict with OpenAI's key names, loadable by `clip.load`.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

import clip
from clip.model import CLIP
from demo import DEMO_CLIP_PATH
from demo.world import ALL_SHAPES, IMAGE_SIZE, class_list, image_rng, render

logger = logging.getLogger(__name__)

DEFAULT_OUT = DEMO_CLIP_PATH
ARCH = dict(
    embed_dim=64,
    image_resolution=IMAGE_SIZE,
    vision_layers=3,
    vision_width=128,
    vision_patch_size=8,
    context_length=77,
    vocab_size=49408,
    transformer_width=64,
    transformer_heads=1,
    transformer_layers=3,
)
SKETCH_FRACTION = 0.25

# {} is the class words ("red circle"); {c}/{s} the colour and shape alone.
TEMPLATES = [
    "a photo of a {}.", "a {}.", "{}", "an image of a {}.", "a picture of the {}.", "a photo of the {}.",
    "a drawing of a {}.", "a rendering of a {}.", "a small {}.", "a large {}.", "a {} on a grey background.",
    "there is a {} in the picture.", "a blurry photo of a {}.", "a noisy photo of a {}.", "a {} shape.",
    "a {c} {s} shape.", "a {s} that is {c}.", "a {c} coloured {s}.", "the {s} is {c}.", "one {c} {s}.",
]
SKETCH_TEMPLATES = [
    "a sketch of a {}.", "an outline of a {}.", "a line drawing of a {}.", "a noisy sketch of the {}.",
    "the outline of a {s} drawn in {c}.",
]
MEAN = torch.tensor(clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


def caption(template: str, color: str, shape: str) -> str:
    return template.replace("{c}", color).replace("{s}", shape).replace("{}", f"{color} {shape}")


def render_pool(n_per_class: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, 32, 32], class ids [N] and sketch flags [N] from the pretrain stream."""
    classes = class_list(ALL_SHAPES)
    images, labels, sketch = [], [], []
    for label, klass in enumerate(classes):
        for index in range(n_per_class):
            rng = image_rng("pretrain", label, index)
            style = "sketch" if rng.random() < SKETCH_FRACTION else "filled"
            images.append(render(klass.color, klass.shape, style, rng))
            labels.append(label)
            sketch.append(style == "sketch")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels), torch.tensor(sketch)


class CaptionBank:
    """All captions of all classes, tokenized once, over a compact vocabulary (sorted original ids)."""

    def __init__(self) -> None:
        classes = class_list(ALL_SHAPES)
        self.plain = [[caption(t, k.color, k.shape) for t in TEMPLATES] for k in classes]
        self.sketch = [[caption(t, k.color, k.shape) for t in SKETCH_TEMPLATES + TEMPLATES] for k in classes]
        every = [c for group in (self.plain, self.sketch) for per_class in group for c in per_class]
        tokens = clip.tokenize(every)
        used = torch.unique(tokens)  # sorted: EOT (49407) stays the largest id, so argmax finds it
        self.vocab = used
        remap = torch.zeros(ARCH["vocab_size"], dtype=torch.long)
        remap[used] = torch.arange(len(used))
        compact = remap[tokens]
        n_plain = len(self.plain) * len(TEMPLATES)
        self.plain_tokens = compact[:n_plain].view(len(classes), len(TEMPLATES), -1)
        self.sketch_tokens = compact[n_plain:].view(len(classes), len(SKETCH_TEMPLATES) + len(TEMPLATES), -1)

    def sample(self, labels: torch.Tensor, sketch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(labels)
        plain_pick = torch.randint(self.plain_tokens.shape[1], (n,), generator=generator)
        sketch_pick = torch.randint(self.sketch_tokens.shape[1], (n,), generator=generator)
        plain = self.plain_tokens[labels, plain_pick]
        sk = self.sketch_tokens[labels, sketch_pick]
        return torch.where(sketch[:, None], sk, plain)


def multi_positive_clip_loss(image_features, text_features, logit_scale, labels) -> torch.Tensor:
    """Symmetric InfoNCE where every pair of the same class is a positive (targets spread evenly)."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.t()
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss_i = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(targets * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return (loss_i + loss_t) / 2


def normalize_images(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - MEAN) / STD


def export_state_dict(model: CLIP, vocab: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
    """OpenAI-format fp16 state dict: the compact embedding scattered into all 49408 rows (others 0)."""
    state = OrderedDict()
    for key, value in model.state_dict().items():
        if key == "token_embedding.weight":
            full = torch.zeros(ARCH["vocab_size"], value.shape[1])
            full[vocab] = value.detach().float()
            value = full
        state[key] = value.detach().to(torch.float16).contiguous()
    return state


def save_checkpoint(model: CLIP, vocab: torch.Tensor, path: str) -> None:
    """Write the OpenAI-format state dict atomically (a temporary file renamed into place)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(export_state_dict(model, vocab), tmp)
    os.replace(tmp, path)


def train(
    steps: int, batch_size: int, n_per_class: int, lr: float, seed: int, out: str = "", save_every: int = 0
) -> tuple[CLIP, torch.Tensor]:
    torch.manual_seed(seed)
    t0 = time.time()
    images, labels, sketch = render_pool(n_per_class)
    logger.info("Rendered %d pretraining images in %.1f s", len(images), time.time() - t0)
    bank = CaptionBank()
    model = CLIP(**{**ARCH, "vocab_size": len(bank.vocab)})
    model.train()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.dim() >= 2 and "embedding" not in name else no_decay).append(param)
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                              lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
    )
    generator = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        x = images[idx]
        flip = torch.rand(batch_size, generator=generator) < 0.5  # the CoOp recipe flips too
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        tokens = bank.sample(labels[idx], sketch[idx], generator)
        loss = multi_positive_clip_loss(model.encode_image(normalize_images(x)), model.encode_text(tokens),
                                        model.logit_scale, labels[idx])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if save_every and out and (step + 1) % save_every == 0 and step + 1 < steps:
            save_checkpoint(model, bank.vocab, out)  # a usable snapshot while the run goes on
        if step % 100 == 0 or step == steps - 1:
            logger.info("step %d/%d loss %.3f logit_scale %.1f (%.0f s)", step + 1, steps, loss.item(),
                        model.logit_scale.exp().item(), time.time() - t0)
    model.eval()
    return model, bank.vocab


@torch.no_grad()
def zero_shot_accuracy(checkpoint: str, data_root: str = "", template: str = "a photo of a {}.") -> dict[str, float]:
    """Zero-shot top-1 (%) of `checkpoint` on the test split of each demo dataset (fp32, one template).

    The same arithmetic as the ZeroshotCLIP trainer with the demo config; `train.py` remains the
    reference for reported numbers.
    """
    from demo.make_data import DEMO_DATASETS, ensure_dataset
    from engine.utils import read_json

    model, preprocess = clip.load(checkpoint)
    results = {}
    for dataset_dir, spec in DEMO_DATASETS.items():
        folder = ensure_dataset(dataset_dir, data_root)
        test = read_json(os.path.join(folder, spec.split_file))["test"]
        classnames = [k.words for k in spec.classes]
        text = F.normalize(model.encode_text(clip.tokenize([template.format(c) for c in classnames])), dim=-1)
        correct = 0
        for start in range(0, len(test), 256):
            chunk = test[start : start + 256]
            from PIL import Image

            x = torch.stack([preprocess(Image.open(os.path.join(folder, "images", rel))) for rel, _, _ in chunk])
            pred = (F.normalize(model.encode_image(x), dim=-1) @ text.t()).argmax(dim=-1)
            correct += (pred == torch.tensor([label for _, label, _ in chunk])).sum().item()
        results[spec.name] = 100.0 * correct / len(test)
    return results


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="where to write the checkpoint")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images-per-class", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=250, help="also write the checkpoint every N steps")
    parser.add_argument("--no-eval", dest="eval", action="store_false", help="skip the zero-shot check at the end")
    parser.add_argument("--data-root", default="", help="demo data root for that check (default: the demo default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    model, vocab = train(args.steps, args.batch_size, args.images_per_class, args.lr, args.seed, args.out, args.save_every)
    save_checkpoint(model, vocab, args.out)
    logger.info("Wrote %s (%.1f MB) after %.0f s", args.out, os.path.getsize(args.out) / 2**20, time.time() - start)
    if args.eval:
        for name, acc in zero_shot_accuracy(args.out, args.data_root).items():
            logger.info("zero-shot top-1 on %s test: %.1f%%", name, acc)
    return args.out


if __name__ == "__main__":
    main()
