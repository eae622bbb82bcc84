"""The Optuna searcher inside Ray Tune, its study in a journal file beside the Parquet files.

On resume, every Optuna trial a killed driver left running is told how it really ended, from the
Parquet rows, so the two records never disagree."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from sweep.results.store import StudyStore
from sweep.tune.options import SweepOptions
from sweep.tune.search_space import SearchSpace
from sweep.tune.trial import OBJECTIVES


def reconcile_optuna(study: Any, store: StudyStore) -> int:
    """Close every trial a killed driver left running, from what the Parquet files recorded."""
    import optuna

    closed = 0
    rows = {row["trial_id"]: row for row in store.trials}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        row = rows.get(trial.user_attrs.get("tune_trial_id"))
        if row is not None and row["status"] in ("finished", "diverged"):
            values = [row.get(f"val_{k}_mean") or 0.0 for k in OBJECTIVES]
            study.tell(trial.number, values if len(study.directions) > 1 else values[0])
        else:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        closed += 1
    return closed


def optuna_searcher(o: SweepOptions, space: SearchSpace, study_dir: Path) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray.tune.search.optuna import OptunaSearch

    class RecordingOptunaSearch(OptunaSearch):
        """Tags each Optuna trial with its Tune trial id, so a resume can reconcile them."""

        def suggest(self, trial_id: str) -> dict | None:
            params = super().suggest(trial_id)
            if trial_id in self._ot_trials:
                self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
            return params

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal")))
    multi = o.objective == "pareto"
    sampler: optuna.samplers.BaseSampler
    if o.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=o.sampler_seed, population_size=max(4, min(50, o.trials // 2)))
    else:
        sampler = optuna.samplers.TPESampler(seed=o.sampler_seed, n_startup_trials=max(2, min(10, o.trials // 3)))
    name = study_dir.name
    directions: list[Literal["maximize"]] = ["maximize", "maximize"] if multi else ["maximize"]
    existing = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
    closed = reconcile_optuna(existing, StudyStore(study_dir))
    if closed and not o.quiet:
        print(f"resume: closed {closed} Optuna trial(s) left running by an interrupted driver", flush=True)
    if multi:
        # multi-objective: metric and mode go on the searcher, never on TuneConfig
        return RecordingOptunaSearch(space=space.optuna_space(), metric=list(OBJECTIVES), mode=["max", "max"],
                                     sampler=sampler, storage=storage, study_name=name)
    return RecordingOptunaSearch(space=space.optuna_space(), metric="objective", mode="max", sampler=sampler,
                                 storage=storage, study_name=name)
