"""The Tune callback on the driver: each trial's final result becomes the study's Parquet rows, once,
and a line of the live table."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

from sweep.errors import ResultsError, SweepError
from sweep.hparams import GENERAL_PARAMS
from sweep.results.schema import (
    COMPUTE_COLUMNS,
    DERIVED_COLUMN,
    HYPERPARAMETERS,
    IMPORTANCE_COLUMNS,
    MACHINE_FIELDS,
    METRICS,
    SPLITS,
    metric_column,
)
from sweep.results.store import StudyStore
from sweep.strategies.registry import strategy_params
from sweep.tune.progress import Progress
from sweep.tune.pruning import SuccessiveHalving, _epoch
from sweep.tune.staging import record
from sweep.tune.trial import trial_config


def _code_version() -> str:
    from sweep import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def package_versions() -> dict[str, str]:
    import optuna
    import ray
    import torch

    return {"code_version": _code_version(), "torch_version": torch.__version__, "ray_version": ray.__version__,
            "optuna_version": optuna.__version__}


class ResultSink:
    """Tune callback, on the driver: each trial's final result becomes Parquet rows, once; a line of the
    per-trial table, and the live status line (:class:`~sweep.tune.progress.Progress`) of ``total`` trials."""

    def __init__(self, store: StudyStore, study: str, versions: dict[str, str], setup: dict[str, Any],
                 quiet: bool, total: int | None = None, halving: SuccessiveHalving | None = None) -> None:
        from ray.tune import Callback

        self.store, self.study, self.versions, self.setup, self.quiet = store, study, versions, setup, quiet
        self.halving = halving  # the scheduler of a --prune sweep: which trials it stopped, and why
        self.rungs: dict[str, list[dict[str, Any]]] = {}  # trial id -> its rung records, written with its rows
        self.printed_header = False
        self.failure: ResultsError | None = None  # a trial that finished and could not be written: the sweep stops
        trained = [row for row in store.trials if not row.get(DERIVED_COLUMN)]  # not the free variants of one
        self.progress = Progress(total if total is not None else len(trained), trained,
                                 enabled=not quiet and total is not None)
        self.folders: set[tuple[Any, ...]] = set()  # node folders already in the study's writes.json
        sink = self

        class _Callback(Callback):
            def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
                if result.get("wrote"):  # the folder this trial's node holds for the study: recorded for clean
                    sink.record_folder(result["wrote"])
                if result.get("rung_task") is not None and not result.get("final"):
                    sink.record_rung(trial.trial_id, trial.config, result)
                if result.get("final"):
                    sink.record(trial.trial_id, trial.config, result)

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                sink.record_error(trial)
                sink.progress.trial_stopped(trial.trial_id)

            def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                sink.progress.trial_started(trial.trial_id)

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                sink.progress.trial_stopped(trial.trial_id)

            def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
                sink.progress.tick()

            def on_experiment_end(self, trials: list, **info: Any) -> None:
                sink.progress.phase_ended()

        self.callback = _Callback()

    def _row(self, trial_id: str, params: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
        role = params.get("role", "search")
        config = trial_config(self.setup["base_config"], params)
        relevant = set(GENERAL_PARAMS) | set(strategy_params(config.strategy))
        seeds = self.setup["seeds"]
        row = {
            "study": self.study, "trial_id": trial_id, "status": status, "reason": reason, "role": role,
            "strategy": config.strategy, "benchmark": config.benchmark, "scenario": config.scenario,
            "model": config.model, "num_tasks": self.setup["num_tasks"],
            **{f"hp_{k}": (getattr(config, k) if k in relevant else None) for k in HYPERPARAMETERS},
            "n_seeds": len(seeds), "seeds": ",".join(map(str, seeds)),
            # settings and the strategy's own hyperparameters; not the other strategies' defaults
            "config": json.dumps({k: v for k, v in config.to_dict().items() if k not in MACHINE_FIELDS
                                  and v is not None and (k not in HYPERPARAMETERS or k in relevant)}),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            **self.versions,
        }
        return row

    def record_folder(self, wrote: Any) -> None:
        """Add the node folder a trial reports to the study's record (once), for ``sweep clean``."""
        key = tuple(sorted(wrote.items())) if isinstance(wrote, dict) else ()
        if key and key not in self.folders:
            record(self.store.dir, wrote)
            self.folders.add(key)

    def record_rung(self, trial_id: str, params: dict[str, Any], result: dict[str, Any]) -> None:
        """Keep what the trial reported at a rung; when the scheduler stopped it there, record it as pruned."""
        task, epoch = int(result["rung_task"]), _epoch(result)
        stopped = self.halving.stopped.get(trial_id) if self.halving is not None else None
        here = stopped is not None and stopped[:2] == (task, epoch)
        kept = self.rungs.setdefault(trial_id, [])
        kept[:] = [r for r in kept if (r["task"], r["epoch"]) != (task, epoch)]  # a retried trial reports it again
        kept.append({
            "study": self.study, "trial_id": trial_id, "task": task, "epoch": epoch,
            **{f"val_{m}_{st}": result.get(f"val_{m}_{st}")
               for m in ("stability", "plasticity") for st in ("mean", "std")},
            "compute_samples": result.get("compute_samples"), "optimizer_steps": result.get("optimizer_steps"),
            "decides": bool(result.get("rung_decides")), "stopped": here})
        if here and stopped is not None and self.halving is not None:
            reason = stopped[2].reason(self.halving.eta, task, epoch)
            self.record(trial_id, params, {**result, "status": "pruned", "reason": reason})

    def record(self, trial_id: str, params: dict[str, Any], result: dict[str, Any]) -> None:
        if self.store.has(trial_id):
            return
        status = result.get("status", "finished")
        row = self._row(trial_id, params, status, result.get("reason", ""))
        if status == "finished":
            row.update({metric_column(s, m, st): result.get(metric_column(s, m, st)) for s in SPLITS
                        for m in METRICS for st in ("mean", "std")})
        if status == "pruned":  # partial values in columns of their own: never read as a finished trial's
            row.update({"pruned_task": result["rung_task"], "pruned_epoch": result.get("rung_epoch") or None,
                        **{f"partial_val_{m}_{st}": result.get(f"val_{m}_{st}") for m in ("stability", "plasticity")
                           for st in ("mean", "std")}})
        row.update({name: result.get(name) for name in COMPUTE_COLUMNS})
        row.update({name: result.get(name) for name in IMPORTANCE_COLUMNS})
        row["trainable_params"] = result.get("trainable_params")  # the adapter strategy's count; null otherwise
        row.update({"fisher_mean": result.get("fisher_mean"), "fisher_trace": result.get("fisher_trace"),
                    "duration_s": result.get("duration_s"), "node": result.get("node")})
        accuracy = self._accuracy(trial_id, result.get("accuracy"))
        derived = [self._derived(trial_id, params, point) for point in result.get("derived") or []]
        self._commit(row, accuracy, derived)
        self.progress.trial_recorded(row, lambda: self._print(row))
        for point_row, _ in derived:
            self._print(point_row)

    def _accuracy(self, trial_id: str, matrices_by_seed: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The accuracy file's rows of a trial's matrices (rows never reached read -1 and are left out)."""
        accuracy = []
        for seed, matrices in (matrices_by_seed or {}).items():
            for split in SPLITS:
                if not matrices.get(split):
                    continue
                for i, acc in enumerate(matrices[f"initial_{split}"]):
                    accuracy.append({"study": self.study, "trial_id": trial_id, "seed": int(seed), "split": split,
                                     "after_task": 0, "eval_task": i + 1, "accuracy": acc})
                for t, row_values in enumerate(matrices[split]):
                    for i, acc in enumerate(row_values):
                        if acc >= 0:  # -1 marks rows never reached (a diverged run)
                            accuracy.append({"study": self.study, "trial_id": trial_id, "seed": int(seed),
                                             "split": split, "after_task": t + 1, "eval_task": i + 1,
                                             "accuracy": acc})
        return accuracy

    def _derived(self, trial_id: str, params: dict[str, Any], point: dict[str, Any]
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A free variant of the trial's final model (an α of the grid) as a row of its own: its config values
        in its hp_ columns and config, its metrics and accuracy rows; no compute of its own."""
        values = dict(point["values"])
        # "<trial>-a0.25": the α (interp_last_alpha) of the grid point; its hp_ column holds it exactly
        point_id = f"{trial_id}-a" + "-".join(f"{v:.6g}" for v in values.values())
        row = self._row(point_id, {**params, **values}, "finished", "")
        row.update({metric_column(s, m, st): point.get(metric_column(s, m, st)) for s in SPLITS
                    for m in METRICS for st in ("mean", "std")})
        row[DERIVED_COLUMN] = trial_id
        return row, self._accuracy(point_id, point.get("accuracy"))

    def record_error(self, trial: Any) -> None:
        if self.store.has(trial.trial_id):
            return
        reason = "trial raised an error"
        try:
            error_file = trial.error_file
            if error_file and Path(error_file).exists():
                lines = [ln for ln in Path(error_file).read_text().strip().splitlines() if ln.strip()]
                reason = lines[-1][:300] if lines else reason
        except Exception:  # the reason is a courtesy; the status is what matters
            pass
        row = self._row(trial.trial_id, trial.config, "error", reason)
        self._commit(row, [])
        self.progress.trial_recorded(row, lambda: self._print(row))

    def _commit(self, row: dict[str, Any], accuracy: list[dict[str, Any]],
                derived: list[tuple[dict[str, Any], list[dict[str, Any]]]] | None = None) -> None:
        """Write the trial's rows, or stop the sweep with one line naming the trial that is lost.

        Raised from inside Tune's callback, the error ends ``fit()`` before Optuna is told the trial
        ended: the Optuna trial stays running, a resume closes it as failed and runs it again, and the
        Parquet files (the previous ones, whole) stay the record of what finished.
        """
        try:
            self.store.add(row, accuracy, self.rungs.pop(row["trial_id"], []), derived or [])
        except (OSError, SweepError) as err:
            cause = (err.strerror or str(err)) if isinstance(err, OSError) else str(err)
            # kept: Tune turns a callback's error into a TuneError of its traceback, the driver raises this one
            self.failure = ResultsError(f"trial {row['trial_id']} finished but could not be written to "
                                        f"{self.store.trials_path} ({cause}); it is lost and runs again on --resume "
                                        "once the folder is writable (finished trials are saved)")
            raise self.failure from None

    def _print(self, row: dict[str, Any]) -> None:
        if self.quiet:
            return
        params = self.setup["searched"]
        if not self.printed_header:
            print(f"{'trial':<14}{'role':<8}" + "".join(f"{p:>21}" for p in params)
                  + f"{'stability %':>16}{'plasticity %':>16}  status", flush=True)
            self.printed_header = True
        values = "".join(f"{format_value(row.get('hp_' + p)) if row['role'] == 'search' else '-':>21}" for p in params)
        shown = "partial_val" if row["status"] == "pruned" else "val"  # a pruned trial's values at its rung
        stab = format_pm(row.get(f"{shown}_stability_mean"), row.get(f"{shown}_stability_std"))
        plas = format_pm(row.get(f"{shown}_plasticity_mean"), row.get(f"{shown}_plasticity_std"))
        note = row["status"] + (f" ({row['reason'][:60]})" if row["reason"] else "")
        print(f"{row['trial_id']:<14}{row['role']:<8}{values}{stab:>16}{plas:>16}  {note}", flush=True)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}±{100 * (std or 0):.1f}"
