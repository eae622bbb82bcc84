"""Where the data lives, and the validation hold-out every benchmark (built-in or a user's) carves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

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
