"""Pruning: the same 24-trial sweep with and without ``--prune``, on two workloads (issue 15, item 5).

Workloads (:func:`workloads`; ``--quick`` swaps in split-digits and a tiny mnist-fashion, 4 trials, and runs
the real pruned sweep on the first workload only; about a minute):

- ``split_mnist``: 5-task Split-MNIST, task-incremental, the MLP, 1 epoch a task, EWC with λ and the
  fine-tuning learning rate searched (``bench/pruning_split_mnist.yaml``, exact Fisher). Rungs: the
  ends of tasks 2, 3 and 4.
- ``mnist_fashion``: a pretrained fine-tune: the CNN trained one epoch on MNIST (once, cached under
  ``bench/out/pretrained``), fine-tuned 5 epochs on Fashion-MNIST, domain-incremental, EWC with λ and
  the fine-tuning learning rate searched, an empirical Fisher on 300 source samples
  (``bench/pruning_mnist_fashion.yaml``), on the fixed subsets of ``bench/workloads.py``. Rungs:
  epochs 1 and 3 of the fine-tune.

Every sweep: 24 trials x 2 seeds (``sweep choose``'s one-std check needs a spread over seeds), 2 trials
at a time, 1 CPU each. The unpruned sweeps run no references (joint training of the fine-tune retrains
on all of MNIST: 285 s); the naive reference, which anchors the hypervolume at (naive's stability, 0),
``sweep choose``'s constraint and the scheduler's floor, is run once per workload in this process
through the trial's own code (``run_trial``), and the replays hand its final validation stability to
the scheduler, as a sweep with references does. The real ``--prune`` sweep runs with references, so its
own scheduler has the floor.

Pruned against unpruned, as the issue allows: each unpruned TPE sweep (sampler seeds 0, 1, 2) records
every trial's validation (stability, plasticity) at every rung (``rungs.parquet``), and
``SuccessiveHalving(eta=3).replay`` runs the scheduler over those records, trials in the order they
started: exact for the scheduler, which reads only reported values, on the same 24 configurations.
One real ``--prune`` sweep per workload (TPE, sampler seed 0) checks the replay against what a pruned
sweep does, with its own proposals (Optuna is told PRUNED, so TPE's later proposals differ) and
trials judged in the order they really reach a rung. NSGA-II and random (sampler seed 0) run the same
unpruned sweep for the sampler comparison, each replayed pruned too.

Compute is ``compute_samples`` (samples through the model from task 2 on, training, Fisher and
evaluations, summed over seeds; task 1 is shared through the prefix cache and left out on both
sides), with ``optimizer_steps`` beside it. A sweep's curve: after each trial in start order, the
compute spent so far and the validation hypervolume of the finished trials so far. Targets, every
TPE sampler seed: the pruned sweep reaches 95% of the unpruned sweep's final validation hypervolume
within 45% of the unpruned sweep's compute; its test hypervolume is within 2% of the unpruned one's;
``sweep choose`` with the README's constraint (``--maximize stability --constraint "plasticity >=
naive - 0.05"``) picks, on the pruned study, a setting whose test stability and plasticity are within
one std (over the seeds, of the unpruned study's choice) of the unpruned study's choice.

Reported beside them (``bench/out/pruning-<workload>.json`` holds everything): the pruned sweep's whole
compute, the trials of the unpruned front it stopped (late bloomers) and the hypervolume they hold, the
hindsight bound (:func:`hindsight`: every trial off the final front stopped at its first rung),
how well each rung's values predict the final ones (Spearman), replays with ``--prune-grace 2``, on the
means alone (``--prune-noise 0``) and with the front exception alone (``--prune-min-share 0``), and
each sampler's hypervolume after 25, 50 and 100% of the compute. Measured figures: docs/pruning.md.
The full row takes about an hour on 2 busy cores (66.6 min measured at load average 5-13, before the
real sweeps ran references: they add about 5 minutes, nearly all of it (b)'s joint reference).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, REPORTED, Row, Settings, gpus_per_trial
from bench.sweeps import local_ray, studies_dir

HERE = Path(__file__).resolve().parent
TRIALS = 24
QUICK_TRIALS = 4
SEEDS_PER_TRIAL = 2
CONCURRENT = 2
ETA = 3.0
GRACE = 1
NOISE = 0.5  # --prune-noise: a trial is on a rung's front unless a peer dominates its mean + 0.5 std over seeds
MIN_SHARE = 0.005  # --prune-min-share: with naive's stability as the floor (a sweep with references has it)
SAMPLER_SEEDS = (0, 1, 2)  # the TPE sweeps the targets are checked on
COMPARE = {"nsga2": (0,), "random": (0,)}  # the other samplers, unpruned (and replayed), for the comparison
REAL_PRUNED = ("tpe", 0)  # the one real --prune sweep per workload
CONSTRAINT = "plasticity >= naive - 0.05"  # README's `sweep choose` example, maximising stability
SHARE_OF_FINAL = 0.95
TARGET_COMPUTE = 0.45
TARGET_TEST_HV = 0.98
TARGET_STDS = 1.0
BUDGETS = (0.25, 0.5, 1.0)  # fractions of an unpruned sweep's compute the sampler comparison reads the curves at
COMPUTE_KEYS = ("compute_samples", "optimizer_steps")


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    benchmark: str
    scenario: str
    num_tasks: int | None
    model: str
    space: Path
    tasks: int  # the sequence's length and each task's epochs: where the rungs are (sweep.tune.pruning.RungPlan)
    epochs: int
    pretrain: dict[str, Any] | None = None  # TrainConfig of the source model, pretrained once and cached


def workloads(settings: Settings) -> list[Workload]:
    quick = settings.quick
    return [
        Workload("split_mnist", "5-task Split-MNIST, task-incremental, MLP, 1 epoch a task, EWC (λ, finetune_lr)",
                 "split-digits" if quick else "split-mnist", "task", 5, "mlp", HERE / "pruning_split_mnist.yaml",
                 tasks=5, epochs=1),
        Workload("mnist_fashion", "pretrained CNN fine-tuned 5 epochs, mnist-fashion subset, domain-incremental, "
                 "EWC (λ, finetune_lr)",
                 "bench.workloads:" + ("mnist_fashion_tiny" if quick else "mnist_fashion_subset"), "domain", None,
                 "cnn", HERE / "pruning_mnist_fashion.yaml", tasks=2, epochs=5,
                 pretrain={"epochs": 1, "batch_size": 64, "lr": 1e-3, "seed": 0}),
    ]


def _log(message: str) -> None:
    print(f"[bench] pruning: {message}", file=sys.stderr, flush=True)


# --- running
def pretrained_checkpoint(settings: Settings, w: Workload) -> tuple[str, dict[str, Any]]:
    """The source model of ``w``, trained once and kept in bench/out/pretrained (keyed by what makes it)."""
    import hashlib

    import torch

    from sweep.commands.pretrain import pretrain
    from sweep.config import TrainConfig
    from sweep.models import save_weights

    assert w.pretrain is not None
    values = {"benchmark": w.benchmark, "scenario": w.scenario, "model": w.model, **w.pretrain}
    key = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
    folder = REPO / "bench" / "out" / "pretrained"
    path, meta_path = folder / f"{w.name}-{key}.pt", folder / f"{w.name}-{key}.json"
    if path.is_file() and meta_path.is_file():
        return str(path), json.loads(meta_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    _log(f"{w.name}: pretraining the source model once ({values})")
    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    config = TrainConfig.from_mapping({**values, "data_root": str(settings.data_root)}, source="bench")
    model, _, val, test = pretrain(config, device=settings.device)
    save_weights(model, path)
    meta = {"config": values, "source_val_accuracy": val, "source_test_accuracy": test,
            "seconds": time.perf_counter() - started}
    meta_path.write_text(json.dumps(meta, indent=2))
    return str(path), meta


def sweep_options(settings: Settings, w: Workload, results: Path, study: str, *, sampler: str, seed: int,
                  prune: bool, trials: int, checkpoint: str | None) -> Any:
    from sweep.tune.options import SweepOptions

    pruning: dict[str, Any] = {"prune": True, "prune_eta": ETA, "prune_grace": GRACE, "prune_noise": NOISE,
                               "prune_min_share": MIN_SHARE} if prune else {}
    return SweepOptions(
        strategy="ewc", space_file=str(w.space), study=study, results_dir=str(results), trials=trials,
        seeds=SEEDS_PER_TRIAL, benchmark=w.benchmark, scenario=w.scenario, num_tasks=w.num_tasks, model=w.model,
        pretrained=checkpoint, data_root=str(settings.data_root), sampler=sampler, sampler_seed=seed,
        cpus_per_trial=1.0, gpus_per_trial=gpus_per_trial(settings, CONCURRENT), max_concurrent=CONCURRENT,
        references=prune, quiet=True, **pruning,  # a pruned sweep's scheduler reads naive's stability
    )


def naive_reference(settings: Settings, w: Workload, options: Any) -> dict[str, Any]:
    """The naive reference on the sweeps' seeds, through the trial's own code (what a study's naive row holds)."""
    import torch

    from sweep.data.benchmarks import build_benchmark
    from sweep.results.schema import METRICS, SPLITS, metric_column
    from sweep.tune.options import base_config
    from sweep.tune.search_space import load_space
    from sweep.tune.trial import run_trial, trial_config

    torch.set_num_threads(settings.threads)
    config = trial_config(base_config(options, load_space(w.space)), {"role": "naive"})
    benchmark = build_benchmark(config.benchmark, config.scenario, config.num_tasks, config.class_order,
                                config.data_root, config.val_fraction)
    final = run_trial(config, benchmark, list(range(SEEDS_PER_TRIAL)), lambda _: None,
                      device=torch.device(settings.device))
    columns = [metric_column(s, m, st) for s in SPLITS for m in METRICS for st in ("mean", "std")]
    return {"status": final["status"], **{c: float(final[c]) for c in columns if c in final},
            "compute_samples": final.get("compute_samples"), "optimizer_steps": final.get("optimizer_steps")}


@dataclass
class StudyRecord:
    name: str
    sampler: str
    seed: int
    pruned: bool
    wall_s: float
    trials: Any  # DataFrame: search trials, in start order
    rungs: Any  # DataFrame
    noise: float = 0.0  # a pruned sweep's --prune-noise (study.json; a sweep from before it: 0, the means alone)
    min_share: float = 0.0  # its --prune-min-share (a sweep from before it: 0, the front exception alone)
    naive_stability: float | None = None  # its naive reference's final validation stability (None: it ran none)


def _started(trials: Any) -> Any:
    """When each trial started (``finished_at`` minus ``duration_s``): the order the sweep ran them in."""
    import pandas as pd

    ends = pd.to_datetime(trials["finished_at"], utc=True, format="ISO8601")
    return ends - pd.to_timedelta(trials["duration_s"].astype(float), unit="s")


def run_study(settings: Settings, w: Workload, results: Path, *, sampler: str, seed: int, prune: bool, trials: int,
              checkpoint: str | None) -> StudyRecord:
    from sweep.tune.driver import run_sweep

    name = f"{w.name}-{sampler}-s{seed}{'-pruned' if prune else ''}"
    options = sweep_options(settings, w, results, name, sampler=sampler, seed=seed, prune=prune, trials=trials,
                            checkpoint=checkpoint)
    started = time.perf_counter()
    run_sweep(options)
    wall = time.perf_counter() - started
    (results / f"{name}.wall.json").write_text(json.dumps({"wall_s": wall}))
    record = read_study(results, name)
    _log(f"{name}: {len(record.trials)} trials ({int((record.trials['status'] == 'pruned').sum())} pruned) "
         f"in {wall:.0f} s")
    return record


STUDY_NAME = re.compile(r"^(?P<workload>\w+?)-(?P<sampler>[a-z0-9]+)-s(?P<seed>\d+)(?P<pruned>-pruned)?$")


def read_study(results: Path, name: str) -> StudyRecord:
    """A bench study's search trials (in the order they started) and rung records, from its folder."""
    import pandas as pd

    match = STUDY_NAME.match(name)
    assert match is not None, name
    table = pd.read_parquet(results / name / "trials.parquet")
    naive = table[(table["role"] == "naive") & (table["status"] == "finished")]["val_stability_mean"]
    table = table[table["role"] == "search"].copy()
    table["started_at"] = _started(table)
    table = table.sort_values(["started_at", "trial_id"], kind="stable").reset_index(drop=True)
    rungs = pd.read_parquet(results / name / "rungs.parquet")
    wall_file = results / f"{name}.wall.json"
    wall = json.loads(wall_file.read_text())["wall_s"] if wall_file.is_file() else math.nan
    prune = json.loads((results / name / "study.json").read_text()).get("prune") or {}
    return StudyRecord(name, match["sampler"], int(match["seed"]), bool(match["pruned"]), wall, table, rungs,
                       float(prune.get("noise", 0.0)), float(prune.get("min_share", 0.0)),
                       float(naive.iloc[0]) if len(naive) else None)


# --- analysis (Ray-free: reads the tables only)
def _float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _points(trials: Any, split: str) -> list[tuple[float, float]]:
    return [(_float(r[f"{split}_stability_mean"]), _float(r[f"{split}_plasticity_mean"]))
            for _, r in trials.iterrows() if r["status"] == "finished"]


def hv(trials: Any, split: str, naive: dict[str, Any]) -> float:
    """The analysis package's hypervolume of the finished trials on ``split``, reference (naive's stability, 0)."""
    from sweep.analysis.pareto import hypervolume

    points = _points(trials, split)
    return hypervolume(points, (naive[f"{split}_stability_mean"], 0.0)) if points else 0.0


def replayed(record: StudyRecord, plan: Any = None, noise: float = NOISE, reference: float | None = None,
             min_share: float = MIN_SHARE, tasks: int | None = None) -> tuple[Any, dict[str, str]]:
    """The unpruned study's trials as the scheduler would have left them: each trial it stops becomes
    ``pruned``, its compute what it had spent at that rung. Returns (table, trial id -> where stopped).
    ``plan``: a :class:`RungPlan` whose grace period decides which rungs can stop a trial (a what-if);
    None: the rungs' recorded ``decides`` (the sweep's own grace period). ``noise``: ``--prune-noise``;
    ``reference``, ``tasks`` and ``min_share``: the naive reference's final validation stability and the
    sequence's length (what a sweep with references hands its scheduler; None: a sweep without) and
    ``--prune-min-share``."""
    from sweep.tune.pruning import SuccessiveHalving, rung_label

    curves = []
    by_trial = {tid: rows for tid, rows in record.rungs.groupby("trial_id")}
    for trial_id in record.trials["trial_id"]:  # start order
        rows = by_trial.get(trial_id)
        recs = [] if rows is None else [
            (int(r["task"]), None if _isnull(r["epoch"]) else int(r["epoch"]), _float(r["val_stability_mean"]),
             _float(r["val_plasticity_mean"]),
             bool(r["decides"]) if plan is None else plan.decides(int(r["task"]),
                                                                  None if _isnull(r["epoch"]) else int(r["epoch"])),
             _float(r["val_stability_std"]), _float(r["val_plasticity_std"]))
            for _, r in rows.iterrows()]
        curves.append((trial_id, recs))
    stops = SuccessiveHalving(ETA, noise, reference, tasks, min_share).replay(curves)
    table = record.trials.copy()
    where: dict[str, str] = {}
    for i, row in table.iterrows():
        stop = stops.get(row["trial_id"])
        if stop is None:
            continue
        rung = by_trial[row["trial_id"]]
        at = rung[(rung["task"] == stop[0]) & (rung["epoch"].isna() if stop[1] is None else rung["epoch"] == stop[1])]
        _stop(table, i, at.iloc[0])
        where[row["trial_id"]] = rung_label(*stop)
    return table, where


def _stop(table: Any, i: Any, rung: Any) -> None:
    """Mark row ``i`` of a trials table pruned at ``rung`` (a row of rungs.parquet): its compute is what it
    had spent there."""
    table.loc[i, "status"] = "pruned"
    for key in COMPUTE_KEYS:
        table.loc[i, key] = float(rung[key])


def _isnull(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def curve(trials: Any, naive: dict[str, Any]) -> list[dict[str, float]]:
    """After each trial in start order: the compute spent so far and the validation hypervolume so far."""
    out, spent = [], dict.fromkeys(COMPUTE_KEYS, 0.0)
    for k in range(len(trials)):
        for key in COMPUTE_KEYS:
            spent[key] += _float(trials[key].iloc[k]) if not _isnull(trials[key].iloc[k]) else 0.0
        out.append({**spent, "val_hv": hv(trials.iloc[: k + 1], "val", naive)})
    return out


def reach(points: Sequence[dict[str, float]], level: float) -> dict[str, float] | None:
    """The compute at the first point of a curve whose hypervolume reaches ``level``; None: never."""
    return next(({key: p[key] for key in COMPUTE_KEYS} for p in points if p["val_hv"] >= level), None)


def at_budget(points: Sequence[dict[str, float]], budget: float) -> float:
    """The hypervolume a curve holds once ``budget`` samples are spent (its last point within the budget)."""
    within = [p["val_hv"] for p in points if p["compute_samples"] <= budget * (1 + 1e-9)]
    return within[-1] if within else 0.0


def choice(trials: Any, naive: dict[str, Any]) -> dict[str, Any] | None:
    """``sweep choose --maximize stability --constraint CONSTRAINT`` on these trials (the package's own choose)."""
    import pandas as pd

    from sweep.analysis.choose import choose
    from sweep.analysis.io import Study

    naive_row: dict[str, Any] = dict.fromkeys(trials.columns)
    naive_row.update({**{k: v for k, v in naive.items() if k in trials.columns}, "trial_id": "naive",
                      "role": "naive", "status": "finished", "finished_at": "1970-01-01T00:00:00.000+00:00"})
    table = pd.concat([trials, pd.DataFrame([naive_row])], ignore_index=True)
    picked = choose(Study("bench", Path("."), table, pd.DataFrame()), "stability", [CONSTRAINT])
    if picked.trial is None:
        return None
    row = picked.trial
    return {"trial_id": str(row["trial_id"]), "feasible": bool(picked.feasible),
            "ewc_lambda": _float(row.get("hp_ewc_lambda")), "finetune_lr": _float(row.get("hp_finetune_lr")),
            **{f"{s}_{m}_{st}": _float(row[f"{s}_{m}_{st}"]) for s in ("val", "test")
               for m in ("stability", "plasticity") for st in ("mean", "std")}}


def stds_apart(unpruned: dict[str, Any] | None, pruned: dict[str, Any] | None) -> dict[str, float]:
    """|pruned choice - unpruned choice| on test, in the unpruned choice's std over seeds, per objective."""
    out = {}
    for m in ("stability", "plasticity"):
        if unpruned is None or pruned is None:
            out[m] = math.inf
            continue
        gap = abs(pruned[f"test_{m}_mean"] - unpruned[f"test_{m}_mean"])
        std = unpruned[f"test_{m}_std"]
        out[m] = 0.0 if gap == 0 else (gap / std if std > 0 else math.inf)
    return out


def compare(unpruned: Any, pruned: Any, naive: dict[str, Any]) -> dict[str, Any]:
    """One sweep against its unpruned twin: curves, compute to 95%, both hypervolumes, the choices."""
    full, cut = curve(unpruned, naive), curve(pruned, naive)
    final = full[-1]["val_hv"] if full else 0.0
    total = {key: full[-1][key] if full else 0.0 for key in COMPUTE_KEYS}
    level = SHARE_OF_FINAL * final
    reached = {"unpruned": reach(full, level), "pruned": reach(cut, level)}
    fraction = {name: ({key: r[key] / total[key] for key in COMPUTE_KEYS} if r is not None and all(total.values())
                       else None) for name, r in reached.items()}
    test = {"unpruned": hv(unpruned, "test", naive), "pruned": hv(pruned, "test", naive)}
    chosen = {"unpruned": choice(unpruned, naive), "pruned": choice(pruned, naive)}
    apart = stds_apart(chosen["unpruned"], chosen["pruned"])
    return {**late_bloomers(unpruned, pruned, naive),
        "trials": len(unpruned), "pruned_trials": int((pruned["status"] == "pruned").sum()),
        "unpruned_compute": total, "pruned_compute": {key: cut[-1][key] if cut else 0.0 for key in COMPUTE_KEYS},
        "pruned_compute_fraction": {key: (cut[-1][key] / total[key]) if cut and total[key] else None
                                    for key in COMPUTE_KEYS},
        "val_hv": {"unpruned": final, "pruned": cut[-1]["val_hv"] if cut else 0.0},
        "val_hv_kept": (cut[-1]["val_hv"] / final) if cut and final else None,
        "compute_to_95": reached, "compute_to_95_fraction": fraction,
        "test_hv": test, "test_hv_ratio": test["pruned"] / test["unpruned"] if test["unpruned"] else None,
        "choice": chosen, "choice_stds_apart": apart, "choice_gap_points": {
            m: 100 * abs(chosen["pruned"][f"test_{m}_mean"] - chosen["unpruned"][f"test_{m}_mean"])
            if chosen["pruned"] and chosen["unpruned"] else None for m in ("stability", "plasticity")},
        "curves": {"unpruned": full, "pruned": cut},
    }


def late_bloomers(unpruned: Any, pruned: Any, naive: dict[str, Any]) -> dict[str, Any]:
    """The risk of pruning, where both tables hold the same trials (a replay): the trials of the unpruned
    validation front that the scheduler stopped, and the validation hypervolume the front loses without them."""
    from sweep.analysis.pareto import pareto_front

    front = unpruned[pareto_front(unpruned).to_numpy()]
    status = dict(zip(pruned["trial_id"], pruned["status"]))
    lost = front[[status.get(t) == "pruned" for t in front["trial_id"]]]
    rest = unpruned[~unpruned["trial_id"].isin(lost["trial_id"])]
    full = hv(unpruned, "val", naive)
    return {"front_size": len(front), "front_trials_stopped": [
        {"trial_id": str(r["trial_id"]), "ewc_lambda": _float(r.get("hp_ewc_lambda")),
         "finetune_lr": _float(r.get("hp_finetune_lr")), "val_stability": _float(r["val_stability_mean"]),
         "val_plasticity": _float(r["val_plasticity_mean"])} for _, r in lost.iterrows()],
        "val_hv_lost_with_them": (1 - hv(rest, "val", naive) / full) if full else 0.0}


def hindsight(record: StudyRecord, naive: dict[str, Any]) -> dict[str, Any]:
    """What a pruner that knew the end could save, on the same trials: every trial off the unpruned sweep's
    final validation front stopped at its first deciding rung, every front trial run to the end. Its compute
    to 95% of the final hypervolume is what knowing the front would buy on this sweep (not a strict floor:
    stopping some front trials too can reach 95% sooner); an asynchronous rule judges its first trials
    against few peers, and lets most of them go on."""
    from sweep.analysis.pareto import pareto_front

    trials = record.trials
    front = set(trials[pareto_front(trials).to_numpy()]["trial_id"])
    deciding = record.rungs[record.rungs["decides"].astype(bool)]
    table = trials.copy()
    for i, row in table.iterrows():
        rungs = deciding[deciding["trial_id"] == row["trial_id"]]
        if row["trial_id"] in front or rungs.empty:
            continue
        _stop(table, i, rungs.assign(at=rungs["epoch"].fillna(math.inf)).sort_values(["task", "at"]).iloc[0])
    result = compare(trials, table, naive)
    return {"front_size": len(front), "compute_to_95_fraction": result["compute_to_95_fraction"]["pruned"],
            "pruned_compute_fraction": result["pruned_compute_fraction"]}


def rung_signal(record: StudyRecord) -> list[dict[str, Any]]:
    """How much a rung says about the end, per rung of an unpruned study: for each objective, the Spearman
    correlation over trials between the rung's validation value and the final one, the rung's spread over
    trials (std) and its noise (the median std over seeds). Where the correlation is low, halving at that
    rung stops trials at random, late bloomers among them."""
    finals = record.trials[["trial_id", "val_stability_mean", "val_plasticity_mean"]]
    out = []
    rungs = record.rungs.assign(at_epoch=record.rungs["epoch"].fillna(0).astype(int))
    for (task, epoch), group in rungs.groupby(["task", "at_epoch"]):
        joined = group.merge(finals, on="trial_id", suffixes=("", "_final"))
        entry: dict[str, Any] = {"task": int(task), "epoch": int(epoch) or None, "trials": len(joined)}
        for m in ("stability", "plasticity"):
            entry[m] = {"spearman_with_final": _float(joined[f"val_{m}_mean"].corr(joined[f"val_{m}_mean_final"],
                                                                                 method="spearman")),
                        "spread_over_trials": _float(joined[f"val_{m}_mean"].std()),
                        "median_std_over_seeds": _float(joined[f"val_{m}_std"].median())}
        out.append(entry)
    return out


WHAT_IF_KEYS = ("pruned_trials", "pruned_compute_fraction", "val_hv_kept", "compute_to_95_fraction", "test_hv_ratio",
                "choice", "choice_stds_apart", "choice_gap_points", "front_trials_stopped", "val_hv_lost_with_them")


def analyze(w: Workload, studies: Sequence[StudyRecord], naive: dict[str, Any]) -> dict[str, Any]:
    """Every sweep of a workload: the replays, the real pruned sweep against its replay, the samplers."""
    from sweep.tune.pruning import RungPlan

    unpruned = [s for s in studies if not s.pruned]
    by_key = {(s.sampler, s.seed): s for s in unpruned}
    replays: dict[str, Any] = {}
    floor = float(naive["val_stability_mean"])  # what a sweep with references hands its scheduler
    for s in unpruned:
        table, where = replayed(s, reference=floor, tasks=w.tasks)
        result = compare(s.trials, table, naive)
        result.update(stopped_at=where, wall_s=s.wall_s, sampler=s.sampler, sampler_seed=s.seed,
                      rung_signal=rung_signal(s), hindsight=hindsight(s, naive))
        # what if the first decision came one epoch later (--prune-grace 2): a replay too, reported only
        later, later_where = replayed(s, RungPlan(w.tasks, w.epochs, ETA, GRACE + 1), reference=floor, tasks=w.tasks)
        what_if = compare(s.trials, later, naive)
        result[f"grace_{GRACE + 1}"] = {key: what_if[key] for key in WHAT_IF_KEYS} | {"stopped_at": later_where}
        # what the means alone would have done (--prune-noise 0, the rule before the noise): reported only
        plain, plain_where = replayed(s, noise=0.0, reference=floor, tasks=w.tasks)
        what_if = compare(s.trials, plain, naive)
        result["noise_0"] = {key: what_if[key] for key in WHAT_IF_KEYS} | {"stopped_at": plain_where}
        # the front exception alone (--prune-min-share 0, or a sweep without references): reported only
        front_only, front_where = replayed(s, min_share=0.0)
        what_if = compare(s.trials, front_only, naive)
        result["min_share_0"] = {key: what_if[key] for key in WHAT_IF_KEYS} | {"stopped_at": front_where}
        replays[f"{s.sampler}-s{s.seed}"] = result
    real: dict[str, Any] = {}
    for s in (s for s in studies if s.pruned):
        twin = by_key.get((s.sampler, s.seed))
        if twin is None:
            continue
        result = compare(twin.trials, s.trials, naive)
        # the rule it ran with (a sweep from before --prune-noise judged on the means alone), and the floor its
        # scheduler read from its own naive reference (a sweep from before the floor ran none)
        noise, min_share, own = s.noise, s.min_share, s.naive_stability
        # the live scheduler's decisions against a replay of the pruned sweep's own rung records (start order)
        _, predicted = replayed(StudyRecord(s.name, s.sampler, s.seed, False, s.wall_s, s.trials, s.rungs),
                                noise=noise, min_share=min_share, reference=own, tasks=w.tasks)
        twin_table, _ = replayed(twin, noise=noise, min_share=min_share, reference=own, tasks=w.tasks)
        twin_replay = compare(twin.trials, twin_table, naive)
        actual = {str(r["trial_id"]) for _, r in s.trials.iterrows() if r["status"] == "pruned"}
        result.update(
            wall_s=s.wall_s, sampler=s.sampler, sampler_seed=s.seed, noise=noise, min_share=min_share,
            naive_stability=own,
            replay_of_its_own_rungs={"stopped_live": len(actual), "stopped_in_replay": len(predicted),
                                     "agree": len(actual & set(predicted)) + sum(
                                         1 for t in s.trials["trial_id"] if t not in actual and t not in predicted),
                                     "of": len(s.trials)},
            replay_of_the_unpruned_twin={k: twin_replay[k] for k in (
                "pruned_trials", "pruned_compute_fraction", "val_hv_kept", "compute_to_95_fraction", "test_hv_ratio")},
        )
        real[f"{s.sampler}-s{s.seed}"] = result
    samplers: dict[str, Any] = {}
    for sampler, seed in sorted(by_key):
        points = replays[f"{sampler}-s{seed}"]["curves"]
        budget = points["unpruned"][-1]["compute_samples"] if points["unpruned"] else 0.0
        samplers[f"{sampler}-s{seed}"] = {
            "sampler": sampler, "sampler_seed": seed,
            "val_hv_at_budget": {f"{b:g}": at_budget(points["unpruned"], b * budget) for b in BUDGETS},
            "pruned_val_hv_at_budget": {f"{b:g}": at_budget(points["pruned"], b * budget) for b in BUDGETS},
            "test_hv": replays[f"{sampler}-s{seed}"]["test_hv"]["unpruned"],
        }
    return {"workload": w.title, "naive": naive, "replays": replays, "real_pruned": real, "samplers": samplers}


# --- rows
def _worst(values: dict[str, float | None], larger_is_worse: bool) -> tuple[str, float]:
    """(key, value) of the worst seed; a missing value (never reached) is the worst of all."""
    filled = {k: (math.inf if larger_is_worse else -math.inf) if v is None else v for k, v in values.items()}
    key = (max if larger_is_worse else min)(filled, key=lambda k: filled[k])
    return key, filled[key]


def rows_for(w: Workload, result: dict[str, Any], trials: int) -> list[Row]:
    tpe = {k: v for k, v in result["replays"].items() if v["sampler"] == "tpe"}
    common = {"workload": w.title, "trials": trials,
              "seeds_per_trial": SEEDS_PER_TRIAL, "concurrent": CONCURRENT, "eta": ETA, "grace": GRACE,
              "naive": result["naive"]}
    rows = []

    # 1. compute to reach 95% of the unpruned final validation hypervolume, worst TPE seed
    fractions = {k: (v["compute_to_95_fraction"]["pruned"] or {}).get("compute_samples") for k, v in tpe.items()}
    key, worst = _worst(fractions, larger_is_worse=True)
    seed_result = tpe[key]
    reached = seed_result["compute_to_95"]["pruned"]
    per_seed = {k: {"pruned_trials": v["pruned_trials"], "stopped_at": v["stopped_at"],
                    "compute_to_95_fraction": v["compute_to_95_fraction"],
                    "pruned_compute_fraction": v["pruned_compute_fraction"], "val_hv": v["val_hv"],
                    "val_hv_kept": v["val_hv_kept"], "unpruned_compute": v["unpruned_compute"],
                    "compute_to_95": v["compute_to_95"], "front_size": v["front_size"],
                    "front_trials_stopped": v["front_trials_stopped"],
                    "val_hv_lost_with_them": v["val_hv_lost_with_them"], "rung_signal": v["rung_signal"],
                    f"grace_{GRACE + 1}": v[f"grace_{GRACE + 1}"], "min_share_0": v["min_share_0"],
                    "noise_0": v["noise_0"], "hindsight": v["hindsight"],
                    "wall_s": v["wall_s"]}
                for k, v in tpe.items()}
    rows.append(Row(
        f"pruning_{w.name}_compute",
        "compute (samples through the model from task 2 on) the pruned sweep (replayed) needs to reach 95% of "
        "the unpruned sweep's final validation hypervolume, vs the unpruned sweep's whole compute; worst TPE seed",
        "samples", None if reached is None else reached["compute_samples"],
        seed_result["unpruned_compute"]["compute_samples"], None if reached is None else worst, "pruned / unpruned",
        "<=", TARGET_COMPUTE, f"<= {TARGET_COMPUTE:g} in every seed",
        passed=False if reached is None else None,
        details={**common, "worst_seed": key, "per_seed": per_seed,
                 "optimizer_steps_fraction_worst": max(
                     ((v["compute_to_95_fraction"]["pruned"] or {}).get("optimizer_steps") or math.inf)
                     for v in tpe.values()),
                 "curves": {k: v["curves"] for k, v in tpe.items()}}))

    # 2. test hypervolume of the two final fronts, worst TPE seed
    ratios = {k: v["test_hv_ratio"] for k, v in tpe.items()}
    key, worst = _worst(ratios, larger_is_worse=False)
    rows.append(Row(
        f"pruning_{w.name}_test_hv", "test-split hypervolume of the pruned (replayed) sweep's finished trials vs "
        "the unpruned sweep's, reference (naive's test stability, 0); worst TPE seed", "",
        tpe[key]["test_hv"]["pruned"], tpe[key]["test_hv"]["unpruned"], worst if math.isfinite(worst) else None,
        "pruned / unpruned", ">=", TARGET_TEST_HV, f">= {TARGET_TEST_HV:g} in every seed",
        details={**common, "worst_seed": key, "per_seed": {k: {"test_hv": v["test_hv"], "ratio": v["test_hv_ratio"]}
                                                           for k, v in tpe.items()}}))

    # 3. sweep choose on both, in the unpruned choice's std over seeds
    apart = {k: max(v["choice_stds_apart"].values()) for k, v in tpe.items()}
    key, worst = _worst(apart, larger_is_worse=True)
    chosen = tpe[key]["choice"]
    rows.append(Row(
        f"pruning_{w.name}_choice", f"`sweep choose --maximize stability --constraint \"{CONSTRAINT}\"` on the "
        "pruned (replayed) study vs the unpruned one: test stability of each choice; the ratio is the larger gap "
        "(stability or plasticity) in the unpruned choice's std over seeds; worst TPE seed", "",
        (chosen["pruned"] or {}).get("test_stability_mean"), (chosen["unpruned"] or {}).get("test_stability_mean"),
        worst if math.isfinite(worst) else None, "stds apart", "<=", TARGET_STDS, f"<= {TARGET_STDS:g} std",
        passed=False if not math.isfinite(worst) else None,
        details={**common, "constraint": CONSTRAINT, "worst_seed": key,
                 "per_seed": {k: {"choice": v["choice"], "stds_apart": v["choice_stds_apart"],
                                  "gap_points": v["choice_gap_points"]} for k, v in tpe.items()}}))

    # 4. the real pruned sweep against the replay of its unpruned twin
    for key, real in result["real_pruned"].items():
        twin = real["replay_of_the_unpruned_twin"]
        ours = (real["compute_to_95_fraction"]["pruned"] or {}).get("compute_samples")
        rows.append(Row(
            f"pruning_{w.name}_real", f"a real --prune sweep ({key}): its compute as a share of the unpruned "
            "sweep's, vs the replay's share (reported; compute to 95%, test hypervolume and the choice in details)",
            "share", real["pruned_compute_fraction"]["compute_samples"],
            twin["pruned_compute_fraction"]["compute_samples"],
            real["pruned_compute_fraction"]["compute_samples"] / twin["pruned_compute_fraction"]["compute_samples"]
            if twin["pruned_compute_fraction"]["compute_samples"] else None, "real / replay", REPORTED, 0.0,
            "reported",
            details={**common, "sampler": key, "pruned_trials": real["pruned_trials"],
                     "compute_to_95_fraction": real["compute_to_95_fraction"], "to_95_share": ours,
                     "val_hv": real["val_hv"], "val_hv_kept": real["val_hv_kept"], "test_hv": real["test_hv"],
                     "test_hv_ratio": real["test_hv_ratio"], "choice": real["choice"],
                     "choice_stds_apart": real["choice_stds_apart"], "wall_s": real["wall_s"],
                     "replay_of_its_own_rungs": real["replay_of_its_own_rungs"], "replay": twin,
                     "curves": real["curves"]}))

    # 5. samplers on the same curve (unpruned; the replayed pruned curve beside it)
    samplers = result["samplers"]
    if len({v["sampler"] for v in samplers.values()}) > 1:
        tpe0, random0 = samplers.get("tpe-s0"), samplers.get("random-s0")
        if tpe0 is not None and random0 is not None and random0["val_hv_at_budget"]["1"]:
            rows.append(Row(
                f"pruning_{w.name}_samplers", "unpruned validation hypervolume after the whole budget, TPE vs "
                "random (seed 0); NSGA-II and the hypervolume at 25% and 50% of the budget in details", "",
                tpe0["val_hv_at_budget"]["1"], random0["val_hv_at_budget"]["1"],
                tpe0["val_hv_at_budget"]["1"] / random0["val_hv_at_budget"]["1"], "tpe / random", REPORTED, 0.0,
                "reported", details={**common, "samplers": samplers}))
    return rows


def run(settings: Settings) -> list[Row]:
    if settings.quick:  # tiny data; the real --prune sweep on the first workload only
        return measure(settings, trials=QUICK_TRIALS, seeds=(0,), compare={}, real={"split_mnist"})
    return measure(settings)


def measure(settings: Settings, *, trials: int = TRIALS, seeds: Sequence[int] = SAMPLER_SEEDS,
            compare: Mapping[str, Sequence[int]] = COMPARE, real: set[str] | None = None,
            only: set[str] | None = None, results: Path | None = None) -> list[Row]:
    """The row: per workload (``only``: these), the unpruned TPE sweeps on ``seeds``, the real pruned sweep
    of :data:`REAL_PRUNED` (``real``: on these workloads only; None: all) and the ``compare`` samplers'
    unpruned sweeps, then the naive reference and the analysis. ``results``: a folder of studies to
    continue (a study already there is read, not run again), kept; None: a fresh one, removed unless --keep."""
    started = time.perf_counter()
    rows: list[Row] = []
    timings: dict[str, float] = {}
    folder = studies_dir(settings, f"pruning-{'quick' if settings.quick else 'full'}") if results is None else None
    with folder or nullcontext(results) as where, local_ray():
        assert where is not None
        _log(f"studies in {where}")
        for w in workloads(settings):
            if only is not None and w.name not in only:
                continue
            w_started = time.perf_counter()
            checkpoint, source = pretrained_checkpoint(settings, w) if w.pretrain else (None, None)
            plan = [("tpe", s, False) for s in seeds]
            if real is None or w.name in real:
                plan.append((*REAL_PRUNED, True))
            plan += [(sampler, s, False) for sampler, ss in compare.items() for s in ss]
            studies = []
            for sampler, seed, prune in plan:
                name = f"{w.name}-{sampler}-s{seed}{'-pruned' if prune else ''}"
                if (where / name / "trials.parquet").is_file() and (where / f"{name}.wall.json").is_file():
                    studies.append(read_study(where, name))
                    continue
                studies.append(run_study(settings, w, where, sampler=sampler, seed=seed, prune=prune,
                                         trials=trials, checkpoint=checkpoint))
            naive = cached_naive(settings, w, where, trials, checkpoint)
            result = analyze(w, studies, naive)
            new = rows_for(w, result, trials)
            for row in new:
                row.details.update(source_model=source, studies={
                    s.name: {"wall_s": s.wall_s, "trials": len(s.trials)} for s in studies})
            rows += new
            timings[w.name] = time.perf_counter() - w_started
            _dump(settings, w, result)
            _log(f"{w.name}: done in {timings[w.name]:.0f} s")
    for row in rows:
        row.details["row_seconds"] = {**timings, "total": time.perf_counter() - started}
    return rows


def cached_naive(settings: Settings, w: Workload, results: Path, trials: int, checkpoint: str | None
                 ) -> dict[str, Any]:
    """:func:`naive_reference` once per folder of studies."""
    path = results / f"{w.name}-naive.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    options = sweep_options(settings, w, results, "naive", sampler="tpe", seed=0, prune=False, trials=trials,
                            checkpoint=checkpoint)
    started = time.perf_counter()
    naive = naive_reference(settings, w, options)
    naive["seconds"] = time.perf_counter() - started
    _log(f"{w.name}: naive reference in {naive['seconds']:.0f} s")
    path.write_text(json.dumps(naive))
    return naive


def _dump(settings: Settings, w: Workload, result: dict[str, Any]) -> None:
    """Everything the analysis computed, beside results.json (the rows carry the summary)."""
    folder = REPO / "bench" / "out"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pruning-{w.name}{'-quick' if settings.quick else ''}.json"
    path.write_text(json.dumps({"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **result},
                               indent=1, default=_json_default, allow_nan=True))


def _json_default(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)

