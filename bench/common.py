"""What every row shares: settings, the row record, timing with device syncs, the data root."""

from __future__ import annotations

import gzip
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"  # this project's checkout sits next to the shared data
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Settings:
    device: str = "cpu"  # cpu | cuda: where trials, the reference and the Fisher run
    quick: bool = False  # smoke mode: subsampled data and tiny sweeps, numbers only (not comparable)
    data_root: Path = SHARED_DATA  # torchvision layout: <root>/MNIST/raw/*-ubyte[.gz]
    work_dir: Path = REPO / "bench" / "out" / "work"  # unpacked raw files, temporary studies
    threads: int = 1  # torch CPU threads of every timed run: what one sweep trial gets (cpus_per_trial=1)
    keep: bool = False  # keep the temporary studies for inspection
    all_cores: bool = True  # the trial rows also time torch on every core (details), beside the one-thread runs


REPORTED = "reported"  # a Row's target_op for a figure with no target


@dataclass
class Row:
    """One line of the table. ``ratio`` is the number the target is checked against."""

    row: str
    metric: str  # what ``ours`` and ``reference`` measure
    unit: str  # of ours and reference
    ours: float | None
    reference: float | None
    ratio: float | None
    ratio_label: str  # what ``ratio`` is, e.g. "reference / ours"
    target_op: str  # ">=", "<=", "<" or "=="; REPORTED: a figure shown beside its bound, never pass or fail
    target_value: float
    target: str = ""  # human-readable target, e.g. "<= 1.15x"
    checked: float | None = None  # the number held against the target when it is not ``ratio``
    also_required: bool | None = None  # a condition beside the number, e.g. identical results
    passed: bool | None = None  # None: not measured
    status: str = "ok"  # ok | not available | error
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        value = self.ratio if self.checked is None else self.checked
        if self.passed is None and value is not None and math.isfinite(value) and self.target_op != REPORTED:
            ok = {">=": value >= self.target_value, "<=": value <= self.target_value, "<": value < self.target_value,
                  "==": value == self.target_value}[self.target_op]
            self.passed = bool(ok and self.also_required is not False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pass"] = data.pop("passed")
        return data


def unavailable(row: str, metric: str, unit: str, ratio_label: str, target_op: str, target_value: float,
                target: str, reason: str, status: str = "not available") -> Row:
    return Row(row, metric, unit, None, None, None, ratio_label, target_op, target_value, target, status=status,
               details={"reason": reason})


def sync(device: str | torch.device) -> None:
    """Wait for queued device work, so a timer measures work done, not work launched."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def work_clock(settings: Settings) -> Callable[[], float]:
    """The clock of the rows that hold the package against its own floor, both sides in this process.

    On the CPU with one torch thread: this thread's CPU time (``time.thread_time``). On a machine shared
    with other jobs a process waits for a core for as long as they make it, and the waits fall unevenly
    on two sides timed one after the other; CPU time counts the work done, which is what trial / floor
    compares. (Cache and memory-bandwidth contention still slow both sides somewhat.) With several
    threads or on a GPU, the wall clock: this thread's CPU time would miss the other threads' work or
    the device's.
    """
    if torch.device(settings.device).type == "cpu" and settings.threads == 1:
        return time.thread_time
    return time.perf_counter


@contextmanager
def timed(device: str | torch.device, into: dict[str, float], key: str) -> Iterator[None]:
    sync(device)
    started = time.perf_counter()
    try:
        yield
    finally:
        sync(device)
        into[key] = time.perf_counter() - started


def default_data_root() -> Path:
    """$SWEEP_DATA_ROOT, else the shared data beside this checkout, else ./data (the package's default)."""
    env = os.environ.get("SWEEP_DATA_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    return SHARED_DATA if (SHARED_DATA / "MNIST" / "raw").is_dir() else Path("data").resolve()


def torchvision_root(settings: Settings) -> Path:
    """A root where torchvision's ``MNIST(root, download=False)`` finds the *uncompressed* raw files.

    torchvision reads only ``<root>/MNIST/raw/<name>`` without ``.gz``; the shared data is gzipped
    and read-only, so the files are unpacked once into the work folder (each atomically).
    """
    source = settings.data_root / "MNIST" / "raw"
    if all((source / name).is_file() for name in RAW_FILES):
        return settings.data_root
    target = settings.work_dir / "torchvision-data" / "MNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        if (target / name).is_file():
            continue
        packed = source / f"{name}.gz"
        if not packed.is_file():
            raise FileNotFoundError(f"{packed} not found: point --data-root (or SWEEP_DATA_ROOT) at MNIST's raw files")
        partial = target / f".{name}.{os.getpid()}.partial"
        with gzip.open(packed, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        os.replace(partial, target / name)
    return target.parent.parent


def ray_env() -> None:
    """A local Ray, quiet, never joining a cluster named by $RAY_ADDRESS (the memory row needs its own)."""
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def gpus_per_trial(settings: Settings, concurrent: int) -> float:
    """On CUDA, ``concurrent`` trials share one GPU through a fractional share; on the CPU none."""
    return 1.0 / concurrent if settings.device == "cuda" else 0.0
