"""The outcome of ``sweep choose``: a :class:`Choice`, its training config and evidence, ``chosen.yaml``.

The config is what ``sweep train --config`` reads back: the trial's ``config`` column, its settings
and every hyperparameter it ran with, each typed as :class:`~sweep.config.TrainConfig` expects.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweep.analysis.constraints import ConstraintResult
from sweep.analysis.io import Study, write_atomic
from sweep.errors import ConfigError, ResultsError
from sweep.hparams import BY_NAME
from sweep.results import schema

CONFIG_SETTINGS = ("strategy", "benchmark", "scenario", "model", "num_tasks")
# TrainConfig's types, from the hyperparameter table: a value read back from a float64 Parquet column
# (3.0 epochs) is written as the int TrainConfig expects
HYPERPARAMETER_TYPES: dict[str, type] = {name: BY_NAME[name].type for name in schema.HYPERPARAMETERS}


@dataclass(frozen=True, eq=False)
class Choice:
    """The outcome of :func:`sweep.analysis.choose.choose`.

    Attributes:
        study: The study chosen from.
        trial: The chosen trial's row when :attr:`feasible`, else the closest trial (smallest total
            violation), or ``None`` when the study has no finished search trial.
        feasible: Whether some trial met every constraint.
        objective: The metric optimised.
        maximize: ``True`` to maximise it, ``False`` to minimise.
        split: The split the choice was made on.
        results: Each constraint evaluated on :attr:`trial`.
        references: ``{role: {metric: value}}`` on :attr:`split`, for the metrics involved.
        n_candidates: Finished search trials with finite stability, plasticity and objective.
        n_feasible: How many of them met every constraint.
        within_noise: Other feasible trials whose objective is within the chosen one's std.
    """

    study: Study
    trial: pd.Series | None
    feasible: bool
    objective: str
    maximize: bool
    split: str
    results: tuple[ConstraintResult, ...]
    references: dict[str, dict[str, float]]
    n_candidates: int
    n_feasible: int
    within_noise: tuple[str, ...]

    @property
    def confirm_split(self) -> str:
        """The split reported beside the choice (test, when the choice was made on val)."""
        return next(split for split in schema.SPLITS if split != self.split)

    def config(self) -> dict[str, object]:
        """The flat training config of the trial: its ``config`` column (every setting the search did
        not vary: hidden sizes, validation share, class order, checkpoint, ...), then its settings
        columns and every non-null hyperparameter. A row without a config (made by hand) gives the
        columns alone.

        Raises:
            ResultsError: the config column is not a JSON mapping, or a hyperparameter value cannot
                be its TrainConfig type (e.g. 2.5 epochs).
        """
        if self.trial is None:
            raise ResultsError(f"study {self.study.name} has no trial to take a config from")
        config = _config_column(self.trial)
        for column in CONFIG_SETTINGS:
            value = plain_scalar(self.trial[column])
            if value is not None:
                config[column] = int(value) if column == "num_tasks" else value
        for name in schema.HYPERPARAMETERS:
            value = plain_scalar(self.trial[f"hp_{name}"])
            if value is not None:
                config[name] = _typed(name, value, self.trial)
        return config

    def evidence(self) -> dict[str, object]:
        """Why this trial: the question asked, its numbers on both splits and the references."""
        if self.trial is None:
            raise ResultsError(f"study {self.study.name} has no trial to give evidence for")
        trial = self.trial

        def split_metrics(split: str) -> dict[str, dict[str, float | None]]:
            return {
                metric: {
                    "mean": _rounded(trial[schema.metric_column(split, metric)]),
                    "std": _rounded(trial[schema.metric_column(split, metric, "std")]),
                }
                for metric in schema.METRICS
            }

        return {
            "study": self.study.name,
            "trial_id": str(trial["trial_id"]),
            "source": str(self.study.path / "trials.parquet"),
            "split": self.split,
            ("maximize" if self.maximize else "minimize"): self.objective,
            "constraints": [
                {
                    "constraint": result.constraint.text,
                    "value": _rounded(result.value),
                    "threshold": _rounded(result.threshold),
                    "margin": _rounded(result.margin),
                }
                for result in self.results
            ],
            "feasible_trials": self.n_feasible,
            "candidate_trials": self.n_candidates,
            "within_noise": list(self.within_noise),
            "references": {
                role: {m: _rounded(v) for m, v in values.items()} for role, values in self.references.items()
            },
            "n_seeds": plain_scalar(trial["n_seeds"]),
            "seeds": plain_scalar(trial["seeds"]),
            "code_version": plain_scalar(trial["code_version"]),
            self.split: split_metrics(self.split),
            self.confirm_split: split_metrics(self.confirm_split),
        }

    def to_yaml(self) -> str:
        """The ``chosen.yaml`` text: ``config`` (for ``sweep train --config``) and ``evidence``."""
        import yaml  # pyyaml; imported here so that building the CLI parser stays light

        body = yaml.safe_dump(
            {"config": self.config(), "evidence": self.evidence()},
            sort_keys=False,
            allow_unicode=True,
            default_flow_style=False,
        )
        header = (
            f"# chosen by sweep choose from study {self.study.name}:"
            f" {'maximize' if self.maximize else 'minimize'} {self.split} {self.objective}"
            + (f" subject to {'; '.join(r.constraint.text for r in self.results)}" if self.results else "")
            + "\n# `config` is a training config: sweep train --config FILE\n"
        )
        return header + body


def plain_scalar(value: object) -> Any:
    """numpy / pandas scalars -> Python scalars; NaN, NA and None -> None (a cell holds whatever its column does)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _typed(name: str, value: object, trial: pd.Series) -> object:
    kind = HYPERPARAMETER_TYPES.get(name)
    if kind is int:
        whole = isinstance(value, (int, float)) and math.isfinite(value) and float(value).is_integer()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not whole:
            raise ResultsError(f"trial {trial['trial_id']}: hp_{name} = {value!r} is not a whole number")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ResultsError(f"trial {trial['trial_id']}: hp_{name} = {value!r} is not a number")
        return float(value)
    return str(value) if kind is str else value


