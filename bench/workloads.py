"""The pruning row's fine-tune workload, as ``module:function`` benchmarks (see docs/your-own-model.md).

``mnist_fashion_subset``: the real ``mnist-fashion`` benchmark (MNIST, then Fashion-MNIST, one 10-way
head), cut to fixed, class-balanced, seeded subsets so that 24 trials x 2 seeds x 5 epochs of a CNN
fit the bench's budget on 2 CPU cores:

- task 2's (Fashion-MNIST's) training split: :data:`TARGET_TRAIN_PER_CLASS` images a class (1,000);
- both tasks' validation splits: :data:`VAL_PER_CLASS` a class (500 each), and test splits:
  :data:`TEST_PER_CLASS` a class (1,000 each). A trial evaluates both validation splits at every
  rung and at the end, and both test splits at the end: whole, those evaluations cost the CNN more
  than its 5 epochs of training (measured: 56,000 forward passes against 15,000 training samples a
  seed, with 3,000 training images);
- task 1's (MNIST's) training split stays whole: the sweep never trains on it (the checkpoint
  is pretrained once), it feeds the source Fisher (``fisher_samples``) and the pretraining.

``mnist_fashion_tiny`` is the ``--quick`` size: every split of both tasks cut to a few dozen images
a class, so that the smoke mode's sweeps take seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np
import torch

from sweep.data.tasks import Benchmark, Split, Task

TARGET_TRAIN_PER_CLASS = 100  # 1,000 Fashion-MNIST training images: 5 epochs are 5,000 samples a seed
VAL_PER_CLASS = 50
TEST_PER_CLASS = 100
SUBSET_SEED = 0
TINY_PER_CLASS = {"train": 30, "val": 20, "test": 20}  # --quick, every split of both tasks


def _subset(split: Split, per_class: int, seed: int) -> Split:
    """``per_class`` samples of every class of ``split``, drawn with ``seed``, in their original order."""
    y = split.y.numpy()
    rng = np.random.RandomState(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]))
    rows = torch.from_numpy(keep)
    return Split(split.x[rows].clone(), split.y[rows].clone())


def _cut(task: Task, per_class: dict[str, int], seed: int) -> Task:
    """``task`` with each split named in ``per_class`` cut to that many images a class."""
    splits = {name: _subset(getattr(task, name), per_class[name], seed) if name in per_class else getattr(task, name)
              for name in ("train", "val", "test")}
    return Task(task.name, task.classes, splits["train"], splits["val"], splits["test"])


def _base(data_root: Any, scenario: str) -> Benchmark:
    from sweep.data.benchmarks import build_benchmark

    return build_benchmark("mnist-fashion", scenario, data_root=data_root)


def _named(benchmark: Benchmark, tasks: tuple[Task, ...], cut: dict[str, Any]) -> Benchmark:
    """The benchmark with ``tasks``, its info saying what was cut (the prefix cache keys on it)."""
    info = {**benchmark.info, "subset": cut}
    return dataclasses.replace(benchmark, tasks=tasks, info=info)


@functools.lru_cache(maxsize=2)  # the bench's driver builds it once per sweep: reading both datasets takes seconds
def mnist_fashion_subset(data_root: str | os.PathLike[str] | None = None, scenario: str = "domain") -> Benchmark:
    """``mnist-fashion`` cut as the module docstring says (task 1's training split whole)."""
    full = _base(data_root, scenario)
    cuts = ({"val": VAL_PER_CLASS, "test": TEST_PER_CLASS},  # task 1: its training split whole
            {"train": TARGET_TRAIN_PER_CLASS, "val": VAL_PER_CLASS, "test": TEST_PER_CLASS})
    tasks = tuple(_cut(task, cut, SUBSET_SEED + t) for t, (task, cut) in enumerate(zip(full.tasks, cuts)))
    return _named(full, tasks, {"task2_train_per_class": TARGET_TRAIN_PER_CLASS, "val_per_class": VAL_PER_CLASS,
                                "test_per_class": TEST_PER_CLASS, "seed": SUBSET_SEED})


@functools.lru_cache(maxsize=2)
def mnist_fashion_tiny(data_root: str | os.PathLike[str] | None = None, scenario: str = "domain") -> Benchmark:
    """``--quick``: every split of both tasks cut to :data:`TINY_PER_CLASS` images a class."""
    full = _base(data_root, scenario)
    tasks = tuple(_cut(task, TINY_PER_CLASS, SUBSET_SEED + t) for t, task in enumerate(full.tasks))
    return _named(full, tasks, {"every_split_per_class": TINY_PER_CLASS, "seed": SUBSET_SEED})
