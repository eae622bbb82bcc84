"""One trial, Ray-free: a config trained on several seeds in lockstep, reported after every task.

After every task it reports the mean and std over seeds of every metric on validation and
test, so every report carries both objectives. It never reports NaN: a diverged trial ends
with ``status="diverged"`` and objectives of 0 (a model that diverged retains and learns
nothing), and the sink records its real status and reason. The Ray trainable
(:mod:`sweep.tune.trainable`) is a thin wrapper around :func:`run_trial`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from sweep.config import TrainConfig
from sweep.data.tasks import Benchmark, Split, Task
from sweep.metrics import all_metrics
from sweep.results.schema import METRICS, SPLITS, metric_column
from sweep.train.trainer import EpochReport, SequenceResult, TaskReport, build_run, iter_sequence
from sweep.tune.prefix_cache import PrefixCache, prefix_key

OBJECTIVES = ("stability", "plasticity")  # both maximised; validation means over seeds
REFERENCES = ("naive", "joint")  # roles of the trials every study runs beside its search


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> TrainConfig:
    """One trial's config: the study's fixed part, then the searched values; a reference role
    (``params["role"]``: naive or joint) runs that strategy instead, nothing frozen."""
    values = {**base, **{k: v for k, v in params.items() if k != "role"}}
    if params.get("role", "search") in REFERENCES:
        values["strategy"], values["frozen_layers"] = params["role"], 0
    return TrainConfig.from_mapping(values, source="trial config")


# --- the benchmark travels through Ray's object store as numpy arrays (zero-copy, read-only)
def benchmark_to_arrays(benchmark: Benchmark) -> dict[str, Any]:
    tasks = [
        {"name": t.name, "classes": list(t.classes),
         **{f"{s}_{k}": getattr(getattr(t, s), k).cpu().numpy() for s in ("train", "val", "test") for k in "xy"}}
        for t in benchmark.tasks
    ]
    return {"name": benchmark.name, "scenario": benchmark.scenario, "num_classes": benchmark.num_classes,
            "input_shape": list(benchmark.input_shape), "info": dict(benchmark.info), "tasks": tasks}


def benchmark_from_arrays(payload: dict[str, Any]) -> Benchmark:
    with warnings.catch_warnings():
        # arrays from the object store are read-only; the trainer only ever reads task tensors
        warnings.filterwarnings("ignore", message=".*not writable.*")
        tasks = tuple(
            Task(t["name"], tuple(t["classes"]),
                 *(Split(torch.from_numpy(t[f"{s}_x"]), torch.from_numpy(t[f"{s}_y"]))
                   for s in ("train", "val", "test")))
            for t in payload["tasks"]
        )
    return Benchmark(payload["name"], payload["scenario"], tasks, payload["num_classes"],
                     tuple(payload["input_shape"]), payload["info"])


def prefix_metrics(R: np.ndarray, initial: np.ndarray, tasks_done: int) -> dict[str, float]:
    """Metrics of the first ``tasks_done`` tasks; with one task, stability and plasticity are R[1, 1]."""
    if tasks_done >= 2:
        return all_metrics(R[:tasks_done, :tasks_done], initial[:tasks_done])
    r11 = float(R[0, 0])
    return {"stability": r11, "plasticity": r11, "acc": r11, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0,
            "retention": 1.0}


def summarize(reports: list[TaskReport], tasks_done: int) -> dict[str, float]:
    """Mean and std over seeds of every metric, for both splits (flat keys as in sweep.results.schema)."""
    out: dict[str, float] = {}
    for split in SPLITS:
        per_seed = [prefix_metrics(getattr(r, split), getattr(r, f"initial_{split}"), tasks_done) for r in reports]
        for metric in METRICS:
            values = np.array([m[metric] for m in per_seed], dtype=np.float64)
            out[metric_column(split, metric, "mean")] = float(values.mean())
            out[metric_column(split, metric, "std")] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def run_trial(
    config: TrainConfig,
    benchmark: Benchmark,
    seeds: list[int],
    report: Any,
    *,
    device: torch.device | None = None,
    objective: dict[str, float] | None = None,
    prefix_dir: str | None = None,
) -> dict[str, Any]:
    """Train ``config`` on every seed in lockstep, call ``report(metrics)`` after each task.

    Args:
        config: the trial's full configuration (its ``seed`` is replaced by each of ``seeds``).
        benchmark: the tasks.
        seeds: the seeds to average over.
        report: ``report(dict)``; ``tune.report`` in Ray, any callable outside it.
        device: where to train; the CPU by default.
        objective: for the single-objective mode, ``{"min_plasticity": p}``: ``objective`` is
            stability when plasticity >= p, else below every feasible value.
        prefix_dir: a task-prefix cache folder shared by trials (None: no reuse).

    Returns:
        The final report, which also holds every seed's accuracy matrices.
    """
    device = device or torch.device("cpu")
    started = time.perf_counter()
    benchmark = benchmark.to(device)
    runs = _seed_runs(config, benchmark, seeds, device, prefix_dir)
    T = benchmark.num_tasks
    last: list[TaskReport | EpochReport | None] = [None] * len(seeds)  # TaskReports: no epoch_reports
    final: dict[str, Any] = {}
    for t in range(T):
        diverged = []
        for s, run in enumerate(runs):
            try:
                last[s] = next(run)
            except StopIteration as stop:  # only before T tasks when the run diverged
                diverged.append(stop.value)
        if diverged:
            final = {**{k: 0.0 for k in OBJECTIVES}, "objective": -2.0, "tasks_done": t, "final": True,
                     "status": "diverged", "reason": diverged[0].reason}
            for run in runs:
                run.close()  # the other seeds stop here too: no more training for a trial that is over
            break
        final = _task_result([r for r in last if isinstance(r, TaskReport)], t, T, objective)
        if t < T - 1:
            report(final)
    final.update(_finish_runs(runs))
    final["duration_s"] = time.perf_counter() - started
    final["accuracy"] = {
        str(seed): {split: np.nan_to_num(getattr(r, split), nan=-1.0).tolist() if r else None for split in SPLITS}
        | {f"initial_{split}": getattr(r, f"initial_{split}").tolist() if r else None for split in SPLITS}
        for seed, r in zip(seeds, last)
    }
    report(final)
    return final


def _seed_runs(
    config: TrainConfig, benchmark: Benchmark, seeds: list[int], device: torch.device, prefix_dir: str | None
) -> list[Generator[TaskReport | EpochReport, None, SequenceResult]]:
    """One trainer generator per seed, each on its own seeded model and strategy (and prefix cache entry)."""
    runs = []
    for seed in seeds:
        seeded = config.replace(seed=seed)
        model, strategy = build_run(seeded, benchmark)
        prefix = PrefixCache(prefix_dir, prefix_key(seeded, benchmark)) if prefix_dir else None
        runs.append(iter_sequence(benchmark, model, strategy, seeded, device=device, prefix=prefix))
    return runs


def _task_result(
    reports: list[TaskReport], t: int, num_tasks: int, objective: dict[str, float] | None
) -> dict[str, Any]:
    """The report after task ``t`` (0-based): every metric's mean and std over the seeds, both objectives."""
    metrics = summarize(reports, t + 1)  # every seed's, none diverged
    result: dict[str, Any] = {
        **metrics,
        "stability": metrics["val_stability_mean"],
        "plasticity": metrics["val_plasticity_mean"],
        "tasks_done": t + 1,
        "final": t == num_tasks - 1,
        "status": "running" if t < num_tasks - 1 else "finished",
        "reason": "",
    }
    result["objective"] = _objective(result, objective)
    return result


def _finish_runs(runs: list[Generator[TaskReport | EpochReport, None, SequenceResult]]) -> dict[str, float]:
    """Finish the generators and average each strategy's stats (Fisher scale) over the seeds."""
    stats: dict[str, list[float]] = {}
    for run in runs:
        try:
            next(run)
        except StopIteration as stop:  # a closed generator (after a divergence) returns None
            for key, value in (stop.value.stats if stop.value else {}).items():
                stats.setdefault(key, []).append(value)
    return {key: float(np.mean(values)) for key, values in stats.items()}


def _objective(result: dict[str, Any], objective: dict[str, float] | None) -> float:
    if not objective:
        return float(result["stability"])
    shortfall = max(0.0, objective["min_plasticity"] - result["plasticity"])
    # feasible trials score their stability in [0, 1]; infeasible ones score below -1
    return float(result["stability"]) if shortfall == 0 else -1.0 - shortfall
