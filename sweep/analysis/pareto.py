"""Stability-plasticity Pareto fronts, their hypervolume, and the seed-aware view.

Conventions (both objectives are maximised):

- A trial counts when ``status == "finished"`` and both values are finite; errored, diverged and
  NaN rows are never on a front. When the table has a ``role`` column, only ``roles`` count
  (default: the search trials). The naive and joint references are yardsticks, not candidates:
  they are plotted beside the front, and naive's stability is the hypervolume's reference point.
- ``p`` dominates ``q`` when ``p >= q`` in both objectives and ``p > q`` in at least one. Equal
  points therefore do not dominate each other and are all on the front, while a point equal in
  one objective and worse in the other is dominated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweep.analysis.io import Study
from sweep.errors import ConfigError, ResultsError
from sweep.results import schema

STABILITY = schema.metric_column("val", "stability")
PLASTICITY = schema.metric_column("val", "plasticity")
SEARCH_ONLY = ("search",)


def _values(df: pd.DataFrame, column: str) -> np.ndarray:
    if column not in df.columns:
        raise ConfigError(
            f"no column {column!r} in the trials table (columns: {', '.join(map(str, df.columns))})"
        )
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def eligible(
    df: pd.DataFrame, x: str = STABILITY, y: str = PLASTICITY, roles: Sequence[str] | None = SEARCH_ONLY
) -> pd.Series:
    """Rows that may be on a front: finished, finite in ``x`` and ``y``, of one of ``roles``."""
    mask = np.isfinite(_values(df, x)) & np.isfinite(_values(df, y))
    if "status" in df.columns:
        mask &= (df["status"] == "finished").to_numpy()
    if roles is not None and "role" in df.columns:
        mask &= df["role"].isin(list(roles)).to_numpy()
    return pd.Series(mask, index=df.index, name="eligible")


def _dominated(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Dominated flags for finite points; O(n log n) sweep from the largest x down."""
    n = len(x)
    dominated = np.zeros(n, dtype=bool)
    order = np.lexsort((-y, -x))  # x descending, then y descending
    best_y_right = -math.inf  # best y among points with strictly larger x
    i = 0
    while i < n:
        j = i
        while j < n and x[order[j]] == x[order[i]]:
            j += 1
        group = order[i:j]
        group_best = y[group[0]]
        for k in group:
            # beaten by a same-x point with larger y, or by a larger-x point with y at least as large
            dominated[k] = y[k] < group_best or best_y_right >= y[k]
        best_y_right = max(best_y_right, group_best)
        i = j
    return dominated


def pareto_front(
    df: pd.DataFrame, x: str = STABILITY, y: str = PLASTICITY, roles: Sequence[str] | None = SEARCH_ONLY
) -> pd.Series:
    """Which rows are non-dominated (maximising ``x`` and ``y``), among the eligible ones.

    Args:
        df: A trials table (schema columns; ``status`` and ``role`` are used when present).
        x: First objective column.
        y: Second objective column.
        roles: Roles that compete; ``None`` for every role.

    Returns:
        Boolean Series named ``on_front``, aligned with ``df``; ineligible rows are ``False``.
    """
    mask = eligible(df, x, y, roles).to_numpy()
    on_front = np.zeros(len(df), dtype=bool)
    on_front[mask] = ~_dominated(_values(df, x)[mask], _values(df, y)[mask])
    return pd.Series(on_front, index=df.index, name="on_front")


def _std_column(column: str) -> str:
    return column[: -len("_mean")] + "_std" if column.endswith("_mean") else ""


