"""Where the data lives, and the validation hold-out every benchmark (built-in or a user's) carves."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from sweep.errors import SweepError

DATA_ROOT_ENV = "SWEEP_DATA_ROOT"
DEFAULT_DATA_ROOT = "./data"


def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``data_root`` if given, else ``$SWEEP_DATA_ROOT``, else ``./data``; absolute."""
    if data_root is None or str(data_root) == "":
        data_root = os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT
    return Path(data_root).expanduser().resolve()


def holdout_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(N,) bool: a per-class random ``fraction`` of the samples (at least 1, never all)."""
    # RandomState's stream is frozen by NumPy's compatibility policy: splits survive upgrades
    order = np.random.RandomState(seed).permutation(len(labels))
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = order[labels[order] == label]  # this class's samples in random order
        if len(members) >= 2:
            mask[members[: min(max(round(fraction * len(members)), 1), len(members) - 1)]] = True
    return mask


def check_holdout(labels: np.ndarray, fraction: float, where: str) -> None:
    """Refuse a ``fraction`` so small that it rounds to no validation sample of some class (one of two
    samples or more): :func:`holdout_mask` would silently hold out one anyway. Names the minimum."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    eligible = counts >= 2
    if not eligible.any():
        return
    smallest = int(counts[eligible].min())
    if fraction * smallest >= 0.5:  # half a sample or more rounds to one
        return
    label = values[eligible][int(np.argmin(counts[eligible]))]
    raise SweepError(f"val_fraction={fraction:g} holds out less than one validation sample of class {label} in "
                     f"{where} ({smallest} training samples); the minimum is {min_fraction(smallest):g}")


def min_fraction(n: int) -> float:
    """The smallest fraction, to three significant digits, that holds out one of ``n`` samples (half a
    sample or more, rounded up)."""
    decimals = 2 - math.floor(math.log10(0.5 / n))
    fraction = round(math.ceil(0.5 / n * 10**decimals) / 10**decimals, decimals)
    while fraction * n < 0.5:
        fraction = round(fraction + 10**-decimals, decimals)
    return fraction
