"""Which rows were reproduced here: a small CSV (row id, our number, date, within tolerance, where).

Written atomically (temp file + os.replace); a newer measurement of a row replaces the older one.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import asdict, dataclass

import pandas as pd

from engine.utils import atomic_write_bytes
from reproduce.compare import Comparison

__all__ = ["Reproduced", "DEFAULT_RECORD", "read_record", "update_record"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RECORD = os.path.join(REPO_ROOT, "results", "reproduce", "reproduced.csv")
FIELDS = ["id", "ours", "std", "seeds", "within", "date", "results"]


@dataclass
class Reproduced:
    id: str
    ours: float
    std: float | None
    seeds: str
    within: bool
    date: str
    results: str  # a folder holding the runs' results.json files


def read_record(path: str = DEFAULT_RECORD) -> dict[str, Reproduced]:
    if not os.path.isfile(path):
        return {}
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = {}
    for r in frame.to_dict("records"):
        out[r["id"]] = Reproduced(r["id"], float(r["ours"]), float(r["std"]) if r["std"] else None, r["seeds"],
                                  r["within"] == "True", r["date"], r["results"])
    return out


def update_record(comparisons: list[Comparison], results: str, path: str = DEFAULT_RECORD) -> int:
    """Add the rows that got a number to the record; returns how many."""
    record = read_record(path)
    today = datetime.date.today().isoformat()
    added = 0
    for c in comparisons:
        if c.ours is None:
            continue
        record[c.row.id] = Reproduced(c.row.id, round(c.ours.mean, 4),
                                      None if c.ours.std is None else round(c.ours.std, 4),
                                      " ".join(map(str, c.ours.seeds)), bool(c.within), today,
                                      os.path.abspath(results))
        added += 1
    frame = pd.DataFrame([asdict(r) for r in record.values()], columns=FIELDS)
    atomic_write_bytes(path, frame.to_csv(index=False).encode("utf-8"))
    return added
