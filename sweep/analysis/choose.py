"""The production question: which setting, under which constraint, with what evidence.

Constraints are written in a small language (:mod:`sweep.analysis.constraints`), e.g.
``plasticity >= naive - 0.01``. Several constraints must all hold. Among the finished search
trials that meet them, the one with the best objective on the choice split (validation by
default) is chosen; ties go to the better partner objective (plasticity for stability and the
reverse), then to the smaller trial id. The test split is reported beside it, never used to choose.
The outcome, its config and ``chosen.yaml`` are in :mod:`sweep.analysis.chosen`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from sweep.analysis.chosen import (
    CONFIG_SETTINGS,
    HYPERPARAMETER_TYPES,
    Choice,
    plain_scalar,
    read_chosen_config,
    write_choice,
)
from sweep.analysis.constraints import GRAMMAR, REFERENCES, Constraint, ConstraintResult, check_metric, parse_constraint
from sweep.analysis.io import Study
from sweep.analysis.pareto import eligible
from sweep.errors import ConfigError, ResultsError
from sweep.results import schema

__all__ = ["CONFIG_SETTINGS", "GRAMMAR", "HYPERPARAMETER_TYPES", "REFERENCES", "Choice", "Constraint",
           "ConstraintResult", "check_metric", "choose", "format_choice", "parse_constraint", "read_chosen_config",
           "write_choice"]


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
    rows = _candidates(study, split, objective)
    if rows.empty:
        return Choice(study, None, False, objective, maximize, split, (), references, 0, 0, ())

    thresholds = [c.threshold({role: refs[c.metric] for role, refs in references.items()}) for c in parsed]
    margins = _margins(rows, parsed, thresholds, split)
    ok = np.array([all(c.satisfied(m) for c, m in zip(parsed, row)) for row in margins], dtype=bool)
    best, within = _pick(rows, ok, margins, split, objective, partner, maximize)
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
    return Choice(study, rows.iloc[best], bool(ok.any()), objective, maximize, split, results, references,
                  len(rows), int(ok.sum()), within)


def _candidates(study: Study, split: str, objective: str) -> pd.DataFrame:
    """The trials that may be on the front (finished search trials, finite stability and plasticity)
    with a finite objective: a row with NaN stability is broken, whatever its other metrics."""
    rows = study.trials[
        eligible(study.trials, *(schema.metric_column(split, m) for m in ("stability", "plasticity")))
    ]
    values = pd.to_numeric(rows[schema.metric_column(split, objective)], errors="coerce")
    return rows[np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))]


def _margins(
    rows: pd.DataFrame, constraints: Sequence[Constraint], thresholds: Sequence[float], split: str
) -> np.ndarray:
    """(rows, constraints): how far each row is on the right side of each constraint (negative: violated)."""
    margins = np.empty((len(rows), len(constraints)))
    for k, constraint in enumerate(constraints):
        column = pd.to_numeric(rows[schema.metric_column(split, constraint.metric)], errors="coerce")
        margins[:, k] = [
            constraint.margin(v, thresholds[k]) for v in column.to_numpy(dtype=float, na_value=np.nan)
        ]
    return margins


def _pick(
    rows: pd.DataFrame, ok: np.ndarray, margins: np.ndarray, split: str, objective: str, partner: str,
    maximize: bool,
) -> tuple[int, tuple[str, ...]]:
    """The chosen row's position and the other feasible trials within its std of it; when no row is
    feasible, the closest row (smallest total violation) and none."""
    score = (1.0 if maximize else -1.0) * rows[schema.metric_column(split, objective)].to_numpy(dtype=float)
    partner_score = np.nan_to_num(
        rows[schema.metric_column(split, partner)].to_numpy(dtype=float, na_value=np.nan), nan=-np.inf
    )
    trial_ids = rows["trial_id"].astype(str).to_numpy()
    if not ok.any():
        violation = np.where(np.isnan(margins), np.inf, np.maximum(-margins, 0.0)).sum(axis=1)  # +inf margin: met
        return min(range(len(rows)), key=lambda i: (violation[i], -score[i], trial_ids[i])), ()
    candidates = np.flatnonzero(ok)
    # best objective, then the better partner objective, then the smaller trial id: deterministic
    best = int(min(candidates, key=lambda i: (-score[i], -partner_score[i], trial_ids[i])))
    std = float(np.nan_to_num(float(rows[schema.metric_column(split, objective, "std")].iloc[best])))
    return best, tuple(trial_ids[i] for i in candidates if i != best and score[best] - score[i] <= std)


def _percent(value: object, std: object = None) -> str:
    plain = plain_scalar(value)
    if plain is None:
        return "n/a"
    text = f"{100 * float(plain):.1f}%"
    spread = plain_scalar(std)
    return text if spread is None else f"{text} ± {100 * float(spread):.1f}"


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _split_metrics(trial: pd.Series, split: str) -> str:
    """``stability 91.2% ± 0.4, plasticity ..., acc ...`` of ``trial`` on ``split``."""
    columns = {metric: (schema.metric_column(split, metric), schema.metric_column(split, metric, "std"))
               for metric in ("stability", "plasticity", "acc")}
    return ", ".join(f"{metric} {_percent(trial[mean], trial[std])}" for metric, (mean, std) in columns.items())


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
    n_seeds = plain_scalar(trial["n_seeds"])
    notes = ("chose it", "confirms it") if choice.feasible else ("", "")
    for split, note in zip((choice.split, choice.confirm_split), notes):
        lines.append(f"  {split:<4} ({note + ', ' if note else ''}{n_seeds} seeds): " + _split_metrics(trial, split))
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
