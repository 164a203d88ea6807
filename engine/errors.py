"""User mistakes as their own exception types, and the command-line guard that reports them.

A *user error* is a mistake in what the user asked for: an unknown trainer, config key or value,
a missing data folder or split file, a missing or corrupt checkpoint, a GPU that does not exist.
Its message names the problem and the fix. Command-line entry points (`train.py`,
`python -m datasets.doctor`, `python -m benchmarks.train_step`) print it as one line,
``error: <message>``, without a traceback, and exit with status 2 (argparse's status for usage
errors). Anything else is unexpected and keeps its traceback.

The concrete classes also derive from the built-in type a caller would catch (`ValueError`,
`FileNotFoundError`, ...), so code that handles those keeps working.
"""
from __future__ import annotations

import sys
from typing import Callable

__all__ = [
    "UserError",
    "ConfigValueError",
    "MissingFileError",
    "USAGE_EXIT_CODE",
    "format_user_error",
    "run_cli",
]

USAGE_EXIT_CODE = 2  # as argparse; the runner does not retry a job that exits with it


class UserError(Exception):
    """A mistake in the user's input; the message says what is wrong and how to fix it."""

    def __str__(self) -> str:  # KeyError-derived subclasses would repr() the message otherwise
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigValueError(UserError, ValueError):
    """A config value (or flag) that cannot work: unknown name, out of range, wrong combination."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user pointed at (or the run needs) does not exist."""


def format_user_error(exc: BaseException) -> str:
    """One line per paragraph of the message, prefixed with ``error: ``."""
    return f"error: {exc}"


def run_cli(
    main: Callable[[], int | None],
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run `main`; a user error (`UserError` or one of `user_errors`) becomes one message on stderr
    and exit status 2. Other exceptions propagate with their traceback. Returns main's exit status."""
    try:
        status = main()
    except (UserError, *user_errors) as e:  # type: ignore[misc]
        print(format_user_error(e), file=sys.stderr)
        return USAGE_EXIT_CODE
    return 0 if status is None else int(status)
