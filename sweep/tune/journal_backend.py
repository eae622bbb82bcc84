"""Optuna's journal file, appended so that an interrupt never cuts an append in half.

An append takes Optuna's lock file (``optuna.journal.lock``), writes and fsyncs the records, and removes
the lock. A Ctrl-C or SIGTERM raised in the middle would leave the lock behind (the next resume waits
out Optuna's 30-second grace period) or half a record; inside :func:`sweep.tune.interrupts.deferred` it
is raised when the append is done. A module of its own, at module level: Tune pickles the searcher, and
with it this class, by reference.
"""

from __future__ import annotations

from typing import Any

from optuna.storages.journal import JournalFileBackend

from sweep.tune.interrupts import deferred


class UninterruptedBackend(JournalFileBackend):
    """A ``JournalFileBackend`` whose appends an interrupt waits for."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with deferred():
            super().append_logs(logs)
