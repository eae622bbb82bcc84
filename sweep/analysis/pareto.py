"""Pareto fronts of studies: hypervolume against naive, several studies compared, the no-trade-off check.

The fronts of one trials table, and the conventions (which rows count, what dominates), are in
:mod:`sweep.analysis.dominance`; its functions are importable from here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweep.analysis.dominance import (
    PLASTICITY,
    SEARCH_ONLY,
    STABILITY,
    clearly_dominated,
    column_values,
    eligible,
    front_table,
    hypervolume,
    pareto_front,
)
from sweep.analysis.io import Study
from sweep.errors import ResultsError
from sweep.results import schema

__all__ = ["PLASTICITY", "SEARCH_ONLY", "STABILITY", "TradeoffCheck", "clearly_dominated", "comparison_table",
           "eligible", "front_table", "fronts", "hypervolume", "pareto_front", "reference_point", "study_hypervolume",
           "tradeoff_check"]


def reference_point(study: Study, split: str = "val") -> tuple[float, float]:
    """The default hypervolume reference: (naive's stability on ``split``, 0 plasticity).

    Raises:
        ResultsError: the study has no finished naive reference with a finite stability.
    """
    naive = study.reference("naive")
    column = schema.metric_column(split, "stability")
    if naive is None or not np.isfinite(float(naive[column])):
        raise ResultsError(
            f"study {study.name} has no finished naive reference to anchor the hypervolume; pass ref=(x, y)"
        )
    return float(naive[column]), 0.0


def study_hypervolume(study: Study, split: str = "val", ref: tuple[float, float] | None = None) -> float:
    """Hypervolume of a study's finished search trials on ``split`` (default ref: :func:`reference_point`)."""
    x, y = schema.metric_column(split, "stability"), schema.metric_column(split, "plasticity")
    rows = study.trials[eligible(study.trials, x, y)]
    return hypervolume(
        rows[[x, y]].to_numpy(dtype=float), ref if ref is not None else reference_point(study, split)
    )


def fronts(
    studies: Sequence[Study], split: str = "val", roles: Sequence[str] | None = SEARCH_ONLY
) -> pd.DataFrame:
    """Every study's trials in one table, with each study's front and the front of all of them.

    Returns:
        The concatenated trials with ``study`` set to each :attr:`Study.name`, ``on_front`` (within
        its own study) and ``on_combined_front`` (against every study's trials).
    """
    x, y = schema.metric_column(split, "stability"), schema.metric_column(split, "plasticity")
    frames = []
    for study in studies:
        frame = study.trials.copy()
        frame["study"] = study.name
        frame["on_front"] = pareto_front(frame, x, y, roles)
        frames.append(frame)
    combined = pd.concat(frames, ignore_index=True)
    combined["on_combined_front"] = pareto_front(combined, x, y, roles)
    return combined


def comparison_table(
    studies: Sequence[Study], split: str = "val", ref: tuple[float, float] | None = None
) -> pd.DataFrame:
    """One row per study: its setting, trial counts, front size and hypervolume against one common ref.

    A comparison needs one reference point for all studies; by default it is the lowest naive
    stability among them (so no study's gains are cut off) and 0 plasticity.

    Returns:
        Columns ``study, strategy, benchmark, scenario, finished, front_size, naive_stability,
        hypervolume, ref_stability, ref_plasticity``, sorted by hypervolume, largest first.
    """
    if ref is None:
        ref = (min(reference_point(study, split)[0] for study in studies), 0.0)
    combined = fronts(studies, split)
    rows = []
    for study in studies:
        naive = study.reference("naive")
        rows.append(
            {
                "study": study.name,
                "strategy": study.setting("strategy"),
                "benchmark": study.setting("benchmark"),
                "scenario": study.setting("scenario"),
                "finished": int(study.finished("search").get("derived_from", pd.Series(dtype=object)).isna().sum())
                if "derived_from" in study.trials.columns else len(study.finished("search")),  # trials, not α points
                "front_size": int(combined.loc[combined["study"] == study.name, "on_front"].sum()),
                "on_combined_front": int(
                    combined.loc[combined["study"] == study.name, "on_combined_front"].sum()
                ),
                "naive_stability": math.nan
                if naive is None
                else float(naive[schema.metric_column(split, "stability")]),
                "hypervolume": study_hypervolume(study, split, ref),
                "ref_stability": ref[0],
                "ref_plasticity": ref[1],
            }
        )
    return pd.DataFrame(rows).sort_values("hypervolume", ascending=False, kind="stable", ignore_index=True)


@dataclass(frozen=True)
class TradeoffCheck:
    """Whether any searched setting keeps old tasks better than naive by more than the noise.

    Attributes:
        has_tradeoff: Some finished search trial beats naive's stability by more than its noise.
        best_trial_id: The search trial with the highest stability.
        best_stability: Its stability (mean over seeds).
        best_stability_std: Its std over seeds.
        naive_stability: Naive's stability.
        naive_stability_std: Naive's std over seeds.
        noise: The margin the best trial had to clear: ``max(2 * combined std, min_noise)``.
    """

    has_tradeoff: bool
    best_trial_id: str
    best_stability: float
    best_stability_std: float
    naive_stability: float
    naive_stability_std: float
    noise: float


def tradeoff_check(study: Study, split: str = "val", min_noise: float = 0.01) -> TradeoffCheck | None:
    """Detect a study with no trade-off: nothing the mitigation did moved stability above naive's.

    Each trial's gain over naive is compared with ``max(2 * sqrt(std² + std_naive²), min_noise)``;
    a study where no trial clears it (e.g. EWC in class-incremental form) has nothing to trade.

    Returns:
        The check, or ``None`` when there is no naive reference or no finished search trial.
    """
    naive = study.reference("naive")
    rows = study.finished("search")
    mean, std = schema.metric_column(split, "stability"), schema.metric_column(split, "stability", "std")
    rows = rows[np.isfinite(column_values(rows, mean))]
    if naive is None or rows.empty or not np.isfinite(float(naive[mean])):
        return None
    naive_mean, naive_std = float(naive[mean]), float(np.nan_to_num(float(naive[std])))
    stds = np.nan_to_num(column_values(rows, std))
    noise = np.maximum(2.0 * np.hypot(stds, naive_std), min_noise)
    gains = column_values(rows, mean) - naive_mean
    best = int(np.argmax(column_values(rows, mean)))
    return TradeoffCheck(
        has_tradeoff=bool((gains > noise).any()),
        best_trial_id=str(rows["trial_id"].iloc[best]),
        best_stability=float(column_values(rows, mean)[best]),
        best_stability_std=float(stds[best]),
        naive_stability=naive_mean,
        naive_stability_std=naive_std,
        noise=float(noise[best]),
    )
