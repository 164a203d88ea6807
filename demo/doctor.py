"""The dataset doctor with the demo datasets registered (the `datasets` package does not know them).

    python -m demo.doctor --root ~/.cache/clip_adapt/demo_data --dataset DemoShapes DemoShapesSketch DemoSymbols

Takes the same arguments as `python -m datasets.doctor`.
"""
from __future__ import annotations

import sys
from typing import Sequence

import demo  # noqa: F401  (registers the demo datasets)
from datasets import doctor


def main(argv: Sequence[str] | None = None) -> int:
    return doctor.main(argv, prog="python -m demo.doctor")


if __name__ == "__main__":
    sys.exit(main())
