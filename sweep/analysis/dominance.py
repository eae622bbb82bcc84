"""Pareto dominance on one trials table: which rows count, the front, the seed-aware view, hypervolume.

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

import numpy as np
import pandas as pd

from sweep.errors import ConfigError
from sweep.metrics import hypervolume as hypervolume  # re-exported: the scheduler (sweep.tune.pruning) uses it too
from sweep.results import schema

STABILITY = schema.metric_column("val", "stability")
PLASTICITY = schema.metric_column("val", "plasticity")
SEARCH_ONLY = ("search",)


def column_values(df: pd.DataFrame, column: str) -> np.ndarray:
    """A column as floats; anything not a number reads NaN. A missing column is a ConfigError naming the others."""
    if column not in df.columns:
        raise ConfigError(
            f"no column {column!r} in the trials table (columns: {', '.join(map(str, df.columns))})"
        )
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def eligible(
    df: pd.DataFrame, x: str = STABILITY, y: str = PLASTICITY, roles: Sequence[str] | None = SEARCH_ONLY
) -> pd.Series:
    """Rows that may be on a front: finished, finite in ``x`` and ``y``, of one of ``roles``."""
    mask = np.isfinite(column_values(df, x)) & np.isfinite(column_values(df, y))
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
    on_front[mask] = ~_dominated(column_values(df, x)[mask], column_values(df, y)[mask])
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
    xs, ys = column_values(df, x), column_values(df, y)
    spreads = []
    for column in (_std_column(x), _std_column(y)):
        spread = column_values(df, column) if column in df.columns else np.zeros(len(df))
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
