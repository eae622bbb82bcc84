"""Your own tasks for ``sweep``: a source task and a target task, as a function.

``sweep run --benchmark examples.my_tasks:build`` (run from the repository's root) calls
``build()`` and sweeps on what it returns. Here the data is scikit-learn's bundled 8x8 digits,
so the example runs offline:

- source: upright digits (the task the model was trained on and must not forget);
- target: other digits, rotated by 90 degrees (a new camera mounting: the new task).

Both tasks share the same ten labels, so this is the domain-incremental case: one 10-way head,
``--scenario domain``. Stability is the source accuracy retained after fine-tuning on the target;
plasticity is the target accuracy reached.

Each task is a dict: ``train`` and ``test`` are required, ``val`` is optional (the sweep carves
one per class from ``train`` with a fixed seed otherwise), ``name`` and ``classes`` too. A split is
``(x, y)`` (tensors or numpy arrays) or a torch ``Dataset`` of ``(x, y)`` samples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

TEST_FRACTION = 0.25
SEED = 0  # the tasks must be the same in every trial: fixed seeds only


def _split(images: np.ndarray, labels: np.ndarray, rng: np.random.RandomState) -> tuple:
    order = rng.permutation(len(labels))
    cut = int(len(order) * (1 - TEST_FRACTION))
    train, test = order[:cut], order[cut:]
    return (images[train], labels[train]), (images[test], labels[test])


def build() -> list[dict]:
    """Two tasks: upright digits (source), then rotated digits (target)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8), 0..255
    labels = digits.target.astype(np.int64)
    rng = np.random.RandomState(SEED)
    halves = rng.permutation(len(labels))
    source_rows, target_rows = halves[::2], halves[1::2]  # different images in the two tasks

    source_train, source_test = _split(images[source_rows], labels[source_rows], rng)
    target_images = np.ascontiguousarray(np.rot90(images[target_rows], k=1, axes=(2, 3)))
    (tx, ty), target_test = _split(target_images, labels[target_rows], rng)
    target_train = TensorDataset(torch.from_numpy(tx), torch.from_numpy(ty))  # a Dataset works as well

    return [
        {"name": "upright digits", "train": source_train, "test": source_test},
        {"name": "rotated digits", "train": target_train, "test": target_test},
    ]
