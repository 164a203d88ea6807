"""Why two runs differ: the entries of their provenance cards that are not equal, likeliest cause first.

The order is the order in which a difference most often moves the number: the weights and the
data the model saw (backbone file, few-shot sample, split, class names, prompts), then how images
were prepared (transforms), then the settings (config keys), which checkpoint was evaluated, the
code (git commit), and last the libraries and the device.
"""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigValueError, MissingFileError
from engine.provenance import CARD_KEY, LOCATION_KEYS

__all__ = ["Difference", "load_run", "card_differences", "format_differences"]


@dataclass
class Difference:
    what: str
    a: str
    b: str


def load_run(path: str) -> dict:
    """The results.json of a run folder (or the file itself), which must carry a provenance card."""
    file = os.path.join(path, "results.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise MissingFileError(f"No results.json at {path}: pass a run's output folder or its results.json.")
    try:
        with open(file) as f:
            record = json.load(f)
    except ValueError as e:
        raise ConfigValueError(f"{file} is not valid JSON ({e}).") from None
    if CARD_KEY not in record:
        raise ConfigValueError(f"{file} has no provenance card (written before train.py recorded one); run it again.")
    return record


def _get(card: dict, dotted: str) -> Any:
    node: Any = card
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return json.dumps(value) if not isinstance(value, str) or not value else value


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


# (card entry, what it is), likeliest cause first; config keys and transforms are expanded in between.
_DATA_ENTRIES = [
    ("backbone.sha256", "backbone weights (SHA-256)"),
    ("data.fewshot_sample.sha256", "few-shot sample"),
    ("data.split_sha256", "split file"),
    ("data.classnames_sha256", "class names"),
    ("prompts.sha256", "prompt texts"),
]
_LATER_ENTRIES = [
    ("checkpoint.evaluated", "checkpoint evaluated"),
    ("checkpoint.epoch", "checkpoint epoch"),
    ("checkpoint.trained_on", "model trained on"),
    ("git.commit", "code (git commit)"),
    ("git.dirty", "uncommitted changes"),
]


def _transform_difference(kind: str, a: str | None, b: str | None) -> Difference | None:
    if a == b:
        return None
    lines_a, lines_b = (a or "").splitlines(), (b or "").splitlines()
    removed = [line[2:].strip() for line in difflib.ndiff(lines_a, lines_b) if line.startswith("- ")]
    added = [line[2:].strip() for line in difflib.ndiff(lines_a, lines_b) if line.startswith("+ ")]
    return Difference(f"{kind} transforms", "; ".join(removed) or "(nothing)", "; ".join(added) or "(nothing)")


def card_differences(run_a: dict, run_b: dict) -> list[Difference]:
    """The unequal card entries of two runs (results.json records), likeliest cause first."""
    a, b = run_a[CARD_KEY], run_b[CARD_KEY]
    out: list[Difference] = []
    for dotted, what in _DATA_ENTRIES:
        if _get(a, dotted) != _get(b, dotted):
            out.append(Difference(what, _short(_get(a, dotted)), _short(_get(b, dotted))))
    for kind in ("train", "test"):
        d = _transform_difference(kind, _get(a, f"transforms.{kind}"), _get(b, f"transforms.{kind}"))
        if d is not None:
            out.append(d)
    flat_a = _flatten(_get(a, "config.resolved") or {})
    flat_b = _flatten(_get(b, "config.resolved") or {})
    for key in sorted(set(flat_a) | set(flat_b)):
        if key in LOCATION_KEYS:
            continue
        if flat_a.get(key, "(absent)") != flat_b.get(key, "(absent)"):
            out.append(Difference(f"config {key}", _short(flat_a.get(key, "(absent)")),
                                  _short(flat_b.get(key, "(absent)"))))
    for dotted, what in _LATER_ENTRIES:
        if _get(a, dotted) != _get(b, dotted):
            out.append(Difference(what, _short(_get(a, dotted)), _short(_get(b, dotted))))
    for section in ("versions", "device"):
        sa, sb = _get(a, section) or {}, _get(b, section) or {}
        for key in sorted(set(sa) | set(sb)):
            if sa.get(key) != sb.get(key):
                out.append(Difference(f"{section} {key}", _short(sa.get(key)), _short(sb.get(key))))
    return out


def format_differences(path_a: str, path_b: str, run_a: dict, run_b: dict, diffs: list[Difference]) -> str:
    lines = [f"A: {path_a}  accuracy {run_a.get('accuracy', float('nan')):.2f}",
             f"B: {path_b}  accuracy {run_b.get('accuracy', float('nan')):.2f}"]
    if not diffs:
        lines.append("The provenance cards are equal (apart from output locations): the runs should agree up to "
                     "nondeterministic kernels.")
        return "\n".join(lines)
    lines.append(f"{len(diffs)} difference(s), likeliest cause first:")
    for i, d in enumerate(diffs, 1):
        lines.append(f"{i:3d}. {d.what}: A {d.a} | B {d.b}")
    return "\n".join(lines)
