"""Task-prefix reuse: a 2-task EWC λ sweep with the prefix cache on against off.

The trials differ only in λ, which EWC reads from task 2 on, so with the cache the task-1 model,
its evaluations and its Fisher are computed by the first trial and loaded by the others. Both
sweeps run in one local Ray (its start-up is in neither time), one trial at a time: Optuna's TPE
then proposes the same λ sequence to both sweeps exactly when their results are identical, so
"identical" is checked trial by trial (same λ, same accuracy matrices, same metrics). Full mode
runs off, on, on, off and sums each side, so a load that drifts during the row (other processes
on a shared machine) weighs on both sides alike.

Trials per minute are counted from the first trial's start to the last trial's end of each
sweep: what the cache changes. What a sweep pays once around its trials (Tune starting the trial
actors, each importing torch, and tearing them down: 3-5 s per sweep here; Ray itself runs
throughout) is the sweep-overhead row's; in a six-trial sweep it would weigh as much as three
cached trials. The ratio over each sweep's whole wall time is in the details
(``per_sweep_wall_ratio``).
"""

from __future__ import annotations

from bench import sweep_overhead
from bench.common import Row, Settings
from bench.sweeps import SweepRun, local_ray, measured_sweep, trial_span

TRIALS = 6  # per sweep; four sweeps in full mode
TARGET_SPEEDUP = 1.8
METRIC = "trials per minute from first trial start to last trial end, cache on vs off"


def _span(run: SweepRun) -> float:
    first, last = trial_span(run.trials)
    return last - first


def _identical(off: SweepRun, on: SweepRun) -> tuple[bool, dict]:
    a, b = off.trials, on.trials
    if len(a) != len(b) or sorted(a["hp_ewc_lambda"]) != sorted(b["hp_ewc_lambda"]):
        return False, {"reason": "the two sweeps ran different λ (their results diverged)",
                       "lambdas_off": sorted(a["hp_ewc_lambda"]), "lambdas_on": sorted(b["hp_ewc_lambda"])}
    metric_cols = [c for c in a.columns if c.startswith(("val_", "test_")) or c in ("status", "fisher_mean")]
    keys = ["seed", "split", "after_task", "eval_task"]
    mismatched = []
    for lam in a["hp_ewc_lambda"]:
        ra, rb = a[a["hp_ewc_lambda"] == lam].iloc[0], b[b["hp_ewc_lambda"] == lam].iloc[0]
        xa = off.accuracy[off.accuracy["trial_id"] == ra["trial_id"]].sort_values(keys)["accuracy"].tolist()
        xb = on.accuracy[on.accuracy["trial_id"] == rb["trial_id"]].sort_values(keys)["accuracy"].tolist()
        same_metrics = all((ra[c] == rb[c]) or (ra[c] != ra[c] and rb[c] != rb[c]) for c in metric_cols)  # NaN == NaN
        if xa != xb or not xa or not same_metrics:
            mismatched.append(float(lam))
    return not mismatched, {"trials_compared": len(a), "mismatched_lambdas": mismatched,
                            "accuracy_rows_per_trial": len(off.accuracy) // max(len(a), 1)}


def run(settings: Settings) -> list[Row]:
    trials = sweep_overhead.QUICK_TRIALS if settings.quick else TRIALS
    # off, on, on, off: a load that drifts during the row (other processes on a shared machine)
    # weighs on both sides alike; --quick runs off, on once
    order = (False, True) if settings.quick else (False, True, True, False)
    runs: dict[bool, list[SweepRun]] = {False: [], True: []}
    with local_ray():  # one Ray for all: its start-up is in no time
        for cache in order:  # (full mode never shares sweeps, so the repeats are fresh runs)
            runs[cache].append(measured_sweep(settings, trials=trials, concurrent=1, prefix_cache=cache))
    pairs = [_identical(off, on) for off, on in zip(runs[False], runs[True])]
    same = all(ok for ok, _ in pairs)
    walls = {name: [r.wall_s for r in runs[cache]] for name, cache in (("off", False), ("on", True))}
    durations = {name: [r.trials["duration_s"].astype(float).round(3).tolist() for r in runs[cache]]
                 for name, cache in (("off", False), ("on", True))}
    spans = {name: [_span(r) for r in runs[cache]] for name, cache in (("off", False), ("on", True))}
    on_rate = 60.0 * trials * len(spans["on"]) / sum(spans["on"])
    off_rate = 60.0 * trials * len(spans["off"]) / sum(spans["off"])
    wall_rates = {name: 60.0 * trials * len(walls[name]) / sum(walls[name]) for name in walls}
    trial_time = {name: sum(sum(d) for d in durations[name]) for name in durations}
    return [Row(
        "prefix_reuse", METRIC, "trials/min", on_rate, off_rate, on_rate / off_rate, "on / off", ">=", TARGET_SPEEDUP,
        f">= {TARGET_SPEEDUP:g}x, identical", also_required=same,
        details={"device": settings.device, "quick": settings.quick, "trials_per_sweep": trials, "concurrent": 1,
                 "order": ["on" if c else "off" for c in order], "identical": same,
                 "comparisons": [comparison for _, comparison in pairs],
                 "trials_span_s": spans, "wall_s": walls, "trial_durations_s": durations,
                 "per_sweep_wall_ratio": wall_rates["on"] / wall_rates["off"],
                 "trial_time_ratio": trial_time["off"] / max(trial_time["on"], 1e-9),
                 "cache_entries": [r.cache_entries for r in runs[True]],
                 "benchmark": "split-digits" if settings.quick else "split-mnist"},
    )]
