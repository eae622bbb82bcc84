"""Threads under load: a ``sweep train`` run on torch's default thread count against one thread, while every
core is busy with another process.

torch's default is one thread per core. On a machine whose cores are taken by other work (other
trials, other users), those threads spin against the other processes and against each other, and a
small model gains nothing from them; ``sweep train``/``pretrain`` and the API therefore run on
``--threads`` (default 1) and a trial on its ``--cpus-per-trial``. The row times the same run
(``run_config``: what ``sweep train`` calls) both ways with a busy-loop process on each core, and
reports default / one thread. Rounds alternate the two sides; each keeps its fastest round.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import torch

from bench.common import Row, Settings, sync, unavailable
from bench.data import QUICK_SAMPLES, package_benchmark

TARGET = 1.5  # one thread at least this much faster than the default under load
SAMPLES = 4096  # per task and split: two Split-MNIST tasks of this size make a run of seconds on one thread
BUSY_LOOP = "while True: pass"


def _run(settings: Settings, benchmark: object, threads: int) -> tuple[float, np.ndarray]:
    from sweep.config import TrainConfig
    from sweep.train.trainer import run_config

    config = TrainConfig(benchmark="split-mnist", scenario="task", strategy="naive", epochs=1, seed=0,
                         threads=threads, data_root=str(settings.data_root))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # what `sweep train --threads N` does
    try:
        started = time.perf_counter()
        result = run_config(config, benchmark, device=settings.device)  # type: ignore[arg-type]
        sync(settings.device)
        return time.perf_counter() - started, result.test
    finally:
        torch.set_num_threads(before)


def _busy(cores: int) -> list[subprocess.Popen[bytes]]:
    """One process per core that only burns CPU: the competing load."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL) for _ in range(cores)]


def run(settings: Settings) -> list[Row]:
    name, metric = "threads_under_load", "sweep train (run_config), every core busy with another process"
    cores = os.cpu_count() or 1
    if settings.device != "cpu":
        return [unavailable(name, metric, "s", "default / one thread", ">=", TARGET, f">= {TARGET:g}x",
                            "a CPU row: torch's threads do not run a CUDA model's kernels")]
    if cores < 2:
        return [unavailable(name, metric, "s", "default / one thread", ">=", TARGET, f">= {TARGET:g}x",
                            "one core: torch's default is already one thread")]
    benchmark = package_benchmark(settings, QUICK_SAMPLES if settings.quick else SAMPLES)
    _run(settings, benchmark, 1)  # warm: the first run pays for imports and allocations, not for threads
    default_times: list[float] = []
    one_times: list[float] = []
    results: dict[int, np.ndarray] = {}
    load = _busy(cores)
    try:
        time.sleep(0.5)  # the busy loops are running
        for _ in range(1 if settings.quick else 2):
            seconds, results[cores] = _run(settings, benchmark, cores)
            default_times.append(seconds)
            seconds, results[1] = _run(settings, benchmark, 1)
            one_times.append(seconds)
    finally:
        for proc in load:
            proc.kill()
        for proc in load:
            proc.wait(timeout=30)
    default_s, one_s = min(default_times), min(one_times)
    return [Row(name, metric, "s", one_s, default_s, default_s / one_s, "default / one thread", ">=", TARGET,
                f">= {TARGET:g}x",
                details={"cores": cores, "default_threads": cores, "busy_processes": cores,
                         "default_rounds_s": default_times, "one_thread_rounds_s": one_times,
                         "samples_per_task": QUICK_SAMPLES if settings.quick else SAMPLES,
                         "max_test_accuracy_difference_points":
                             float(np.nanmax(np.abs(results[cores] - results[1])) * 100),
                         "quick": settings.quick})]