def clearly_dominated(
    df: pd.DataFrame, x: str = STABILITY, y: str = PLASTICITY, roles: Sequence[str] | None = SEARCH_ONLY
) -> pd.Series:
    """Dominated rows that stay dominated given the spread over seeds.

    A dominated point is *not clearly dominated* when its mean ± std box overlaps the box of some
    front point that dominates it: with this many seeds the two cannot be told apart. Std columns
    are ``x``/``y`` with ``_mean`` replaced by ``_std``; missing or NaN std counts as 0.

    Returns:
        Boolean Series named ``clearly_dominated``; front points and ineligible rows are ``False``.
    """
    mask = eligible(df, x, y, roles).to_numpy()
    front = pareto_front(df, x, y, roles).to_numpy()
    xs, ys = _values(df, x), _values(df, y)
    spreads = []
    for column in (_std_column(x), _std_column(y)):
        spread = _values(df, column) if column in df.columns else np.zeros(len(df))
        spreads.append(np.nan_to_num(spread, nan=0.0))
    sx, sy = spreads
    result = np.zeros(len(df), dtype=bool)
    front_idx = np.flatnonzero(front)
    for q in np.flatnonzero(mask & ~front):
        dominating = front_idx[(xs[front_idx] >= xs[q]) & (ys[front_idx] >= ys[q])]
        overlaps = (np.abs(xs[dominating] - xs[q]) <= sx[dominating] + sx[q]) & (
            np.abs(ys[dominating] - ys[q]) <= sy[dominating] + sy[q]
        )
        result[q] = not overlaps.any()
    return pd.Series(result, index=df.index, name="clearly_dominated")


def front_table(
    df: pd.DataFrame, x: str = STABILITY, y: str = PLASTICITY, roles: Sequence[str] | None = SEARCH_ONLY
) -> pd.DataFrame:
    """A copy of ``df`` with ``on_front`` and ``clearly_dominated`` columns added."""
    table = df.copy()
    table["on_front"] = pareto_front(df, x, y, roles)
    table["clearly_dominated"] = clearly_dominated(df, x, y, roles)
    return table


def hypervolume(points: np.ndarray | Sequence[Sequence[float]], ref: tuple[float, float]) -> float:
    """Exact 2-D hypervolume (area) dominated by ``points`` and dominating ``ref``, both maximised.

    Points not strictly better than ``ref`` in both objectives, and non-finite points, add nothing.

    Args:
        points: ``(n, 2)`` array of (x, y).
        ref: The reference point (x, y), e.g. (naive's stability, 0 plasticity).

    Returns:
        The area, in the objectives' units squared.
    """
    array = np.asarray(points, dtype=float)
    if array.size == 0:
        return 0.0
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"hypervolume expects (n, 2) points, got shape {array.shape}")
    rx, ry = float(ref[0]), float(ref[1])
    array = array[np.isfinite(array).all(axis=1) & (array[:, 0] > rx) & (array[:, 1] > ry)]
    if len(array) == 0:
        return 0.0
    array = array[np.lexsort((-array[:, 1], -array[:, 0]))]  # x descending
    area, top = 0.0, ry
    xs = np.append(array[:, 0], rx)
    for k in range(len(array)):
        top = max(top, array[k, 1])  # the height over (x[k+1], x[k]] is the best y to its right
        area += (xs[k] - xs[k + 1]) * (top - ry)
    return float(area)


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
                "finished": len(study.finished("search")),
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
    rows = rows[np.isfinite(_values(rows, mean))]
    if naive is None or rows.empty or not np.isfinite(float(naive[mean])):
        return None
    naive_mean, naive_std = float(naive[mean]), float(np.nan_to_num(float(naive[std])))
    stds = np.nan_to_num(_values(rows, std))
    noise = np.maximum(2.0 * np.hypot(stds, naive_std), min_noise)
    gains = _values(rows, mean) - naive_mean
    best = int(np.argmax(_values(rows, mean)))
    return TradeoffCheck(
        has_tradeoff=bool((gains > noise).any()),
        best_trial_id=str(rows["trial_id"].iloc[best]),
        best_stability=float(_values(rows, mean)[best]),
        best_stability_std=float(stds[best]),
        naive_stability=naive_mean,
        naive_stability_std=naive_std,
        noise=float(noise[best]),
    )
