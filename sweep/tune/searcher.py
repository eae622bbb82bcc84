"""The Optuna searcher inside Ray Tune, its study in a journal file beside the Parquet files.

On resume, every Optuna trial a killed driver left running is told how it really ended, from the
Parquet rows, so the two records never disagree."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

from sweep.results.schema import DERIVED_COLUMN
from sweep.results.store import StudyStore
from sweep.tune.options import SweepOptions
from sweep.tune.search_space import SearchSpace
from sweep.tune.trial import OBJECTIVES, told_point


def reconcile_optuna(study: Any, store: StudyStore, objective: dict[str, float] | None = None) -> int:
    """Close every trial a killed driver left running, from what the Parquet files recorded: told what the
    running sweep would have told it (the best-compromise point of a trial with free variants, the
    constrained objective when ``objective`` is set)."""
    import optuna

    closed = 0
    rows = {row["trial_id"]: row for row in store.trials}
    derived: dict[str, list[dict[str, Any]]] = {}
    for point in store.trials:
        if point.get(DERIVED_COLUMN):
            derived.setdefault(point[DERIVED_COLUMN], []).append(point)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        row = rows.get(trial.user_attrs.get("tune_trial_id"))
        if row is not None and row["status"] in ("finished", "diverged"):
            told = told_point(row, derived.get(row["trial_id"], []), objective)
            multi = len(study.directions) > 1
            study.tell(trial.number, [told[k] for k in OBJECTIVES] if multi else told["objective"])
        elif row is not None and row["status"] == "pruned":  # stopped at a rung: never its partial values
            study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        closed += 1
    return closed


JOURNAL_FILE = "optuna.journal"
_TAIL_CHUNK = 1 << 16


def _last_line_start(handle: Any, end: int) -> int:
    """The offset just after the last ``\n`` before ``end`` (0 if none), reading backwards in chunks."""
    pos = end
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        handle.seek(start)
        newline = handle.read(pos - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        pos = start
    return 0


def torn_tail(path: Path) -> int | None:
    """Where the journal's torn last record starts (None: the last record is whole).

    The journal is JSON lines, each appended whole with its newline; a kill (or a full disk) in the
    middle of an append leaves a last line without its newline, or one that is not JSON. Optuna reads
    past such a line, but the next append joins it, and every later read fails.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return None
        handle.seek(size - 1)
        if handle.read(1) != b"\n":
            return _last_line_start(handle, size)
        start = _last_line_start(handle, size - 1)
        handle.seek(start)
        try:
            json.loads(handle.read(size - start))
        except ValueError:  # not JSON, not UTF-8
            return start
        return None


