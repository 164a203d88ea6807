"""Write the demo datasets to disk in the layout of a real dataset (image folders + a CoOp split file).

    python -m demo.make_data [--root DIR] [--dataset demo_shapes ...] [--force]

Layout of each dataset under the root::

    <dataset_dir>/
      images/<color>_<shape>/<color>_<shape>_<NNNN>.png   (32x32 RGB PNG)
      split_<DatasetName>.json                           {"train"|"val"|"test": [[rel_path, label, classname], ...]}
      demo_world.json                                    generator version and counts

A dataset is written to a temporary folder next to its final place and renamed into place when
complete, so an interrupted or concurrent generation never leaves a half-written dataset.
Regeneration is byte-identical: images are pure functions of their seeds and PNG encoding is fixed.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import tempfile
import time

from PIL import Image

from demo.world import DATASET_LIGHT, DEMO_DATASETS, DemoSpec, render_class_image

__all__ = [
    "WORLD_VERSION",
    "DemoSpec",
    "DEMO_DATASETS",
    "DEMO_DATA_ENV",
    "default_demo_root",
    "resolve_demo_root",
    "write_dataset",
    "ensure_dataset",
    "main",
]

logger = logging.getLogger(__name__)

# Bump when the generator's output changes; datasets written by another version are refused.
WORLD_VERSION = 2
DEMO_DATA_ENV = "CLIP_ADAPT_DEMO_DATA"
INFO_FILE = "demo_world.json"


def default_demo_root() -> str:
    """``$CLIP_ADAPT_DEMO_DATA`` if set, else ``~/.cache/clip_adapt/demo_data``."""
    return os.path.expanduser(os.environ.get(DEMO_DATA_ENV) or os.path.join("~", ".cache", "clip_adapt", "demo_data"))


def resolve_demo_root(root: str = "") -> str:
    """The absolute data root: `root` (DATASET.ROOT / --root) when given, else `default_demo_root()`."""
    return os.path.abspath(os.path.expanduser(root or default_demo_root()))


def _png_bytes(array) -> bytes:
    # Fixed encoder settings and no metadata chunks: the bytes depend on the pixels only.
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


def _write_tree(spec: DemoSpec, target: str) -> None:
    """Write the images, split file and info file of `spec` into the (empty) folder `target`."""
    classes = spec.classes
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    per_class = spec.n_train + spec.n_val + spec.n_test
    for label, klass in enumerate(classes):
        folder = os.path.join(target, "images", klass.name)
        os.makedirs(folder)
        for index in range(per_class):
            name = f"{klass.name}_{index:04d}.png"
            pixels = render_class_image(spec.dataset_dir, classes, label, index, spec.style, light=spec.light)
            with open(os.path.join(folder, name), "wb") as f:
                f.write(_png_bytes(pixels))
            part = "train" if index < spec.n_train else "val" if index < spec.n_train + spec.n_val else "test"
            split[part].append([f"{klass.name}/{name}", label, klass.words])
    # Same JSON formatting as DatasetBase.save_split (engine.utils.write_json).
    with open(os.path.join(target, spec.split_file), "w") as f:
        f.write(json.dumps(split, indent=4, separators=(",", ": ")))
    info = {"world_version": WORLD_VERSION, "dataset": spec.name, "style": spec.style, **spec.counts}
    if spec.light != DATASET_LIGHT:
        # Only a variant says so: the standard datasets stay byte-identical to earlier writes.
        info["light"] = None if spec.light is None else list(spec.light)
    with open(os.path.join(target, INFO_FILE), "w") as f:
        f.write(json.dumps(info, indent=4, sort_keys=True))


def write_dataset(spec: DemoSpec, root: str, force: bool = False) -> str:
    """Generate `spec` into `<root>/<spec.dataset_dir>` atomically; return that folder.

    An existing folder is kept unless `force` (then it is replaced, still atomically).
    """
    root = os.path.abspath(root)
    final = os.path.join(root, spec.dataset_dir)
    if os.path.isdir(final) and not force:
        return final
    os.makedirs(root, exist_ok=True)
    start = time.time()
    tmp = tempfile.mkdtemp(prefix=f".{spec.dataset_dir}.tmp-", dir=root)
    try:
        _write_tree(spec, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is ordinary data
        if force and os.path.isdir(final):
            old = tempfile.mkdtemp(prefix=f".{spec.dataset_dir}.old-", dir=root)
            os.rename(final, os.path.join(old, "x"))
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, final)
            except OSError:
                if not os.path.isdir(final):
                    raise
                # Another process finished the same dataset first: theirs is byte-identical.
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Generated demo dataset %s in %s (%.1f s)", spec.name, final, time.time() - start)
    return final


def check_version(dataset_dir: str) -> None:
    """Raise if `dataset_dir` was written by another generator version (or is not a demo dataset)."""
    path = os.path.join(dataset_dir, INFO_FILE)
    try:
        with open(path) as f:
            version = json.load(f).get("world_version")
    except (OSError, ValueError, AttributeError) as exc:
        raise RuntimeError(
            f"{dataset_dir} has no readable {INFO_FILE} ({exc}); it was not written by demo.make_data. "
            f"Delete the folder and it is regenerated on first use (or run `python -m demo.make_data`)."
        ) from exc
    if version != WORLD_VERSION:
        raise RuntimeError(
            f"{dataset_dir} was generated by demo world version {version}, this code writes version "
            f"{WORLD_VERSION}. Delete the folder and it is regenerated on first use, or run "
            f"`python -m demo.make_data --force --root {os.path.dirname(dataset_dir)}`."
        )


def ensure_dataset(dataset_dir_name: str, root: str = "") -> str:
    """`<root>/<dataset_dir_name>`, generated first if missing; checks the generator version."""
    if dataset_dir_name not in DEMO_DATASETS:
        raise KeyError(f"Unknown demo dataset {dataset_dir_name!r}; expected one of {sorted(DEMO_DATASETS)}.")
    root = resolve_demo_root(root)
    final = os.path.join(root, dataset_dir_name)
    if not os.path.isdir(final):
        logger.info("Demo dataset %s not found under %s: generating it (a few seconds)", dataset_dir_name, root)
        write_dataset(DEMO_DATASETS[dataset_dir_name], root)
    check_version(final)
    return final


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description="Write the demo datasets (deterministic, byte-identical).")
    parser.add_argument("--root", default="", help=f"data root (default: ${DEMO_DATA_ENV} or ~/.cache/clip_adapt/demo_data)")
    parser.add_argument("--dataset", nargs="+", choices=sorted(DEMO_DATASETS), default=sorted(DEMO_DATASETS),
                        help="which datasets (default: all)")
    parser.add_argument("--force", action="store_true", help="regenerate datasets that already exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = resolve_demo_root(args.root)
    out = []
    for name in args.dataset:
        path = write_dataset(DEMO_DATASETS[name], root, force=args.force)
        logger.info("%s: %s %s", DEMO_DATASETS[name].name, path, DEMO_DATASETS[name].counts)
        out.append(path)
    return out


if __name__ == "__main__":
    main()
