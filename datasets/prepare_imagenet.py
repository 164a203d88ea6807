"""ImageNet preparation helpers (command line).

    python -m datasets.prepare_imagenet --write-classnames $DATA [--force] [--also-variants]
    python -m datasets.prepare_imagenet --sort-val $DATA --val-labels LOC_val_solution.csv

Kept apart from `datasets/imagenet.py` so that running it does not import (and register) the
dataset class a second time as `__main__`.
"""
from __future__ import annotations

import argparse
import sys

from datasets.imagenet import sort_val_into_folders, write_classnames
from engine.errors import run_cli


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.prepare_imagenet", description="ImageNet preparation helpers.")
    parser.add_argument("--write-classnames", metavar="ROOT", help="write ROOT/imagenet/classnames.txt")
    parser.add_argument("--force", action="store_true", help="overwrite an existing classnames.txt")
    parser.add_argument("--also-variants", action="store_true",
                        help="copy classnames.txt into the ImageNet variant folders found under ROOT")
    parser.add_argument("--sort-val", metavar="ROOT", help="sort ROOT/imagenet/images/val into wnid folders")
    parser.add_argument("--val-labels", metavar="FILE",
                        help="LOC_val_solution.csv (Kaggle) or a text file of '<image> <wnid>' lines")
    args = parser.parse_args(argv)
    if not args.write_classnames and not args.sort_val:
        parser.error("nothing to do: pass --write-classnames ROOT and/or --sort-val ROOT --val-labels FILE")
    if args.sort_val:
        if not args.val_labels:
            parser.error("--sort-val needs --val-labels FILE")
        moved = sort_val_into_folders(args.sort_val, args.val_labels)
        print(f"Moved {moved} val images into class folders.")
    if args.write_classnames:
        for path in write_classnames(args.write_classnames, force=args.force, also_variants=args.also_variants):
            print(f"Wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; a bad folder or labels file is one `error:` line and exit status 2.

    OSError counts as a user error here: these helpers only read and move the user's own files
    (a missing labels file, no permission to write classnames.txt)."""
    return run_cli(lambda: _main(argv), user_errors=(OSError,))


if __name__ == "__main__":
    sys.exit(main())
