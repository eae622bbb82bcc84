"""Running real sweeps for the Ray rows: options, a timed run, the trials table, a memory sampler.

Every sweep here is the package's own ``run_sweep`` on a local Ray (never ``$RAY_ADDRESS``: the
memory row sums the memory of this process's children). Full mode sweeps 2-task Split-MNIST;
``--quick`` sweeps the offline split-digits, which only checks that the rows produce numbers.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Settings, gpus_per_trial, ray_env

SPACE = Path(__file__).resolve().parent / "ewc_lambda.yaml"


def sweep_options(settings: Settings, results_dir: Path, study: str, *, trials: int, concurrent: int, seeds: int = 1,
                  **extra: Any) -> Any:
    from sweep.tune.driver import SweepOptions

    return SweepOptions(
        strategy="ewc", space_file=str(SPACE), study=study, results_dir=str(results_dir), trials=trials, seeds=seeds,
        benchmark="split-digits" if settings.quick else "split-mnist", scenario="task",
        data_root=str(settings.data_root), cpus_per_trial=1.0, gpus_per_trial=gpus_per_trial(settings, concurrent),
        max_concurrent=concurrent, references=False, quiet=True, sampler_seed=0, **extra,
    )


def timed_sweep(options: Any) -> float:
    """Wall time of ``run_sweep(options)``, from the call (Ray start-up included if it starts Ray) to its return."""
    from sweep.tune.driver import run_sweep

    ray_env()
    started = time.perf_counter()
    run_sweep(options)
    return time.perf_counter() - started


@dataclass
class SweepRun:
    started_at: float  # time.time() when run_sweep was called
    wall_s: float
    trials: Any  # trials.parquet as a DataFrame
    accuracy: Any  # accuracy.parquet as a DataFrame
    cache_entries: int  # prefix-cache files the study left
    peak_bytes: int = 0  # summed PSS of the process tree; 0 when not sampled
    peak_processes: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0


_QUICK_RUNS: dict[tuple[int, int, int, bool | None, int | None], SweepRun] = {}


def measured_sweep(settings: Settings, *, trials: int, concurrent: int, seeds: int = 1,
                   prefix_cache: bool | None = None, own_ray: bool = False, sample_memory: bool = False,
                   epochs: int | None = None) -> SweepRun:
    """Run one sweep and read its tables back.

    Args:
        trials: search trials (no references).
        concurrent: trials at once (``max_concurrent``).
        seeds: seeds per trial.
        prefix_cache: the option's value; None leaves the package's default.
        own_ray: start a fresh local Ray for this sweep (reused if one runs); False lets ``run_sweep`` start it.
        sample_memory: sample the process tree's memory while it runs.
        epochs: epochs per task for every trial; None: the space's (1).

    In ``--quick`` the same request is served once per process: the smoke mode shares sweeps
    between rows (and always samples memory), so that it stays well under a minute.
    """
    import pandas as pd

    key = (trials, concurrent, seeds, prefix_cache, epochs)
    if settings.quick and key in _QUICK_RUNS:
        return _QUICK_RUNS[key]
    extra: dict[str, Any] = {} if prefix_cache is None else {"prefix_cache": prefix_cache}
    if epochs is not None:
        extra["epochs"] = epochs
    with studies_dir(settings, f"t{trials}-c{concurrent}-p{prefix_cache}") as results:
        options = sweep_options(settings, results, "study", trials=trials, concurrent=concurrent, seeds=seeds, **extra)
        with local_ray() if own_ray else nullcontext(), MemorySampler(enabled=sample_memory or settings.quick) as mem:
            called = time.time()
            wall = timed_sweep(options)
        run = SweepRun(called, wall, pd.read_parquet(results / "study" / "trials.parquet"),
                       pd.read_parquet(results / "study" / "accuracy.parquet"),
                       len(list((results / "study" / "cache").glob("*.pt"))), mem.peak, mem.peak_processes, mem.samples)
    if settings.quick:
        _QUICK_RUNS[key] = run
    return run


def trial_span(trials: Any) -> tuple[float, float]:
    """(first trial's start, last trial's end) as time.time() values, from ``finished_at`` (ms) and ``duration_s``."""
    import pandas as pd

    ends = pd.to_datetime(trials["finished_at"], utc=True, format="ISO8601").map(lambda t: t.timestamp()).astype(float)
    starts = ends - trials["duration_s"].astype(float)
    return float(starts.min()), float(ends.max())


@contextmanager
def studies_dir(settings: Settings, name: str) -> Iterator[Path]:
    """A fresh results folder under the work folder, removed afterwards unless --keep."""
    parent = settings.work_dir / "studies"
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    try:
        yield path
    finally:
        if not settings.keep:
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def local_ray(num_cpus: int | None = None) -> Iterator[bool]:
    """A local Ray for a row's sweeps; an already running one (``--quick`` shares one) is reused and kept."""
    import os

    import ray

    ray_env()
    if ray.is_initialized():
        yield False
        return
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="ERROR")
    try:
        yield True
    finally:
        ray.shutdown()


class MemorySampler:
    """Peak of the summed PSS of this process and all its descendants (Ray's processes included).

    PSS (proportional set size) charges a shared page to each of its n sharers by 1/n, so the sum
    counts the object store's copy of the dataset once however many trials map it; summed RSS
    would count it once per trial and hide exactly what this measures.
    """

    def __init__(self, interval_s: float = 0.25, enabled: bool = True) -> None:
        self.interval_s = interval_s
        self.enabled = enabled
        self.peak = 0
        self.peak_processes: list[dict[str, Any]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemorySampler:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> int:
        import ray  # noqa: F401 - Ray ships psutil in ray/thirdparty_files and puts it on sys.path

        # isort: split
        import psutil

        me = psutil.Process()
        total, rows = 0, []
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
                name = proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # a worker that exited between listing and reading
            total += info.pss
            rows.append({"pid": proc.pid, "name": name, "pss_mb": info.pss / 2**20, "uss_mb": info.uss / 2**20,
                         "rss_mb": info.rss / 2**20})
        self.samples += 1
        if total > self.peak:
            self.peak, self.peak_processes = total, rows
        return total
