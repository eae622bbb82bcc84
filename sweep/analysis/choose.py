"""The production question: which setting, under which constraint, with what evidence.

A constraint is ``<metric> <op> <rhs>``:

- ``metric``: one of :data:`sweep.schema.METRICS` (``stability``, ``plasticity``, ``retention``, ...);
- ``op``: ``>=``, ``<=``, ``>``, ``<`` (``≥``, ``≤`` also read);
- ``rhs``: a number (``0.95``, ``95%``), a reference (``naive`` or ``joint``: that reference trial's
  value of the same metric on the same split), or a reference combined with a number: ``naive -
  0.01``, ``naive + 0.02``, ``naive * 0.95``, ``0.95 * naive``. ``%`` divides a number by 100.

Several constraints must all hold. Among the finished search trials that meet them, the one with
the best objective on the choice split (validation by default) is chosen; ties go to the better
partner objective (plasticity for stability and the reverse), then to the smaller trial id. The
test split is reported beside it, never used to choose.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sweep.analysis.io import Study, write_atomic
from sweep.analysis.pareto import eligible
from sweep.errors import ConfigError, ResultsError
from sweep.hparams import BY_NAME
from sweep.results import schema

REFERENCES = ("naive", "joint")
CONFIG_SETTINGS = ("strategy", "benchmark", "scenario", "model", "num_tasks")
# TrainConfig's types, from the hyperparameter table: a value read back from a float64 Parquet column
# (3.0 epochs) is written as the int TrainConfig expects
HYPERPARAMETER_TYPES: dict[str, type] = {name: BY_NAME[name].type for name in schema.HYPERPARAMETERS}
_TOLERANCE = 1e-9  # "naive - 0.01" is computed in floating point; an exact tie must still count as met
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?%?"
_CONSTRAINT = re.compile(r"^\s*(?P<metric>[A-Za-z_]+)\s*(?P<op>>=|<=|>|<|≥|≤)\s*(?P<rhs>.+?)\s*$")
_RHS_FORMS = (
    re.compile(rf"^(?P<number>{_NUMBER})$"),
    re.compile(r"^(?P<reference>[A-Za-z]+)$"),
    re.compile(rf"^(?P<reference>[A-Za-z]+)\s*(?P<combine>[-+*])\s*(?P<number>{_NUMBER})$"),
    re.compile(rf"^(?P<number>{_NUMBER})\s*(?P<combine>\*)\s*(?P<reference>[A-Za-z]+)$"),
)
GRAMMAR = "'<metric> >=|<=|>|< <number|naive|joint>[ +|-|* <number>]', e.g. 'plasticity >= naive - 0.01'"


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is a known metric.

    Raises:
        ConfigError: naming the allowed metrics.
    """
    if metric not in schema.METRICS:
        raise ConfigError(f"unknown metric {metric!r}: allowed metrics are {', '.join(schema.METRICS)}")
    return metric


def _number(text: str) -> float:
    return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)


@dataclass(frozen=True)
class Constraint:
    """One parsed constraint; see the module docstring for the grammar.

    Attributes:
        text: The constraint as the user wrote it.
        metric: The metric it bounds.
        op: ``>=``, ``<=``, ``>`` or ``<``.
        reference: ``naive``, ``joint`` or ``None``.
        combine: ``+``, ``-`` or ``*`` when both a reference and a number are given.
        number: The constant, or ``None`` for a bare reference.
    """

    text: str
    metric: str
    op: str
    reference: str | None
    combine: str | None
    number: float | None

    def threshold(self, references: Mapping[str, float]) -> float:
        """The bound, given the references' values of :attr:`metric` (``{"naive": 0.97}``)."""
        if self.reference is None:
            assert self.number is not None
            return self.number
        base = references[self.reference]
        if self.combine is None or self.number is None:
            return base
        return {"+": base + self.number, "-": base - self.number, "*": base * self.number}[self.combine]

    def margin(self, value: float, threshold: float) -> float:
        """How far ``value`` is on the right side of ``threshold`` (negative: violated by that much)."""
        return value - threshold if self.op in (">=", ">") else threshold - value

    def satisfied(self, margin: float) -> bool:
        if not math.isfinite(margin):
            return False
        return margin > _TOLERANCE if self.op in (">", "<") else margin >= -_TOLERANCE


def parse_constraint(text: str) -> Constraint:
    """Parse ``"plasticity >= naive - 0.01"`` and the like.

    Raises:
        ConfigError: bad syntax (the message shows the grammar) or an unknown metric or reference.
    """
    match = _CONSTRAINT.match(text.replace("−", "-"))
    if match is None:
        raise ConfigError(f"bad constraint {text!r}: expected {GRAMMAR}")
    metric = check_metric(match["metric"].lower())
    op = {"≥": ">=", "≤": "<="}.get(match["op"], match["op"])
    for form in _RHS_FORMS:
        rhs = form.match(match["rhs"])
        if rhs is None:
            continue
        parts = rhs.groupdict()
        reference = parts.get("reference")
        if reference is not None:
            reference = reference.lower()
            if reference not in REFERENCES:
                raise ConfigError(
                    f"bad constraint {text!r}: {reference!r} is neither a number nor a reference"
                    f" ({', '.join(REFERENCES)})"
                )
        number = _number(parts["number"]) if parts.get("number") else None
        return Constraint(text.strip(), metric, op, reference, parts.get("combine"), number)
    raise ConfigError(f"bad constraint {text!r}: expected {GRAMMAR}")


