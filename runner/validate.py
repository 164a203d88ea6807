"""Checking every job of a sweep before the first one starts, through the training script itself.

All jobs' arguments go to a temporary file, one JSON list per line, and one
``python <script> --check-commands FILE`` checks them all (trainer names, config files and keys,
grid keys, dataset names, data root, backbone, GPUs; see train.py) without loading data or
weights. The runner never imports the training code: the script is the only judge of what it accepts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from runner.config import REPO_ROOT, ConfigError
from runner.tasks import Job


class CheckError(ConfigError):
    """The jobs of a sweep would not start (or could not be checked): nothing was launched."""


@dataclass
class Problem:
    """One distinct reason why jobs of a task would not start."""

    task: str
    error: str
    command: str  # the first job that has it
    jobs: int = 1


def check_jobs(jobs: list[Job], env: dict[str, str] | None = None, python: str | None = None) -> list[Problem]:
    """Check `jobs` with their script's `--check-commands` (one subprocess per distinct script, i.e.
    normally one for the whole sweep); returns the distinct problems, in job order."""
    by_script: dict[str, list[Job]] = {}
    for job in jobs:
        by_script.setdefault(job.argv[0], []).append(job)
    problems: dict[tuple[str, str], Problem] = {}
    for script, group in by_script.items():
        for job, error in zip(group, _run_check(script, group, env, python or sys.executable)):
            if error is None:
                continue
            found = problems.get((job.task, error))
            if found is None:
                problems[job.task, error] = Problem(job.task, error, job.command())
            else:
                found.jobs += 1
    return list(problems.values())


def _run_check(script: str, jobs: list[Job], env: dict[str, str] | None, python: str) -> list[str | None]:
    fd, path = tempfile.mkstemp(prefix="runner_check_", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(j.check_argv()) + "\n" for j in jobs)
        proc = subprocess.run([python, script, "--check-commands", path], cwd=REPO_ROOT, capture_output=True,
                              text=True, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    finally:
        os.unlink(path)
    how = f"`{os.path.basename(python)} {script} --check-commands FILE`"
    answers = _parse_answers(proc.stdout)
    if proc.returncode not in (0, 2) or answers is None or len(answers) != len(jobs):
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise CheckError(
            f"Could not check the jobs before starting them: {how} exited with status {proc.returncode} and "
            f"answered {len(answers) if answers is not None else 'no valid'} of {len(jobs)} lines. runner.script "
            f"must support --check-commands (see train.py). Its output:\n{tail}"
        )
    return answers


def _parse_answers(stdout: str) -> list[str | None] | None:
    """None for a passing line, the error message for a failing one; None overall if not the protocol."""
    out: list[str | None] = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        try:
            answer = json.loads(line)
            ok = bool(answer["ok"])
        except (ValueError, KeyError, TypeError):
            return None
        out.append(None if ok else str(answer.get("error") or "failed the check (no message)"))
    return out


def format_problems(problems: list[Problem]) -> str:
    """The message for the user: every distinct problem with its task and one command that has it."""
    lines = [f"{len(problems)} problem(s) found before starting; nothing was launched:"]
    for p in problems:
        count = f" ({p.jobs} jobs)" if p.jobs > 1 else ""
        error = p.error.replace("\n", "\n    ")
        lines.append(f"- task '{p.task}'{count}: {error}\n    job: {p.command}")
    return "\n".join(lines)
