"""The sweep ledger: one SQLite file (WAL, synchronous=FULL) in the output root, written only by the runner.

``jobs`` holds the latest state of each job (keyed by its resolved command); ``attempts`` is an
append-only history of every launch, so a restart can tell what ran, and tests can count launches.
Every state change is its own committed transaction, so a SIGKILL at any moment loses at most
the change being written, never an earlier one.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

LEDGER_NAME = "runner_ledger.sqlite"

PENDING, RUNNING, DONE, FAILED, SKIPPED, INTERRUPTED = "pending", "running", "done", "failed", "skipped", "interrupted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    command TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    duration_s REAL,
    message TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    slot TEXT,
    external_id TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    exit_code INTEGER,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_key ON attempts(key);
"""


@dataclass
class JobRecord:
    key: str
    task: str
    output_dir: str
    argv: list[str]
    status: str
    attempts: int
    exit_code: int | None
    duration_s: float | None
    message: str | None


class Ledger:
    """SQLite-backed job ledger; use from one thread of one process."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def _tx(self, sql: str, args: tuple) -> int:
        cur = self.conn.execute("BEGIN IMMEDIATE")
        try:
            cur = self.conn.execute(sql, args)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return cur.lastrowid

    def get(self, key: str) -> JobRecord | None:
        row = self.conn.execute(
            "SELECT key, task, output_dir, command, status, attempts, exit_code, duration_s, message FROM jobs WHERE key=?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        return JobRecord(row[0], row[1], row[2], json.loads(row[3]), *row[4:])

    def register(self, key: str, task: str, output_dir: str, argv: list[str]) -> None:
        """Add a job as pending unless the ledger already knows it."""
        self._tx(
            "INSERT OR IGNORE INTO jobs(key, task, output_dir, command, status, attempts, updated_at) VALUES (?,?,?,?,?,0,?)",
            (key, task, output_dir, json.dumps(argv), PENDING, time.time()),
        )

    def set_status(self, key: str, status: str, exit_code: int | None = None, duration_s: float | None = None,
                   message: str | None = None) -> None:
        self._tx(
            "UPDATE jobs SET status=?, exit_code=?, duration_s=COALESCE(?, duration_s), message=?, updated_at=? WHERE key=?",
            (status, exit_code, duration_s, message, time.time(), key),
        )

    def start_attempt(self, key: str, slot: str) -> tuple[int, int]:
        """Mark the job running and log a new attempt; returns (attempt row id, attempt number this sweep)."""
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("UPDATE jobs SET status=?, attempts=attempts+1, updated_at=? WHERE key=?", (RUNNING, now, key))
            n = self.conn.execute("SELECT attempts FROM jobs WHERE key=?", (key,)).fetchone()[0]
            cur = self.conn.execute(
                "INSERT INTO attempts(key, attempt, slot, started_at, status) VALUES (?,?,?,?,?)",
                (key, n, slot, now, RUNNING),
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return int(cur.lastrowid), int(n)

    def set_external_id(self, attempt_id: int, external_id: str) -> None:
        self._tx("UPDATE attempts SET external_id=? WHERE id=?", (external_id, attempt_id))

    def finish_attempt(self, attempt_id: int, status: str, exit_code: int | None) -> None:
        self._tx("UPDATE attempts SET finished_at=?, exit_code=?, status=? WHERE id=?",
                 (time.time(), exit_code, status, attempt_id))

    def finish(self, attempt_id: int, key: str, status: str, exit_code: int | None,
               duration_s: float | None = None, message: str | None = None) -> None:
        """Close an attempt and set the job's status in ONE transaction, so a kill between the two
        can never leave a finished job looking unfinished (and make a restart run it again)."""
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("UPDATE attempts SET finished_at=?, exit_code=?, status=? WHERE id=?",
                              (now, exit_code, status, attempt_id))
            self.conn.execute(
                "UPDATE jobs SET status=?, exit_code=?, duration_s=COALESCE(?, duration_s), message=?, updated_at=? "
                "WHERE key=?",
                (status, exit_code, duration_s, message, now, key),
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def reset_attempts(self, key: str) -> None:
        """A new sweep gives a previously failed job its full retry budget again."""
        self._tx("UPDATE jobs SET attempts=0 WHERE key=?", (key,))

    def last_attempt(self, key: str) -> tuple[int, float, str] | None:
        row = self.conn.execute(
            "SELECT id, started_at, status FROM attempts WHERE key=? ORDER BY id DESC LIMIT 1", (key,)
        ).fetchone()
        return None if row is None else (int(row[0]), float(row[1]), str(row[2]))

    def attempt_counts(self) -> dict[str, int]:
        """How many times each job was launched, over the ledger's whole history."""
        return dict(self.conn.execute("SELECT key, COUNT(*) FROM attempts GROUP BY key").fetchall())

    def attempts_of(self, key: str) -> list[tuple[int, str, int | None]]:
        return [(int(a), str(s), e) for a, s, e in self.conn.execute(
            "SELECT attempt, status, exit_code FROM attempts WHERE key=? ORDER BY id", (key,)).fetchall()]

    def forget_task(self, task: str) -> None:
        """Drop a task's rows (used when the user asks to remove its output tree)."""
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("DELETE FROM attempts WHERE key IN (SELECT key FROM jobs WHERE task=?)", (task,))
        self.conn.execute("DELETE FROM jobs WHERE task=?", (task,))
        self.conn.execute("COMMIT")

    def records(self, status: str | None = None) -> list[JobRecord]:
        """Every job the ledger knows (with `status`, only those), in no particular order."""
        sql = "SELECT key, task, output_dir, command, status, attempts, exit_code, duration_s, message FROM jobs"
        rows = self.conn.execute(sql + " WHERE status=?", (status,)) if status else self.conn.execute(sql)
        return [JobRecord(r[0], r[1], r[2], json.loads(r[3]), *r[4:]) for r in rows.fetchall()]

    def statuses(self, task: str | None = None) -> dict[str, str]:
        sql, args = ("SELECT key, status FROM jobs", ()) if task is None else ("SELECT key, status FROM jobs WHERE task=?", (task,))
        return dict(self.conn.execute(sql, args).fetchall())