@dataclass(frozen=True)
class ConstraintResult:
    """A constraint evaluated on one trial."""

    constraint: Constraint
    value: float
    threshold: float
    margin: float
    satisfied: bool


@dataclass(frozen=True, eq=False)
class Choice:
    """The outcome of :func:`choose`.

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
            value = _plain(self.trial[column])
            if value is not None:
                config[column] = int(value) if column == "num_tasks" else value  # type: ignore[arg-type]
        for name in schema.HYPERPARAMETERS:
            value = _plain(self.trial[f"hp_{name}"])
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
            "n_seeds": _plain(trial["n_seeds"]),
            "seeds": _plain(trial["seeds"]),
            "code_version": _plain(trial["code_version"]),
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


def _plain(value: object) -> object:
    """numpy / pandas scalars -> Python scalars; NaN, NA and None -> None."""
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
        if isinstance(value, bool) or not whole:
            raise ResultsError(f"trial {trial['trial_id']}: hp_{name} = {value!r} is not a whole number")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ResultsError(f"trial {trial['trial_id']}: hp_{name} = {value!r} is not a number")
        return float(value)
    return str(value) if kind is str else value


def _rounded(value: object) -> float | None:
    plain = _plain(value)
    if plain is None:
        return None
    number = float(plain)  # type: ignore[arg-type]
    return round(number, 6) if math.isfinite(number) else None


def _reference_values(
    study: Study, constraints: Sequence[Constraint], split: str, metrics: Sequence[str]
) -> dict[str, dict[str, float]]:
    references: dict[str, dict[str, float]] = {}
    needed = {c.reference for c in constraints if c.reference is not None}
    for role in REFERENCES:
        row = study.reference(role)
        if row is None:
            if role in needed:
                used = next(c.text for c in constraints if c.reference == role)
                raise ResultsError(
                    f"constraint {used!r} refers to {role}, but study {study.name}"
                    f" has no finished {role} trial"
                )
            continue
        references[role] = {m: float(row[schema.metric_column(split, m)]) for m in metrics}
        for constraint in constraints:
            if constraint.reference == role and not math.isfinite(references[role][constraint.metric]):
                raise ResultsError(
                    f"constraint {constraint.text!r} refers to {role},"
                    f" whose {split} {constraint.metric} is missing"
                )
    return references


def choose(
    study: Study,
    objective: str = "stability",
    constraints: Sequence[str | Constraint] = (),
    split: str = "val",
    maximize: bool = True,
) -> Choice:
    """Choose the best finished search trial that meets every constraint.

    Args:
        study: The study.
        objective: Metric to optimise (one of :data:`sweep.schema.METRICS`).
        constraints: Constraint strings or parsed :class:`Constraint`; all must hold.
        split: Split to choose on; ``val`` unless you mean to choose on test.
        maximize: ``False`` to minimise the objective (e.g. ``forgetting``).

    Returns:
        The :class:`Choice`; when nothing is feasible, ``feasible`` is ``False`` and ``trial`` is the
        closest one.

    Raises:
        ConfigError: unknown metric or split, bad constraint syntax.
        ResultsError: a constraint refers to a reference the study does not have.
    """
    check_metric(objective)
    if split not in schema.SPLITS:
        raise ConfigError(f"unknown split {split!r}: allowed splits are {', '.join(schema.SPLITS)}")
    parsed = tuple(c if isinstance(c, Constraint) else parse_constraint(c) for c in constraints)
    partner = "plasticity" if objective == "stability" else "stability"
    metrics = list(dict.fromkeys([objective, partner, *(c.metric for c in parsed)]))
    references = _reference_values(study, parsed, split, metrics)

    # candidates are the trials that may be on the front (finished search trials, finite stability
    # and plasticity) with a finite objective: a row with NaN stability is broken, whatever its other metrics
    rows = study.trials[
        eligible(study.trials, *(schema.metric_column(split, m) for m in ("stability", "plasticity")))
    ]
    objective_column = schema.metric_column(split, objective)
    values = pd.to_numeric(rows[objective_column], errors="coerce")
    rows = rows[np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))]
    if rows.empty:
        return Choice(study, None, False, objective, maximize, split, (), references, 0, 0, ())

    sign = 1.0 if maximize else -1.0
    margins = np.empty((len(rows), len(parsed)))
    thresholds = [c.threshold({role: refs[c.metric] for role, refs in references.items()}) for c in parsed]
    for k, constraint in enumerate(parsed):
        column = pd.to_numeric(rows[schema.metric_column(split, constraint.metric)], errors="coerce")
        margins[:, k] = [
            constraint.margin(v, thresholds[k]) for v in column.to_numpy(dtype=float, na_value=np.nan)
        ]
    ok = np.array([all(c.satisfied(m) for c, m in zip(parsed, row)) for row in margins], dtype=bool)
    score = sign * rows[objective_column].to_numpy(dtype=float)
    partner_score = np.nan_to_num(
        rows[schema.metric_column(split, partner)].to_numpy(dtype=float, na_value=np.nan), nan=-np.inf
    )
    trial_ids = rows["trial_id"].astype(str).to_numpy()

    if ok.any():
        candidates = np.flatnonzero(ok)
        # best objective, then the better partner objective, then the smaller trial id: deterministic
        best = min(candidates, key=lambda i: (-score[i], -partner_score[i], trial_ids[i]))
        std = float(np.nan_to_num(float(rows[schema.metric_column(split, objective, "std")].iloc[best])))
        within = tuple(trial_ids[i] for i in candidates if i != best and score[best] - score[i] <= std)
    else:
        violation = np.where(np.isfinite(margins), np.maximum(-margins, 0.0), np.inf).sum(axis=1)
        best = min(range(len(rows)), key=lambda i: (violation[i], -score[i], trial_ids[i]))
        within = ()
    results = tuple(
        ConstraintResult(
            c,
            float(rows[schema.metric_column(split, c.metric)].iloc[best]),
            thresholds[k],
            float(margins[best, k]),
            c.satisfied(margins[best, k]),
        )
        for k, c in enumerate(parsed)
    )
    return Choice(
        study,
        rows.iloc[best],
        bool(ok.any()),
        objective,
        maximize,
        split,
        results,
        references,
        len(rows),
        int(ok.sum()),
        within,
    )


def _percent(value: object, std: object = None) -> str:
    plain = _plain(value)
    if plain is None:
        return "n/a"
    text = f"{100 * float(plain):.1f}%"  # type: ignore[arg-type]
    spread = _plain(std)
    return text if spread is None else f"{text} ± {100 * float(spread):.1f}"  # type: ignore[arg-type]


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_choice(choice: Choice) -> str:
    """A human-readable account of a :class:`Choice` (what ``sweep choose`` prints)."""
    direction = "maximize" if choice.maximize else "minimize"
    asked = f"{direction} {choice.split} {choice.objective}" + (
        f" subject to {'; '.join(r.constraint.text for r in choice.results)}" if choice.results else ""
    )
    lines = [f"study {choice.study.name}: {asked}"]
    if choice.trial is None:
        lines.append(f"no finished search trial in study {choice.study.name} to choose from")
        return "\n".join(lines)
    trial = choice.trial
    if choice.feasible:
        lines.append(
            f"{choice.n_feasible} of {choice.n_candidates} finished search trials meet the constraints;"
            f" chosen: trial {trial['trial_id']}"
        )
    else:
        lines.append(
            f"no trial meets the constraints ({choice.n_candidates} finished search trials);"
            f" closest: trial {trial['trial_id']} (smallest total violation)"
        )
    config = choice.config()
    hps = {k: config[k] for k in schema.HYPERPARAMETERS if k in config}  # the rest is in chosen.yaml
    lines.append(
        f"  setting: {config.get('strategy')} on {config.get('benchmark')} ({config.get('scenario')}-incremental,"
        f" {config.get('model')}, {config.get('num_tasks')} tasks)"
    )
    lines.append("  hyperparameters: " + (", ".join(f"{k}={_short(v)}" for k, v in hps.items()) or "none"))
    n_seeds = _plain(trial["n_seeds"])
    notes = ("chose it", "confirms it") if choice.feasible else ("", "")
    for split, note in zip((choice.split, choice.confirm_split), notes):
        parts = [
            "{} {}".format(
                metric,
                _percent(
                    trial[schema.metric_column(split, metric)],
                    trial[schema.metric_column(split, metric, "std")],
                ),
            )
            for metric in ("stability", "plasticity", "acc")
        ]
        lines.append(f"  {split:<4} ({note + ', ' if note else ''}{n_seeds} seeds): " + ", ".join(parts))
    for role, values in choice.references.items():
        lines.append(
            f"  {role} reference ({choice.split}): "
            + ", ".join(f"{m} {_percent(v)}" for m, v in values.items())
        )
    for result in choice.results:
        status = "met" if result.satisfied else "VIOLATED"
        lines.append(
            f"  constraint {result.constraint.text}: {result.value:.4f} vs {result.threshold:.4f},"
            f" margin {result.margin:+.4f} ({status})"
        )
    if choice.within_noise:
        lines.append(
            f"  within one std of it on {choice.split} {choice.objective}:"
            f" trial(s) {', '.join(choice.within_noise)}"
            " (more seeds would be needed to separate them)"
        )
    return "\n".join(lines)


def _config_column(trial: pd.Series) -> dict[str, object]:
    text = _plain(trial["config"])
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
    import yaml

    file = Path(path)
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read {file}: {err.strerror or err}") from err
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise ConfigError(f"{file} is not valid YAML ({type(err).__name__})") from err
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"{file} has no 'config' mapping (expected the layout sweep choose writes)")
    return config
