"""One trial, Ray-free: a config trained on several seeds in lockstep, reported after every task.

After every task it reports the mean and std over seeds of every metric on validation and
test, so every report carries both objectives. It never reports NaN: a diverged trial ends
with ``status="diverged"`` and objectives of 0 (a model that diverged retains and learns
nothing), and the sink records its real status and reason. The Ray trainable
(:mod:`sweep.tune.trainable`) is a thin wrapper around :func:`run_trial`.
"""

from __future__ import annotations

import dataclasses
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
from sweep.train.trainer import EpochReport, SequenceResult, TaskReport, build_run, iter_sequence, seed_benchmark
from sweep.tune.prefix_cache import PrefixCache, prefix_key
from sweep.tune.pruning import END, RungPlan, rung_key

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
         **{f"{s}_{k}": getattr(getattr(t, s), k).cpu().numpy() for s in ("train", "val", "test") for k in "xy"},
         **{f"{s}_rows": getattr(t, s).rows.numpy() for s in ("train", "val", "test")
            if getattr(t, s).rows is not None}}
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
                 *(Split(torch.from_numpy(t[f"{s}_x"]), torch.from_numpy(t[f"{s}_y"]),
                         torch.from_numpy(t[f"{s}_rows"]) if f"{s}_rows" in t else None)
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


def summarize(reports: list[TaskReport] | list[EpochReport], tasks_done: int,
              splits: tuple[str, ...] = SPLITS) -> dict[str, float]:
    """Mean and std over seeds of every metric, for ``splits`` (flat keys as in sweep.results.schema)."""
    out: dict[str, float] = {}
    for split in splits:
        per_seed = [prefix_metrics(getattr(r, split), getattr(r, f"initial_{split}"), tasks_done) for r in reports]
        for metric in METRICS:
            values = np.array([m[metric] for m in per_seed], dtype=np.float64)
            out[metric_column(split, metric, "mean")] = float(values.mean())
            out[metric_column(split, metric, "std")] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


Report = TaskReport | EpochReport | SequenceResult  # what a seed's run hands out next; a SequenceResult ends it
_DONE = (1 << 31, 0)  # a run that returned sorts after every report


def _position(item: Report) -> tuple[int, int]:
    """Where a seed's run stands: (task, epoch), 1-based; a task's end after its epochs."""
    if isinstance(item, SequenceResult):
        return _DONE
    return rung_key(item.task_index + 1, item.epoch + 1 if isinstance(item, EpochReport) else None)


def _advance(run: Generator[TaskReport | EpochReport, None, SequenceResult]) -> Report:
    try:
        return next(run)
    except StopIteration as stop:
        return stop.value


COMPUTE_KEYS = ("optimizer_steps", "train_samples", "fisher_samples", "eval_passes", "eval_samples",
                "forward_samples")


def compute_spent(items: list[Report]) -> dict[str, int]:
    """The work of every seed so far, summed: tasks 2 on per kind, ``compute_samples`` their total,
    ``task1_samples`` what task 1 cost here (0 when every seed restored it from the prefix cache)."""
    out = {key: sum(int(getattr(item.compute, key)) for item in items) for key in COMPUTE_KEYS}
    out["compute_samples"] = sum(item.compute.samples for item in items)
    out["task1_samples"] = sum(item.compute_first.samples for item in items)
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
    rungs: RungPlan | None = None,
    num_tasks: int | None = None,
) -> dict[str, Any]:
    """Train ``config`` on every seed in lockstep, call ``report(metrics)`` after each task and rung.

    Args:
        config: the trial's full configuration (its ``seed`` is replaced by each of ``seeds``).
        benchmark: the tasks.
        seeds: the seeds to average over.
        report: ``report(dict)``; ``tune.report`` in Ray, any callable outside it.
        device: where to train; the CPU by default.
        objective: for the single-objective mode, ``{"min_plasticity": p}``: ``objective`` is
            stability when plasticity >= p, else below every feasible value.
        prefix_dir: a task-prefix cache folder shared by trials (None: no reuse).
        rungs: where the trial also reports inside tasks (:mod:`sweep.tune.pruning`); a report at a
            rung carries ``rung_task`` and ``rung_epoch`` (0: the task's end) and the validation
            metrics only. None: after each task only.
        num_tasks: the first K tasks only (``--protocol first-tasks K``), cut after each seed's tasks are dealt
            (``class_shuffle``); None: all of them.

    Every report carries the work done so far (``compute_samples``, ``optimizer_steps``, ...,
    summed over the seeds) and the accuracy rows of the tasks finished so far.

    Returns:
        The final report, which also holds every seed's accuracy matrices.
    """
    device = device or torch.device("cpu")
    started = time.perf_counter()
    if config.class_shuffle == "none":
        benchmark = benchmark.to(device)  # once for every seed; dealt tasks go to the device one seed at a time
    T = num_tasks or benchmark.num_tasks
    runs = _seed_runs(config, benchmark, seeds, device, prefix_dir, rungs, T)
    pending: list[Report] = [_advance(run) for run in runs]
    tasks: list[TaskReport | None] = [None] * len(seeds)  # each seed's latest task report
    tasks_done, final = 0, {}
    while True:
        diverged = [item for item in pending if isinstance(item, SequenceResult) and item.status != "finished"]
        if diverged:
            final = {**{k: 0.0 for k in OBJECTIVES}, "objective": -2.0, "tasks_done": tasks_done, "final": True,
                     "status": "diverged", "reason": diverged[0].reason}
            for run in runs:
                run.close()  # the other seeds stop here too: no more training for a trial that is over
            break
        if all(isinstance(item, SequenceResult) for item in pending):
            break
        target = min(_position(item) for item in pending)
        at = [s for s, item in enumerate(pending) if _position(item) == target]
        for s in at:
            if isinstance(pending[s], TaskReport):
                tasks[s] = pending[s]  # type: ignore[assignment]
        if len(at) == len(seeds):  # a position every seed reached (early stopping may skip an epoch's)
            result = _position_result(pending, tasks, seeds, target, T, objective, rungs)
            if isinstance(pending[0], TaskReport):
                tasks_done = target[0]
            if result.get("final"):
                final = result
            else:
                report({**result, "duration_s": time.perf_counter() - started})
        for s in at:
            pending[s] = _advance(runs[s])
    final.update(_stats(pending))
    final.update(compute_spent(pending))
    final["duration_s"] = time.perf_counter() - started
    final["accuracy"] = accuracy_rows(seeds, tasks)
    if final["status"] == "finished":
        final["derived"] = derived_results(pending, tasks, seeds, objective)
        _tell_best(final, objective)
    report(final)
    return final


