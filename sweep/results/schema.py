"""The results contract: column names of ``trials.parquet`` and ``accuracy.parquet``.

The sweep writes these files and the analysis side reads only them. A file whose
``schema_version`` differs, or which lacks a required column, is refused with a
:class:`~sweep.errors.ResultsError` rather than misread; a hyperparameter column it lacks (it
was written before that hyperparameter existed) reads as null.
"""

from __future__ import annotations

from sweep import hparams

SCHEMA_VERSION = 2  # 2: the config column. Raised only for a change old readers cannot survive

# TrainConfig's fields, the keys the config column may hold; from the hyperparameter table, so
# that analysis reads a config without importing the trainer's side (and torch)
CONFIG_FIELDS = hparams.FIELD_NAMES
MACHINE_FIELDS = hparams.UNRECORDED  # TrainConfig fields the config column leaves out

# a study folder: results/<study>/
TRIALS_FILE = "trials.parquet"
ACCURACY_FILE = "accuracy.parquet"
RUNGS_FILE = "rungs.parquet"  # what each trial reported at each rung (sweep.tune.pruning), with its trial
STUDY_FILE = "study.json"  # the study's settings: base_config (every trial's fixed part), seeds, objective, defaults

SPLITS = ("val", "test")  # val is what the search optimises; test is reported, never searched on
METRICS = ("stability", "plasticity", "acc", "bwt", "fwt", "forgetting", "retention")  # see sweep.metrics
STATUSES = ("finished", "error", "diverged", "pruned")  # pruned: stopped at a rung by `sweep run --prune`
ROLES = ("search", "naive", "joint")  # naive and joint are the references every study runs

# every hyperparameter a trial can carry; each becomes the column f"hp_{name}". A file written before
# one existed lacks its column, which reads as null: the default of its time (the study's study.json
# records the table's defaults when it started), so adding one needs no new SCHEMA_VERSION
HYPERPARAMETERS = hparams.HYPERPARAMETERS
HP_COLUMNS = tuple(f"hp_{name}" for name in HYPERPARAMETERS)  # may be absent from a file: null

# a pruned trial: the rung it was stopped at and what it reported there, in columns no reader of the
# final metrics (val_*, test_*, null for it) can take for final ones
PRUNED_COLUMNS = (
    "pruned_task",  # 1-based
    "pruned_epoch",  # 1-based inside the task; null: at the task's end
    *(f"partial_val_{m}_{stat}" for m in ("stability", "plasticity") for stat in ("mean", "std")),
)
# the work a trial did, counted exactly and summed over its seeds (sweep.strategies.base.Compute): from
# task 2 on, by kind and in total (samples through the model), and task 1's apart (0: from the prefix cache)
COMPUTE_COLUMNS = ("optimizer_steps", "train_samples", "fisher_samples", "eval_passes", "eval_samples",
                   "compute_samples", "task1_samples", "forward_samples")
# a free variant of a trained trial's final model (interpolation's α grid: sweep.strategies.interp) is a row of
# its own, id "<trial>-a<α>", its values in its hp_ columns, no compute of its own; null for a trained trial
DERIVED_COLUMN = "derived_from"
# the scale SI's c and MAS's λ multiply, as fisher_mean/fisher_trace for EWC's λ: mean and sum of the importance Ω
# over every weight, the Ω the last task was penalised with (the strategies' stats; NaN or null without one)
IMPORTANCE_COLUMNS = ("si_importance_mean", "si_importance_trace", "mas_importance_mean", "mas_importance_trace")
# the parameters each task from task 2 on trains (the adapter strategy's stats: its adapters and the head); null
# for a strategy that does not report it (every parameter trains)
TRAINABLE_COLUMN = "trainable_params"
# columns added after schema_version 2's first files: absent from an older file, they read as null
OPTIONAL_COLUMNS = (*HP_COLUMNS, *PRUNED_COLUMNS, *COMPUTE_COLUMNS, DERIVED_COLUMN, *IMPORTANCE_COLUMNS,
                    TRAINABLE_COLUMN)


def metric_column(split: str, metric: str, stat: str = "mean") -> str:
    """``metric_column("val", "stability")`` -> ``"val_stability_mean"``."""
    return f"{split}_{metric}_{stat}"


TRIAL_ID_COLUMNS = ("study", "trial_id")
TRIALS_COLUMNS = (
    "study",
    "trial_id",
    "status",  # one of STATUSES
    "reason",  # why a trial errored or diverged; "" when finished
    "role",  # one of ROLES
    DERIVED_COLUMN,  # the trial id a derived row's model comes from without training; null otherwise
    "strategy",  # e.g. "ewc+replay"
    "benchmark",
    "scenario",
    "model",
    "num_tasks",
    *HP_COLUMNS,
    "n_seeds",
    "seeds",  # comma-separated, e.g. "0,1,2"
    # the trial's whole TrainConfig as JSON, seed and data_root left out (the seeds column has the
    # seeds; a data root is a path on the machine that ran the sweep): what `sweep choose` writes out
    "config",
    *(metric_column(s, m, stat) for s in SPLITS for m in METRICS for stat in ("mean", "std")),
    *PRUNED_COLUMNS,
    *COMPUTE_COLUMNS,
    "fisher_mean",  # mean of the diagonal Fisher over parameters (NaN without EWC)
    "fisher_trace",  # sum of the diagonal Fisher
    *IMPORTANCE_COLUMNS,  # SI's and MAS's importance scale (NaN or null without them)
    TRAINABLE_COLUMN,  # parameters a task from task 2 on trains (adapters); null when not reported
    "duration_s",
    "node",  # the Ray node the trial ran on
    "finished_at",  # ISO 8601, UTC, to the millisecond: with duration_s, the trials' timeline
    "code_version",
    "torch_version",
    "ray_version",
    "optuna_version",
    "schema_version",
)

ACCURACY_COLUMNS = (
    "study",
    "trial_id",
    "seed",
    "split",  # "val" or "test"
    "after_task",  # 0 = the untrained model (for FWT), then 1..T
    "eval_task",  # 1..T
    "accuracy",  # fraction in [0, 1]
)

RUNGS_COLUMNS = (
    "study",
    "trial_id",
    "task",  # 1-based, from 2
    "epoch",  # 1-based inside the task; null: the task's end
    *(f"val_{m}_{stat}" for m in ("stability", "plasticity") for stat in ("mean", "std")),
    "compute_samples",  # the trial's work from task 2 on when it got there (as COMPUTE_COLUMNS)
    "optimizer_steps",
    "decides",  # whether a report at this rung could stop a trial (past the grace period)
    "stopped",  # the trial was stopped here
)
