"""Typed errors. Every user-facing failure is a ``SweepError`` whose message is one line
that names the bad value and what is allowed; the CLI prints it and exits with status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SweepError(ValueError):
    """Bad input from the user: a flag, a file, a config value. One line, no traceback."""

    def __init__(self, message: str) -> None:
        # one line, always: a multi-line message breaks the CLI's contract
        super().__init__(" ".join(str(message).split()))


class DataError(SweepError):
    """A data file is missing, truncated or not what its name says."""


class ConfigError(SweepError):
    """A configuration value, search-space file or chosen.yaml is invalid."""


class ResultsError(SweepError):
    """A results folder or Parquet file is missing, truncated or of another schema."""


def did_you_mean(value: object, allowed: Iterable[str]) -> str:
    """`` (did you mean 'task'?)`` for a misspelt name close to one of ``allowed`` (difflib); ``""`` otherwise."""
    close = difflib.get_close_matches(str(value), list(allowed), n=2, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(name) for name in close)}?)"
