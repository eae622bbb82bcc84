"""The live status of a sweep, in the style of Ray Tune's own: trials done, running and pending of N, the
time so far and an estimate of the rest, and the best front so far.

On a terminal it is one line rewritten in place (the per-trial table scrolls above it); when the output
is a file or a pipe (a job log, CI) it is a plain line after each finished trial and every
:data:`HEARTBEAT_S` seconds while nothing finishes, so a log shows that the sweep is alive. Ray-free:
the Tune callback (:mod:`sweep.tune.sink`) tells it what happened.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

HEARTBEAT_S = 30.0  # a plain line at least this often while trials run, when the output is not a terminal
REFRESH_S = 1.0  # the in-place line's refresh on a terminal
_CLEAR = "\r\x1b[K"  # back to the line's start, erase it


def clock_text(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def front_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """The validation front of the finished search trials so far: its size and its two ends."""
    points = []
    for row in rows:
        if row.get("role") != "search" or row.get("status") != "finished":
            continue
        x, y = row.get("val_stability_mean"), row.get("val_plasticity_mean")
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(x) and math.isfinite(y):
            points.append((float(x), float(y)))
    if not points:
        return "front: none yet"
    front = sorted({p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)})
    if len(front) == 1:
        return f"front: 1 trial, stability {100 * front[0][0]:.1f}%, plasticity {100 * front[0][1]:.1f}%"
    (low_x, high_y), (high_x, low_y) = front[0], front[-1]
    return (f"front: {len(front)} trials, stability {100 * low_x:.1f}-{100 * high_x:.1f}%,"
            f" plasticity {100 * high_y:.1f}-{100 * low_y:.1f}%")


class Progress:
    """What a sweep has done so far, shown as one status line.

    Args:
        total: Trials the study is to hold when done (references included).
        rows: The rows the study already holds (a resumed study's count as done).
        stream: Where to write (default: stdout).
        tty: Rewrite the line in place; default: whether ``stream`` is a terminal.
        clock: Seconds, monotonic (a test passes its own).
        enabled: False writes nothing (``sweep run --quiet``).
    """

    def __init__(self, total: int, rows: Iterable[Mapping[str, Any]] = (), stream: TextIO | None = None,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic, enabled: bool = True) -> None:
        self.total = total
        self.rows: list[Mapping[str, Any]] = list(rows)
        self.before = len(self.rows)  # done in an earlier session: not part of this one's rate
        self._stream = stream  # None: sys.stdout as it is when written to (Ray pickles the callback holding this)
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.started_at = clock()
        self.running: set[str] = set()
        self.enabled = enabled
        self.shown_at = -math.inf
        self.on_screen = False  # the in-place line is drawn and not yet ended

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    # --- events, from the Tune callback
    def trial_started(self, trial_id: str) -> None:
        self.running.add(trial_id)
        self.show(force=self.tty)

    def trial_stopped(self, trial_id: str) -> None:
        self.running.discard(trial_id)

    def trial_recorded(self, row: Mapping[str, Any], printed: Callable[[], None] | None = None) -> None:
        """A trial's row is in the study; ``printed`` writes its table line (above the status line)."""
        self.running.discard(str(row.get("trial_id")))
        self.rows.append(row)
        if printed is not None:
            self.above(printed)
        self.show(force=True)

    def tick(self) -> None:
        """Called often (after each step of Tune's loop): redraws when due."""
        self.show()

    def phase_ended(self) -> None:
        """A Tune run ended (the references, then the search): the status line becomes a line of its own."""
        if self.enabled and self.tty and self.on_screen:
            self.stream.write("\n")
            self.stream.flush()
        self.on_screen = False

    # --- drawing
    def above(self, write: Callable[[], None]) -> None:
        """Write something (a table row) so that it scrolls above the in-place status line."""
        if self.enabled and self.tty and self.on_screen:
            self.stream.write(_CLEAR)
            self.on_screen = False
        write()

    def line(self) -> str:
        done = len(self.rows)
        running = len(self.running)
        pending = max(self.total - done - running, 0)
        elapsed = self.clock() - self.started_at
        here = done - self.before
        left = max(self.total - done, 0)
        if left == 0:
            estimate = "done"
        elif here > 0:
            estimate = f"about {clock_text(elapsed / here * left)} left"
        else:
            estimate = "estimate after the first trial"
        pruned = sum(1 for row in self.rows if row.get("status") == "pruned")
        errored = sum(1 for row in self.rows if row.get("status") not in ("finished", "pruned"))
        notes = [f"{pruned} pruned"] * bool(pruned) + [f"{errored} errored or diverged"] * bool(errored)
        failed = f" ({', '.join(notes)})" if notes else ""
        return (f"trials: {done}/{self.total} done{failed}, {running} running, {pending} pending | "
                f"{clock_text(elapsed)} elapsed, {estimate} | {front_text(self.rows)}")

    def show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self.clock()
        due = now - self.shown_at >= (REFRESH_S if self.tty else HEARTBEAT_S)
        if not (force or due):
            return
        self.shown_at = now
        text = self.line()
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns - 1
            self.stream.write(_CLEAR + (text if len(text) <= width else text[: max(width - 3, 0)] + "..."))
            self.on_screen = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
