"""The 2-task Split-MNIST both sides train on: the package's benchmark and the same samples by index.

The reference reads MNIST through torchvision, so it needs indices into torchvision's datasets.
They are the package's own split: task t's training samples are the training images of its
digits that the package does not hold out for validation (``sweep.data.holdout.holdout_mask``,
10% per class, seed 0), in file order; validation is the held-out ones; test is the test
images of its digits. :func:`check_same_data` proves the two sides see the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from bench.common import Settings
from sweep.data.holdout import holdout_mask, resolve_data_root
from sweep.data.idx import read_idx
from sweep.data.tasks import Benchmark, Split
from sweep.hparams import DEFAULTS

TASK_LABELS = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))  # default 2-task Split-MNIST
VAL_FRACTION = DEFAULTS["val_fraction"]  # TrainConfig's default
SPLIT_SEED = 0  # build_benchmark's default
QUICK_SAMPLES = 1024  # per task and split in --quick: the smoke mode only has to produce numbers


@dataclass(frozen=True)
class TaskIndices:
    labels: tuple[int, ...]
    train: np.ndarray  # indices into MNIST's training file
    val: np.ndarray  # indices into MNIST's training file (held out by the package)
    test: np.ndarray  # indices into MNIST's test file


def _raw(settings: Settings, name: str) -> np.ndarray:
    raw = resolve_data_root(settings.data_root) / "MNIST" / "raw"
    path = raw / name if (raw / name).is_file() else raw / f"{name}.gz"
    return read_idx(path)


def task_indices(settings: Settings, limit: int | None = None) -> list[TaskIndices]:
    """Each task's samples as indices into MNIST's files, the package's split; ``limit`` keeps the first few."""
    train_y = _raw(settings, "train-labels-idx1-ubyte")
    test_y = _raw(settings, "t10k-labels-idx1-ubyte")
    is_val = holdout_mask(train_y.astype(np.int64), VAL_FRACTION, SPLIT_SEED)
    tasks = []
    for labels in TASK_LABELS:
        in_train, in_test = np.isin(train_y, labels), np.isin(test_y, labels)
        parts = [np.flatnonzero(in_train & ~is_val), np.flatnonzero(in_train & is_val), np.flatnonzero(in_test)]
        tasks.append(TaskIndices(labels, *(p[:limit] for p in parts)))
    return tasks


def package_benchmark(settings: Settings, limit: int | None = None) -> Benchmark:
    """The package's 2-task task-incremental Split-MNIST; ``limit`` keeps the first samples of each split."""
    from sweep.data.benchmarks import build_benchmark

    benchmark = build_benchmark("split-mnist", "task", 2, None, settings.data_root, VAL_FRACTION, SPLIT_SEED)
    if limit is None:
        return benchmark

    def head(split: Split) -> Split:
        return Split(split.x[:limit], split.y[:limit])

    tasks = tuple(replace(t, train=head(t.train), val=head(t.val), test=head(t.test)) for t in benchmark.tasks)
    return replace(benchmark, tasks=tasks)


def check_same_data(settings: Settings, benchmark: Benchmark, indices: list[TaskIndices]) -> bool:
    """True when every split of ``benchmark`` holds exactly the images and labels at ``indices``."""
    images = {"train": _raw(settings, "train-images-idx3-ubyte"), "test": _raw(settings, "t10k-images-idx3-ubyte")}
    labels = {"train": _raw(settings, "train-labels-idx1-ubyte"), "test": _raw(settings, "t10k-labels-idx1-ubyte")}
    for task, idx in zip(benchmark.tasks, indices):
        for split, source in (("train", "train"), ("val", "train"), ("test", "test")):
            rows = getattr(idx, split)
            got = getattr(task, split)
            want_x = torch.from_numpy(np.ascontiguousarray(images[source][rows]))
            want_y = torch.from_numpy(labels[source][rows].astype(np.int64))
            if not (torch.equal(got.x.cpu().reshape(want_x.shape), want_x) and torch.equal(got.y.cpu(), want_y)):
                return False
    return True
