"""Forgetting metrics: pure functions of the accuracy matrix, exactly as docs/design.md defines them; and the
2-D hypervolume of (stability, plasticity) points, which the analysis and the pruning scheduler both measure with.

``R`` is a (T, T) array with ``R[t, i]`` = accuracy on task i after training through task t
(0-based here; docs/design.md counts from 1). ``initial`` is the (T,) accuracy of the untrained model.
Nothing here knows about torch, and nothing changes its input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _matrix(R: ArrayLike) -> NDArray[np.float64]:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 2:
        raise ValueError(f"accuracy matrix must be square with T >= 2 tasks, got shape {R.shape}")
    return R


def stability(R: ArrayLike) -> float:
    """Mean over old tasks i < T of ``R[T, i]``: old-task accuracy retained at the end."""
    R = _matrix(R)
    return float(R[-1, :-1].mean())


def plasticity(R: ArrayLike) -> float:
    """Mean over t = 2..T of ``R[t, t]``: how well each new task is learned."""
    R = _matrix(R)
    return float(np.diag(R)[1:].mean())


def average_accuracy(R: ArrayLike) -> float:
    """ACC: mean over all tasks of ``R[T, i]``."""
    R = _matrix(R)
    return float(R[-1].mean())


def backward_transfer(R: ArrayLike) -> float:
    """BWT = mean over i < T of ``R[T, i] - R[i, i]``; negative means forgetting."""
    R = _matrix(R)
    return float((R[-1, :-1] - np.diag(R)[:-1]).mean())


def forward_transfer(R: ArrayLike, initial: ArrayLike) -> float:
    """FWT = mean over i >= 2 of ``R[i-1, i] - b_i``, b the untrained model's accuracy."""
    R = _matrix(R)
    b = np.asarray(initial, dtype=np.float64)
    if b.shape != (R.shape[0],):
        raise ValueError(f"initial accuracies must have shape ({R.shape[0]},), got {b.shape}")
    T = R.shape[0]
    return float(np.mean([R[i - 1, i] - b[i] for i in range(1, T)]))


def forgetting(R: ArrayLike) -> float:
    """FM = mean over i < T of ``max_{t < T} R[t, i] - R[T, i]``.

    The max runs over every t < T, as docs/design.md states; rows before task i is trained hold
    that task's untrained accuracy, which is almost always below what it reaches later.
    """
    R = _matrix(R)
    best_before_end = R[:-1, :-1].max(axis=0)  # (T-1,)
    return float((best_before_end - R[-1, :-1]).mean())


def retention(R: ArrayLike) -> NDArray[np.float64]:
    """REM_i = ``R[T, i] / R[i, i]`` for every task (1.0 for the last). NaN where R[i, i] is 0."""
    R = _matrix(R)
    diag = np.diag(R)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(diag > 0, R[-1] / np.where(diag > 0, diag, 1.0), np.nan)


def mean_retention(R: ArrayLike) -> float:
    """Mean of REM_i over old tasks i < T: "keeps 95% of task-1 accuracy" is ``>= 0.95`` at T=2."""
    rem = retention(R)[:-1]
    return float(np.nanmean(rem)) if np.isfinite(rem).any() else 0.0


def all_metrics(R: ArrayLike, initial: ArrayLike) -> dict[str, float]:
    """Every metric of ``sweep.schema.METRICS`` for one accuracy matrix."""
    return {
        "stability": stability(R),
        "plasticity": plasticity(R),
        "acc": average_accuracy(R),
        "bwt": backward_transfer(R),
        "fwt": forward_transfer(R, initial),
        "forgetting": forgetting(R),
        "retention": mean_retention(R),
    }


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