def derived_results(pending: list[Report], tasks: list[TaskReport | None], seeds: list[int],
                    objective: dict[str, float] | None) -> list[dict[str, Any]]:
    """The free variants of the final models (interpolation's α grid), each a result of its own: every metric
    over the seeds from the run's matrices with the variant's last row, and its accuracy rows."""
    results = [item for item in pending if isinstance(item, SequenceResult)]
    if not results or not results[0].variants or any(t is None for t in tasks):
        return []
    out = []
    for k, (values, _, _) in enumerate(results[0].variants):
        reports = []
        for result, last in zip(results, tasks):
            assert last is not None
            val, test = last.val.copy(), last.test.copy()
            val[-1], test[-1] = result.variants[k][1], result.variants[k][2]
            reports.append(dataclasses.replace(last, val=val, test=test))
        metrics = summarize(reports, reports[0].num_tasks)
        point: dict[str, Any] = {"values": values, **metrics, "stability": metrics["val_stability_mean"],
                                 "plasticity": metrics["val_plasticity_mean"],
                                 "accuracy": accuracy_rows(seeds, reports)}  # type: ignore[arg-type]
        point["objective"] = _objective(point, objective)
        out.append(point)
    return out


def _tell_best(final: dict[str, Any], objective: dict[str, float] | None) -> None:
    """What the search is told for a trial with free variants: its best-compromise point, the one with the
    largest stability + plasticity (the nearest to the ideal (1, 1) in L1: both are accuracies on one scale,
    so no weighting is assumed), or the best objective in the constrained mode. The search then learns
    where the best trade-off of a fine-tune lies, not one arbitrary point of its α curve. The trial's own
    row keeps its own values."""
    derived = final.get("derived") or []
    if not derived:
        return
    best = best_compromise([final, *derived], objective)
    final.update(stability=best["stability"], plasticity=best["plasticity"], objective=best["objective"],
                 told=dict(best.get("values") or {}))


def best_compromise(points: list[dict[str, Any]], objective: dict[str, float] | None) -> dict[str, Any]:
    """Of a trial's own point and its free variants (each with ``stability``, ``plasticity``, ``objective``), the
    one the search is told: the largest stability + plasticity, or the best objective in the constrained mode."""
    key = (lambda p: p["objective"]) if objective else (lambda p: p["stability"] + p["plasticity"])
    return max(points, key=key)


