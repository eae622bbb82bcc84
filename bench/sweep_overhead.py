"""Sweep overhead: a sweep's wall time against the trials' own training time.

An 8-trial EWC λ sweep of 2-task Split-MNIST, 2 trials at a time, no references, with the
package's defaults otherwise (``sweep run``'s 3 seeds per trial and the prefix cache on).
Ideal wall time = Σ ``duration_s`` (each trial's own time, from trials.parquet) / 2; the share
lost = 1 − ideal / wall: Ray's start-up, the trial actors' start-up (importing torch), Tune and
Optuna, and the Parquet writes. Full mode lets ``run_sweep`` start Ray itself, so Ray's start-up
is in the wall time, as it is for a user's first sweep; the details add the same sweep on a Ray
started before it in the same process (no start or shutdown of Ray in its wall time; joining a
cluster with ``--address`` adds a connect) and the steady-state share.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import Row, Settings
from bench.sweeps import SweepRun, measured_sweep, trial_span

TRIALS = 8
QUICK_TRIALS = 2
CONCURRENT = 2
TARGET_SHARE = 0.15


@contextmanager
def _timing(module: Any, name: str, into: dict[str, float]) -> Iterator[None]:
    """Time every call of ``module.name`` (a step of run_sweep) without changing it; absent: nothing."""
    original = getattr(module, name, None)
    if original is None:
        yield
        return

    def timed_call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into[name] = into.get(name, 0.0) + time.perf_counter() - started

    setattr(module, name, timed_call)
    try:
        yield
    finally:
        setattr(module, name, original)


def run(settings: Settings) -> list[Row]:
    import ray

    import sweep.data.benchmarks
    import sweep.tune.driver
    from sweep.tune.driver import SweepOptions

    trials = QUICK_TRIALS if settings.quick else TRIALS
    seeds = 1 if settings.quick else SweepOptions.seeds  # the package's default: what a user's sweep pays
    steps: dict[str, float] = {}
    # where the lost time goes: Ray's start and stop, reading the data on the driver
    with _timing(sweep.tune.driver, "_init_ray", steps), _timing(ray, "shutdown", steps), \
            _timing(sweep.data.benchmarks, "build_benchmark", steps):
        result = measured_sweep(settings, trials=trials, concurrent=CONCURRENT, seeds=seeds)
    durations = result.trials["duration_s"].astype(float)
    ideal = float(durations.sum()) / CONCURRENT
    lost = 1.0 - ideal / result.wall_s
    timeline = _timeline(result)
    warm = None
    if not settings.quick:  # the same sweep on a Ray started before it (in this process), which the sweep joins
        warm_run = measured_sweep(settings, trials=trials, concurrent=CONCURRENT, seeds=seeds, own_ray=True)
        warm_ideal = float(warm_run.trials["duration_s"].astype(float).sum()) / CONCURRENT
        warm = {"wall_s": warm_run.wall_s, "ideal_s": warm_ideal, "lost_s": warm_run.wall_s - warm_ideal,
                "share_lost": 1.0 - warm_ideal / warm_run.wall_s}
    return [Row(
        "sweep_overhead", f"{trials}-trial EWC sweep, {CONCURRENT} concurrent: wall vs Σ trial time / {CONCURRENT}",
        "s", result.wall_s, ideal, lost, "share lost", "<", TARGET_SHARE, f"< {TARGET_SHARE:.0%}",
        details={"device": settings.device, "quick": settings.quick, "trials": int(len(result.trials)), "seeds": seeds,
                 "statuses": result.trials["status"].value_counts().to_dict(),
                 "trial_durations_s": durations.round(3).tolist(),
                 "benchmark": "split-digits" if settings.quick else "split-mnist",
                 "ray_startup_in_wall": not settings.quick,
                 "lost_s": result.wall_s - ideal, "ray_init_s": steps.get("_init_ray"),
                 "ray_shutdown_s": steps.get("shutdown"), "driver_data_s": steps.get("build_benchmark"),
                 "tune_and_actors_s": result.wall_s - ideal - sum(steps.values()), **timeline,
                 "ray_already_running": warm},
    )]


def _timeline(run: SweepRun) -> dict[str, float]:
    """Fixed costs against what each further trial pays, from each trial's end (``finished_at``, ms) and duration.

    ``to_first_trial_s``: from the call to the first trial's start (Ray's start, the first actors
    importing torch); ``after_last_trial_s``: from the last trial's end to the return (Ray's
    shutdown). ``steady_share_lost``: the share lost while trials run (gaps between trials, the
    last pair's imbalance): what a sweep of hundreds of trials loses once the fixed costs are paid.
    """
    first, last = trial_span(run.trials)
    span = last - first
    busy = float(run.trials["duration_s"].astype(float).sum())
    return {"to_first_trial_s": first - run.started_at, "after_last_trial_s": run.started_at + run.wall_s - last,
            "trials_span_s": span, "steady_share_lost": 1.0 - busy / (CONCURRENT * span) if span > 0 else 0.0}
