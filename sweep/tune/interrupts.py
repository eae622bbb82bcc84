"""Ctrl-C and SIGTERM during a sweep: one KeyboardInterrupt in the driver's main thread, never half a write.

``sweep run`` installs :func:`handled`: the first SIGINT or SIGTERM raises ``KeyboardInterrupt`` wherever
the main thread is, so every ``finally`` on the way out runs (the lock is released, Ray is stopped);
later signals are counted and do nothing, so they cannot cut that shutdown short. Inside a
:func:`deferred` section (taking the study lock, an append to Optuna's journal, which holds a lock file
of its own) a signal waits for the end of the section and is raised there, so no lock or record is
left half-made. Outside :func:`handled` (the Python API), :func:`deferred` does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    def __init__(self) -> None:
        self.installed = False
        self.received: list[int] = []  # the signals since handled() was entered, first first
        self.depth = 0  # nesting of deferred() sections
        self.pending = False  # a signal arrived inside a deferred() section


_STATE = _State()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _STATE.received.append(signum)
    if len(_STATE.received) > 1:  # the first stops the sweep; later ones must not cut Ray's shutdown short
        return
    if _STATE.depth:
        _STATE.pending = True
        return
    raise KeyboardInterrupt


@contextmanager
def handled() -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` inside the block; yields the signals received."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield []
        return
    previous = {sig: signal.signal(sig, _on_signal) for sig in SIGNALS}
    _STATE.installed, _STATE.received, _STATE.depth, _STATE.pending = True, [], 0, False
    try:
        yield _STATE.received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _STATE.installed = False


def interrupted() -> list[int]:
    """The signals received since :func:`handled` was entered (empty outside it)."""
    return list(_STATE.received) if _STATE.installed else []


@contextmanager
def deferred() -> Iterator[None]:
    """A section an interrupt must not cut in half: a signal arriving inside is raised at its end."""
    if not _STATE.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    _STATE.depth += 1
    try:
        yield
    finally:
        _STATE.depth -= 1
        if not _STATE.depth and _STATE.pending:
            _STATE.pending = False
            raise KeyboardInterrupt
