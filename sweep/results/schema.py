"""The results contract: column names of ``trials.parquet`` and ``accuracy.parquet``.

The sweep writes these files and the analysis side reads only them. A file whose
``schema_version`` differs, or which lacks a required column, is refused with a
:class:`~sweep.errors.ResultsError` rather than misread.
"""

from __future__ import annotations

SCHEMA_VERSION = 2  # 2: the config column

# TrainConfig's fields, the keys the config column may hold (a test keeps the two equal): listed here
# so that analysis reads a config without importing the trainer's side (and torch)
CONFIG_FIELDS = (
    "benchmark", "scenario", "num_tasks", "class_order", "data_root", "val_fraction", "model", "hidden",
    "init_weights", "pretrained", "optimizer", "lr", "finetune_lr", "lr_decay", "early_stop_patience", "epochs",
    "batch_size", "weight_decay", "seed", "strategy", "ewc_lambda", "fisher", "fisher_samples", "ewc_mode",
    "ewc_gamma", "distill_temperature", "distill_alpha", "replay_size", "replay_ratio", "l2sp_lambda",
    "frozen_layers",
)
MACHINE_FIELDS = ("seed", "data_root")  # TrainConfig fields the config column leaves out

# a study folder: results/<study>/
TRIALS_FILE = "trials.parquet"
ACCURACY_FILE = "accuracy.parquet"
STUDY_FILE = "study.json"  # the study's settings: base_config (every trial's fixed part), seeds, objective

SPLITS = ("val", "test")  # val is what the search optimises; test is reported, never searched on
METRICS = ("stability", "plasticity", "acc", "bwt", "fwt", "forgetting", "retention")  # see sweep.metrics
STATUSES = ("finished", "error", "diverged")
ROLES = ("search", "naive", "joint")  # naive and joint are the references every study runs

# every hyperparameter a trial can carry; each becomes the column f"hp_{name}"
HYPERPARAMETERS = (
    "lr",
    "finetune_lr",
    "lr_decay",
    "early_stop_patience",
    "epochs",
    "batch_size",
    "optimizer",
    "weight_decay",
    "ewc_lambda",
    "fisher",
    "fisher_samples",
    "ewc_mode",
    "ewc_gamma",
    "distill_temperature",
    "distill_alpha",
    "replay_size",
    "replay_ratio",
    "l2sp_lambda",
    "frozen_layers",
)


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
    "strategy",  # e.g. "ewc+replay"
    "benchmark",
    "scenario",
    "model",
    "num_tasks",
    *(f"hp_{name}" for name in HYPERPARAMETERS),
    "n_seeds",
    "seeds",  # comma-separated, e.g. "0,1,2"
    # the trial's whole TrainConfig as JSON, seed and data_root left out (the seeds column has the
    # seeds; a data root is a path on the machine that ran the sweep): what `sweep choose` writes out
    "config",
    *(metric_column(s, m, stat) for s in SPLITS for m in METRICS for stat in ("mean", "std")),
    "fisher_mean",  # mean of the diagonal Fisher over parameters (NaN without EWC)
    "fisher_trace",  # sum of the diagonal Fisher
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
