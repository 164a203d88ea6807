"""The registry of published numbers (`reproduce/published.csv`): loading, checking, selecting.

One row per published number. Columns:

- ``id``: unique, ``<method>-<protocol>-<dataset>-<metric>[-<K>shot][-<backbone>]-<source>``;
- ``kind``: ``published`` (a paper's number) or ``demo`` (our own number on the demo world);
- ``method``, ``trainer`` (the registered trainer that runs it), ``recipe`` (the configs.py task
  whose settings reproduce it);
- ``protocol``: ``b2n``, ``xd``, ``dg``, ``fewshot`` or ``vtab``;
- ``dataset``: a configs/datasets name, or ``average`` (b2n / few-shot: the 11 datasets; vtab: its
  tasks), ``average_xd`` (the 10 cross-dataset targets), ``average_dg`` (the 4 ImageNet variants);
- ``backbone``, ``shots`` (0: no few-shot sampling), ``seeds`` (space separated);
- ``metric``: ``base``, ``new``, ``H`` (harmonic mean of the base and new means) or ``acc`` (top-1);
- ``value`` (percent), ``tolerance`` (accuracy points either way that still count as reproduced);
- ``source``: paper and table; ``opts``: extra KEY VALUE settings of the run (demo rows); ``note``.

Two papers that report different numbers for the same setting have two rows, each with its source.
"""
from __future__ import annotations

import fnmatch
import os
import shlex
from dataclasses import dataclass

import pandas as pd

from engine.errors import ConfigValueError, MissingFileError

__all__ = ["Row", "REGISTRY_PATH", "load_registry", "check_registry", "select_rows", "PROTOCOLS", "METRICS"]

REGISTRY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published.csv")
COLUMNS = ["id", "kind", "method", "trainer", "recipe", "protocol", "dataset", "backbone", "shots", "seeds",
           "metric", "value", "tolerance", "source", "opts", "note"]
PROTOCOLS = ("b2n", "xd", "dg", "fewshot", "vtab")
METRICS = ("base", "new", "H", "acc")
KINDS = ("published", "demo")
AVERAGES = ("average", "average_xd", "average_dg")
# The runner mode (configs.py train.mode) each protocol runs in.
MODE_OF = {"b2n": "b2n", "xd": "xd", "dg": "xd", "fewshot": "all", "vtab": "all"}


@dataclass(frozen=True)
class Row:
    """One published (or demo) number and how to reproduce it."""

    id: str
    kind: str
    method: str
    trainer: str
    recipe: str
    protocol: str
    dataset: str
    backbone: str
    shots: int
    seeds: tuple[int, ...]
    metric: str
    value: float
    tolerance: float
    source: str
    opts: tuple[str, ...] = ()
    note: str = ""

    @property
    def mode(self) -> str:
        return MODE_OF[self.protocol]

    @property
    def is_average(self) -> bool:
        return self.dataset in AVERAGES


def _row_of(record: dict, where: str) -> Row:
    try:
        return Row(
            id=record["id"], kind=record["kind"], method=record["method"], trainer=record["trainer"],
            recipe=record["recipe"], protocol=record["protocol"], dataset=record["dataset"],
            backbone=record["backbone"], shots=int(record["shots"]),
            seeds=tuple(int(s) for s in str(record["seeds"]).split()), metric=record["metric"],
            value=float(record["value"]), tolerance=float(record["tolerance"]), source=record["source"],
            opts=tuple(shlex.split(record["opts"])), note=record["note"],
        )
    except (TypeError, ValueError) as e:
        raise ConfigValueError(f"{where}: row {record.get('id')!r} is malformed ({e}).") from None


def load_registry(path: str = REGISTRY_PATH) -> list[Row]:
    """Every row of the registry file, checked (`check_registry`)."""
    if not os.path.isfile(path):
        raise MissingFileError(f"Registry file not found: {path}.")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigValueError(f"{path}: missing column(s) {missing}; expected {COLUMNS}.")
    rows = [_row_of(r, path) for r in frame.to_dict("records")]
    problems = check_registry(rows)
    if problems:
        raise ConfigValueError(f"{path} has {len(problems)} problem(s):\n" + "\n".join(f"- {p}" for p in problems[:20]))
    return rows


def check_registry(rows: list[Row]) -> list[str]:
    """What is wrong with the rows (empty when all are well formed)."""
    problems = []
    seen: set[str] = set()
    for r in rows:
        where = f"row {r.id or '(no id)'}"
        if not r.id or r.id in seen:
            problems.append(f"{where}: the id is empty or repeated")
        seen.add(r.id)
        for name in ("method", "trainer", "recipe", "dataset", "backbone", "source"):
            if not getattr(r, name).strip():
                problems.append(f"{where}: {name} is empty")
        checks = [
            (r.kind in KINDS, f"kind {r.kind!r} is not one of {KINDS}"),
            (r.protocol in PROTOCOLS, f"protocol {r.protocol!r} is not one of {PROTOCOLS}"),
            (r.metric in METRICS, f"metric {r.metric!r} is not one of {METRICS}"),
            ((r.metric in ("base", "new", "H")) == (r.protocol == "b2n"), "base/new/H go with b2n, acc with the others"),
            (0.0 <= r.value <= 100.0, f"value {r.value} is not a percentage"),
            (0.0 < r.tolerance <= 10.0, f"tolerance {r.tolerance} is not in (0, 10] points"),
            (r.shots >= 0 and len(r.seeds) > 0, "shots must be >= 0 and seeds non-empty"),
            (len(r.opts) % 2 == 0, "opts must be KEY VALUE pairs"),
            (r.kind != "demo" or "demo" in r.source.lower(), "a demo row's source must say it is a demo measurement"),
        ]
        problems += [f"{where}: {message}" for ok, message in checks if not ok]
    return problems


def select_rows(rows: list[Row], patterns: list[str]) -> list[Row]:
    """The rows whose id matches one of `patterns` (exact ids or shell-style wildcards), in registry
    order; a pattern that matches nothing is a user error naming close ids."""
    chosen: dict[str, Row] = {}
    for pattern in patterns:
        hits = [r for r in rows if fnmatch.fnmatchcase(r.id, pattern)]
        if not hits:
            import difflib

            close = difflib.get_close_matches(pattern, [r.id for r in rows], n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigValueError(
                f"No registry row matches {pattern!r}.{hint} `python -m reproduce list` shows the ids "
                "(wildcards such as 'coop-b2n-*-skiptuning' select several)."
            )
        for r in hits:
            chosen.setdefault(r.id, r)
    return [r for r in rows if r.id in chosen]


def filter_rows(rows: list[Row], method: str | None = None, protocol: str | None = None) -> list[Row]:
    """Rows of `method` (case-insensitive; method or trainer name) and `protocol`."""
    if protocol and protocol not in PROTOCOLS:
        raise ConfigValueError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}.")
    out = rows
    if method:
        m = method.lower()
        out = [r for r in out if m in (r.method.lower(), r.trainer.lower())]
        if not out:
            known = sorted({r.method for r in rows})
            raise ConfigValueError(f"--method {method!r}: no rows. Methods in the registry: {', '.join(known)}.")
    if protocol:
        out = [r for r in out if r.protocol == protocol]
    return out
