"""Sweep overhead: a sweep's wall time against the trials' own training time, on trials of a minute or more.

An 8-trial EWC λ sweep of 2-task Split-MNIST, 2 trials at a time, no references, the package's
3 seeds per trial and the prefix cache on, with ``EPOCHS`` epochs per task so that every trial
lasts at least a minute on one core (``MIN_TRIAL_S``, checked in the details): the fixed costs of a
sweep are then weighed against trials of the length real sweeps have, not against 5-second ones.
Ideal wall time = Σ ``duration_s`` (each trial's own time, from trials.parquet) / 2; the share
lost = 1 − ideal / wall, everything included (``run_sweep`` starts and stops Ray itself, as for a
user's first sweep). The second row reports, in seconds, what a sweep pays once whatever its
length: from the call to the first trial's start (Ray's start, reading the data and building the
model on the driver, the study and the searcher, Tune starting the trial actors, which import
torch), and from the last trial's end to the return (Ray's shutdown).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import REPORTED, Row, Settings
from bench.sweeps import SweepRun, measured_sweep, trial_span

TRIALS = 8
QUICK_TRIALS = 2
CONCURRENT = 2
EPOCHS = 15  # per task, full row: 3 seeds x 15 epochs of task 2 make a trial of about 1.5 minutes on one idle core
MIN_TRIAL_S = 60.0  # the row is about trials at least this long
TARGET_SHARE = 0.05


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

    import sweep.tune.driver
    from sweep.tune.driver import SweepOptions

    trials = QUICK_TRIALS if settings.quick else TRIALS
    seeds = 1 if settings.quick else SweepOptions.seeds  # the package's default: what a user's sweep pays
    epochs = None if settings.quick else EPOCHS
    steps: dict[str, float] = {}
    # the fixed costs, step by step: Ray's start and stop, the driver's checks (reading the data, building the
    # model), the study's searcher (the Optuna journal); a step the driver no longer has reads None
    with _timing(sweep.tune.driver, "init_ray", steps), _timing(ray, "shutdown", steps), \
            _timing(sweep.tune.driver, "_check_inputs", steps), _timing(sweep.tune.driver, "optuna_searcher", steps):
        result = measured_sweep(settings, trials=trials, concurrent=CONCURRENT, seeds=seeds, epochs=epochs)
    durations = result.trials["duration_s"].astype(float)
    ideal = float(durations.sum()) / CONCURRENT
    lost = 1.0 - ideal / result.wall_s
    timeline = _timeline(result)
    fixed_s = timeline["to_first_trial_s"] + timeline["after_last_trial_s"]
    common = {"device": settings.device, "quick": settings.quick, "trials": int(len(result.trials)), "seeds": seeds,
              "epochs_per_task": epochs or 1, "benchmark": "split-digits" if settings.quick else "split-mnist"}
    fixed = {"ray_init_s": steps.get("init_ray"), "driver_checks_and_data_s": steps.get("_check_inputs"),
             "searcher_setup_s": steps.get("optuna_searcher"), "ray_shutdown_s": steps.get("shutdown"),
             "to_first_trial_s": timeline["to_first_trial_s"], "after_last_trial_s": timeline["after_last_trial_s"]}
    known = sum(v for k, v in fixed.items() if k not in ("to_first_trial_s", "after_last_trial_s", "ray_shutdown_s")
                and v is not None)
    fixed["tune_and_actors_to_first_trial_s"] = timeline["to_first_trial_s"] - known
    shortest = float(durations.min())
    return [
        Row("sweep_overhead",
            f"{trials}-trial EWC sweep, {CONCURRENT} concurrent, trials of {shortest:.0f} s and more: wall vs Σ trial "
            f"time / {CONCURRENT}", "s", result.wall_s, ideal, lost, "share lost", "<", TARGET_SHARE,
            f"< {TARGET_SHARE:.0%}",
            details={**common, "statuses": result.trials["status"].value_counts().to_dict(),
                     "trial_durations_s": durations.round(3).tolist(), "shortest_trial_s": shortest,
                     "trials_last_a_minute": shortest >= MIN_TRIAL_S, "lost_s": result.wall_s - ideal,
                     "ray_startup_in_wall": not settings.quick,  # --quick shares one Ray between rows
                     **timeline, **fixed}),
        Row("sweep_fixed_costs", "what a sweep pays once: to its first trial's start, after its last trial's end", "s",
            fixed_s, result.wall_s, fixed_s / result.wall_s, "share of the wall time", REPORTED, 0.0,
            f"reported: {timeline['to_first_trial_s']:.1f} s + {timeline['after_last_trial_s']:.1f} s",
            details={**common, **fixed}),
    ]


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