def _rounded(value: object) -> float | None:
    plain = plain_scalar(value)
    if plain is None:
        return None
    number = float(plain)
    return round(number, 6) if math.isfinite(number) else None


def _config_column(trial: pd.Series) -> dict[str, object]:
    text = plain_scalar(trial["config"])
    if text is None:
        return {}
    try:
        config = json.loads(str(text))
    except (ValueError, RecursionError):
        config = None
    if not isinstance(config, dict):
        raise ResultsError(f"trial {trial['trial_id']}: its config column is not a JSON mapping")
    unknown = sorted(set(config) - set(schema.CONFIG_FIELDS))
    if unknown:
        raise ResultsError(f"trial {trial['trial_id']}: its config has keys this version does not know: "
                           f"{', '.join(map(str, unknown[:5]))}")
    return {key: value for key, value in config.items() if key not in schema.MACHINE_FIELDS and value is not None}


def write_choice(choice: Choice, path: str | os.PathLike[str]) -> Path:
    """Write ``chosen.yaml`` atomically (temporary file, then rename)."""
    return write_atomic(path, choice.to_yaml())


def read_chosen_config(path: str | os.PathLike[str]) -> dict[str, object]:
    """The ``config`` mapping of a ``chosen.yaml``, for ``sweep train --config`` and the Python API.

    Raises:
        ConfigError: the file is missing, not YAML, or has no ``config`` mapping.
    """
    from sweep.config import read_yaml  # with pyyaml: building the CLI parser stays light

    file = Path(path)
    document = read_yaml(file, "chosen config")  # bounded, a regular file, no key given twice
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"{file} has no 'config' mapping (expected the layout sweep choose writes)")
    return config
