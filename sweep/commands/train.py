"""``sweep train``: one run of the sequential-task trainer, printed as an accuracy matrix and metrics."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TextIO

import numpy as np

from sweep.commands._config_args import add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print the matrices and metrics as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def format_matrix(R: np.ndarray, initial: np.ndarray, title: str) -> str:
    """Rows: after training task t; columns: evaluated on task i; values in %."""
    T = R.shape[0]
    header = f"{title:<14}" + "".join(f"{'task ' + str(i + 1):>9}" for i in range(T))
    lines = [header, f"{'untrained':<14}" + "".join(f"{100 * v:9.1f}" for v in initial)]
    for t in range(T):
        lines.append(f"{'after task ' + str(t + 1):<14}" + "".join(f"{100 * v:9.1f}" for v in R[t]))
    return "\n".join(lines)


class ProgressBar:
    """A one-line bar on stderr; when stderr is not a terminal (a log, CI), a plain line at each quarter of a task
    and at its end, with the time so far, so that a long run shows it is alive."""

    QUARTERS = (0.25, 0.5, 0.75)

    def __init__(self, num_tasks: int, enabled: bool, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.num_tasks = num_tasks
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.clock = clock
        self.started = clock()
        self.shown: set[tuple[int, float]] = set()  # (task, quarter) lines already written

    def __call__(self, task_index: int, step: int, total: int) -> None:
        if not self.enabled:
            return
        where = f"task {task_index + 1}/{self.num_tasks}"
        if self.tty:
            filled = int(30 * step / max(total, 1))
            bar = "#" * filled + "." * (30 - filled)
            end = "\n" if step == total else ""
            print(f"\r{where} [{bar}] {step}/{total} steps", end=end, file=self.stream, flush=True)
            return
        elapsed = f"{self.clock() - self.started:.1f}s elapsed"
        if step == total:
            print(f"{where}: {total} steps done, {elapsed}", file=self.stream, flush=True)
            return
        for quarter in self.QUARTERS:
            if step >= quarter * total and (task_index, quarter) not in self.shown:
                self.shown.add((task_index, quarter))
                print(f"{where}: {int(100 * quarter)}% ({step}/{total} steps), {elapsed}", file=self.stream,
                      flush=True)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # a bad flag is refused before torch is imported (4 s)
    from sweep.train.trainer import load_benchmark, parse_device, run_config

    device = parse_device(args.device, "--device")  # cpu or cuda; meta, mps and the like are refused
    import torch

    torch.set_num_threads(config.threads)  # --threads, default 1: never more threads than a busy machine has free
    benchmark = load_benchmark(config)
    progress = ProgressBar(benchmark.num_tasks, enabled=not args.no_progress)
    result = run_config(config, benchmark, device=device, progress=progress)
    if args.json:
        payload = {
            "config": config.to_dict(),
            "tasks": [task.name for task in benchmark.tasks],  # class_shuffle per-seed: this seed's deal
            "status": result.status,
            "reason": result.reason,
            "accuracy": {"val": _nan_to_none(result.val), "test": _nan_to_none(result.test)},
            "initial": {"val": _nan_to_none(result.initial_val), "test": _nan_to_none(result.initial_test)},
            "metrics": {s: result.metrics(s) for s in ("val", "test")} if result.status == "finished" else None,
            "stats": result.stats,
            "duration_s": result.duration_s,
        }
        print(json.dumps(payload, indent=2, allow_nan=False))
        return 0 if result.status == "finished" else 1
    print(f"{config.strategy} on {config.benchmark} ({config.scenario}-incremental, {benchmark.num_tasks} tasks, "
          f"{config.model}, seed {config.seed}), {result.duration_s:.1f}s")
    if config.class_shuffle != "none":
        print(f"tasks of seed {config.seed} (class_shuffle {config.class_shuffle}): "
              + " | ".join(task.name for task in benchmark.tasks))
    print()
    print(format_matrix(result.test, result.initial_test, "test acc %"))
    print()
    if result.status != "finished":
        print(f"diverged: {result.reason}")
        return 1
    val, test = result.metrics("val"), result.metrics("test")
    print(f"{'metric':<12}{'val':>9}{'test':>9}")
    for name in val:
        print(f"{name:<12}{100 * val[name]:9.1f}{100 * test[name]:9.1f}")
    for name, value in result.stats.items():
        print(f"{name}: {value:.4g}")
    return 0


def _nan_to_none(values: np.ndarray) -> list:
    """JSON has no NaN: rows after a divergence become null."""
    out = values.astype(object)
    out[~np.isfinite(values)] = None
    return out.tolist()