def repair_journal(study_dir: Path) -> Path | None:
    """Cut a torn last record off the study's Optuna journal, keeping the whole file as
    ``optuna.journal.torn-<UTC time>``; return that backup (None: nothing was torn).

    What the torn record said is lost to Optuna, never to the study: the Parquet files are the record
    of what finished, and :func:`reconcile_optuna` closes whatever the cut leaves running.
    """
    path = study_dir / JOURNAL_FILE
    if not path.is_file() or path.is_symlink():
        return None
    cut = torn_tail(path)
    if cut is None:
        return None
    backup = path.with_name(f"{JOURNAL_FILE}.torn-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
    shutil.copyfile(path, backup)
    os.truncate(path, cut)
    return backup


REFERENCE_METRICS = ("stability", "plasticity", "acc")  # of each reference, on both splits, in the study's attrs


def describe_study(study: Any, store: StudyStore, multi: bool) -> None:
    """Name the Optuna study's objectives and record the naive and joint references in its user attributes,
    so that optuna-dashboard shows both with names and the yardsticks beside them.

    The references are attributes, not trials: as trials they would feed the sampler points from outside
    its search space.
    """
    # the constrained objective is validation stability, penalised below the plasticity bound
    import optuna

    with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and what optuna-dashboard reads
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([f"val_{k}" for k in OBJECTIVES] if multi else ["val_stability_constrained"])
    for row in store.trials:
        if row["role"] in ("naive", "joint") and row["status"] == "finished":
            study.set_user_attr(f"reference_{row['role']}", {
                "trial_id": row["trial_id"], "n_seeds": row["n_seeds"],
                **{f"{split}_{metric}_{stat}": _json_number(row.get(f"{split}_{metric}_{stat}"))
                   for split in ("val", "test") for metric in REFERENCE_METRICS for stat in ("mean", "std")}})


def _json_number(value: Any) -> float | None:
    """A metric as JSON holds it: a float, or None for a missing one (NaN is not JSON)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def build_sampler(o: SweepOptions) -> Any:
    """The Optuna sampler of ``--sampler``, seeded with ``--sampler-seed`` and sized to ``--trials``.

    The budget rule, for both model-based samplers: about a quarter of the trials are random, the rest
    come from the model.

    - ``tpe``: ``n_startup_trials`` random trials, a quarter of ``--trials`` within 2..10. Optuna's
      default of 10 is meant for budgets of a hundred trials and more: in the quick start's 12 it would
      leave one or two trials to TPE. Optuna counts only *finished* trials towards the start-up, so with c
      trials at once the first ``n_startup_trials + c - 1`` points are random: 3 + 1 = 4 of the quick
      start's 12 at 2 at once (a third), 10 + 1 of a 40-trial sweep. At least 2: TPE splits the
      finished trials into a better and a worse group and needs one in each. ``constant_liar``: the
      trials still running count as "worse" points where they are, so trials asked while others run
      are spread out instead of landing on the same optimum (Optuna 5 turns it on by default, Optuna
      4 did not; this package allows both). Ray's OptunaSearch asks each trial with ``study.ask``, so
      the running ones are RUNNING trials of the study, with their parameters, which is what the liar
      reads; it works for multi-objective studies too (optuna/samplers/_tpe/sampler.py, ``_sample``).
    - ``nsga2``: a population of a quarter of ``--trials`` within 4..50 (Optuna's default), so that the
      random first generation is that quarter and about three generations of offspring follow
      (``--trials 12``: a random generation of 4, then two of offspring; the former rule, half the
      budget, left one). Under 4, its tournament selection has nearly no choice.
    - ``random``: Optuna's RandomSampler, the baseline the other two must beat.
    """
    import optuna

    quarter = math.ceil(o.trials / 4)
    if o.sampler == "nsga2":
        from sweep.tune.distinct_sampler import DistinctSampler

        return DistinctSampler(optuna.samplers.NSGAIISampler(seed=o.sampler_seed,
                                                             population_size=max(4, min(50, quarter))))
    if o.sampler == "random":
        return optuna.samplers.RandomSampler(seed=o.sampler_seed)
    return optuna.samplers.TPESampler(seed=o.sampler_seed, n_startup_trials=max(2, min(10, quarter)),
                                      constant_liar=True)


def optuna_searcher(o: SweepOptions, space: SearchSpace, study_dir: Path,
                    objective: dict[str, float] | None = None) -> Any:
    """The search, its Optuna study resumed from the journal; ``objective`` is the constrained mode's threshold."""
    import optuna
    from optuna.storages import JournalStorage
    from ray.tune.search.optuna import OptunaSearch

    from sweep.tune.journal_backend import UninterruptedBackend

    class RecordingOptunaSearch(OptunaSearch):
        """Tags each Optuna trial with its Tune trial id, so a resume can reconcile them; a pruned trial is PRUNED."""

        def suggest(self, trial_id: str) -> dict | None:
            params = super().suggest(trial_id)
            if trial_id in self._ot_trials:
                self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
            return params

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            """A trial stopped before its final report (pruned at a rung) is PRUNED, never COMPLETE with
            the partial values of its last report: Ray's OptunaSearch tells PRUNED when no values come."""
            if result is not None and not result.get("final"):
                result = None
            super().on_trial_complete(trial_id, result=result, error=error)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backup = repair_journal(study_dir)  # a torn last record would join the next one and break every later read
    if backup is not None and not o.quiet:
        print(f"resume: cut a torn last record off {JOURNAL_FILE} (the whole file is kept as {backup.name})",
              flush=True)
    # appends an interrupt never cuts in half (no stale optuna.journal.lock, no half record)
    storage = JournalStorage(UninterruptedBackend(str(study_dir / "optuna.journal")))
    multi = o.objective == "pareto"
    sampler = build_sampler(o)
    name = study_dir.name
    directions: list[Literal["maximize"]] = ["maximize", "maximize"] if multi else ["maximize"]
    existing = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
    closed = reconcile_optuna(existing, StudyStore(study_dir), objective)
    describe_study(existing, StudyStore(study_dir), multi)
    if closed and not o.quiet:
        print(f"resume: closed {closed} Optuna trial(s) left running by an interrupted driver", flush=True)
    if multi:
        # multi-objective: metric and mode go on the searcher, never on TuneConfig
        return RecordingOptunaSearch(space=space.optuna_space(), metric=list(OBJECTIVES), mode=["max", "max"],
                                     sampler=sampler, storage=storage, study_name=name)
    return RecordingOptunaSearch(space=space.optuna_space(), metric="objective", mode="max", sampler=sampler,
                                 storage=storage, study_name=name)