def told_point(row: dict[str, Any], derived: list[dict[str, Any]], objective: dict[str, float] | None
               ) -> dict[str, Any]:
    """What the search was told for a recorded trial (its row and the rows derived from it, as in
    ``trials.parquet``): the values a resumed sweep gives Optuna for a trial a killed driver left running."""
    points = []
    for r in (row, *derived):
        point = {"stability": r.get("val_stability_mean") or 0.0, "plasticity": r.get("val_plasticity_mean") or 0.0}
        point["objective"] = _objective(point, objective)
        points.append(point)
    return best_compromise(points, objective)


def accuracy_rows(seeds: list[int], tasks: list[TaskReport | None]) -> dict[str, Any]:
    """Every seed's accuracy matrices so far (rows not reached read -1), for the study's accuracy file."""
    return {
        str(seed): {split: np.nan_to_num(getattr(r, split), nan=-1.0).tolist() if r else None for split in SPLITS}
        | {f"initial_{split}": getattr(r, f"initial_{split}").tolist() if r else None for split in SPLITS}
        for seed, r in zip(seeds, tasks)
    }


def _position_result(pending: list[Report], tasks: list[TaskReport | None], seeds: list[int], position: tuple[int, int],
                     num_tasks: int, objective: dict[str, float] | None, rungs: RungPlan | None) -> dict[str, Any]:
    """The report every seed reached at ``position``: after a task, or at an epoch rung inside one."""
    task, epoch = position[0], (None if position[1] == END else position[1])
    if epoch is None:
        result = _task_result([r for r in pending if isinstance(r, TaskReport)], task - 1, num_tasks, objective)
    else:
        result = _epoch_result([r for r in pending if isinstance(r, EpochReport)], task, objective)
    if rungs is not None and task >= 2 and not result["final"]:
        result.update(rung_task=task, rung_epoch=epoch or 0, rung_decides=rungs.decides(task, epoch))
    if not result["final"]:
        result.update(compute_spent(pending))
        if rungs is not None:  # what a trial stopped here keeps: the rows of the tasks it finished
            result["accuracy"] = accuracy_rows(seeds, tasks)
    return result


def _seed_runs(
    config: TrainConfig, benchmark: Benchmark, seeds: list[int], device: torch.device, prefix_dir: str | None,
    rungs: RungPlan | None, num_tasks: int,
) -> list[Generator[TaskReport | EpochReport, None, SequenceResult]]:
    """One trainer generator per seed, each on its own seeded model and strategy (and prefix cache entry), on
    the seed's tasks (``class_shuffle``) cut to the first ``num_tasks``."""
    runs = []
    for seed in seeds:
        seeded = config.replace(seed=seed)
        tasks = seed_benchmark(seeded, benchmark)  # class_shuffle per-seed: this seed's own tasks, then the cut
        if num_tasks < tasks.num_tasks:
            tasks = dataclasses.replace(tasks, tasks=tasks.tasks[:num_tasks])
        tasks = tasks.to(device)
        model, strategy = build_run(seeded, tasks)
        # a strategy whose state after task 1 must stay in memory (genreplay's generator) trains task 1 itself
        cached = prefix_dir if prefix_dir and strategy.prefix_cacheable else None
        prefix = PrefixCache(cached, prefix_key(seeded, tasks)) if cached else None
        runs.append(iter_sequence(tasks, model, strategy, seeded, device=device, prefix=prefix,
                                  epoch_reports=rungs.reports_after if rungs is not None else False))
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


def _epoch_result(reports: list[EpochReport], task: int, objective: dict[str, float] | None) -> dict[str, Any]:
    """The report at an epoch rung of task ``task`` (1-based): validation metrics of the model as it stands,
    old tasks against the current one (the test split is evaluated at a task's end only)."""
    metrics = summarize(reports, task, splits=("val",))
    result: dict[str, Any] = {
        **metrics, "stability": metrics["val_stability_mean"], "plasticity": metrics["val_plasticity_mean"],
        "tasks_done": task - 1, "final": False, "status": "running", "reason": "",
    }
    result["objective"] = _objective(result, objective)
    return result


def _stats(items: list[Report]) -> dict[str, float]:
    """Each strategy's stats (Fisher scale) averaged over the seeds whose run returned."""
    stats: dict[str, list[float]] = {}
    for item in items:
        if isinstance(item, SequenceResult):
            for key, value in item.stats.items():
                stats.setdefault(key, []).append(value)
    return {key: float(np.mean(values)) for key, values in stats.items()}


def _objective(result: dict[str, Any], objective: dict[str, float] | None) -> float:
    if not objective:
        return float(result["stability"])
    shortfall = max(0.0, objective["min_plasticity"] - result["plasticity"])
    # feasible trials score their stability in [0, 1]; infeasible ones score below -1
    return float(result["stability"]) if shortfall == 0 else -1.0 - shortfall
