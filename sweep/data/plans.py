"""What each task of a built-in benchmark is made of (a :class:`TaskPlan`), and the task built from one.

Targets are remapped for the scenario (see :mod:`sweep.data.tasks`):

- class- and task-incremental: target = the *global* class id; one head over all global ids;
  ``Task.classes`` = the task's global ids (the logit mask in task-incremental).
- domain-incremental: target = the *local* id (position of the class in its task's class list);
  head = the largest number of classes in a task; ``Task.classes`` = ``(0, ..., k-1)``.

In both cases ``Task.classes[j]`` is the target of the task's j-th class. Global ids: the
original label for split benchmarks, ``10 * (t - 1) + digit`` for permuted-mnist and
``10 * dataset_index + label`` for mnist-fashion. A plan is made and checked before any data is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sweep.data.readers import CLASSES, Arrays
from sweep.data.tasks import Split, Task
from sweep.errors import SweepError

SPLIT_NUM_TASKS = tuple(t for t in range(2, len(CLASSES) + 1) if len(CLASSES) % t == 0)  # (2, 5, 10)


@dataclass(frozen=True)
class TaskPlan:
    """What one task is made of, before any data is read."""

    name: str  # e.g. "digits 0-4"
    dataset: str  # "digits", "mnist", "fashion" or "cifar10"
    labels: tuple[int, ...]  # original labels, in the order that defines local ids
    global_offset: int  # global id = global_offset + original label
    permutation_seed: int | None = None  # pixel permutation of permuted-mnist; None = identity


def _label_text(labels: Sequence[int]) -> str:
    """(0, 1, 2, 3, 4) -> "0-4"; (3, 7) -> "3,7"."""
    if len(labels) > 2 and list(labels) == list(range(labels[0], labels[0] + len(labels))):
        return f"{labels[0]}-{labels[-1]}"
    return ",".join(str(label) for label in labels)


def plan_split(
    benchmark: str, dataset: str, word: str, num_tasks: int, class_order: tuple[int, ...] | None
) -> tuple[TaskPlan, ...]:
    """Task t takes the t-th of ``num_tasks`` equal chunks of ``class_order`` (default 0..9)."""
    if num_tasks not in SPLIT_NUM_TASKS:
        allowed = ", ".join(map(str, SPLIT_NUM_TASKS))
        raise SweepError(
            f"num_tasks={num_tasks} is not allowed for {benchmark}: it must split its {len(CLASSES)} classes "
            f"evenly into at least 2 tasks (allowed: {allowed})"
        )
    order = CLASSES if class_order is None else class_order
    if sorted(order) != list(CLASSES):
        raise SweepError(
            f"class_order {list(order)} is not a permutation of the classes {CLASSES[0]}..{CLASSES[-1]} "
            f"of {benchmark} (each class exactly once)"
        )
    size = len(CLASSES) // num_tasks
    chunks = [tuple(order[i : i + size]) for i in range(0, len(order), size)]
    return tuple(TaskPlan(f"{word} {_label_text(c)}", dataset, c, global_offset=0) for c in chunks)


def plan_permuted(num_tasks: int, class_order: tuple[int, ...] | None) -> tuple[TaskPlan, ...]:
    """All ten digits in every task, task t > 1 under its own fixed pixel permutation."""
    if num_tasks < 2:
        raise SweepError(f"num_tasks={num_tasks} is not allowed for permuted-mnist (allowed: integers >= 2)")
    # task 1 is plain MNIST; task t > 1 is seeded from t alone, so every trial sees the same tasks
    return tuple(
        TaskPlan(
            f"permutation {t}",
            "mnist",
            CLASSES,
            global_offset=len(CLASSES) * (t - 1),
            permutation_seed=None if t == 1 else t,
        )
        for t in range(1, num_tasks + 1)
    )


def plan_mnist_fashion(num_tasks: int, class_order: tuple[int, ...] | None) -> tuple[TaskPlan, ...]:
    """MNIST, then Fashion-MNIST."""
    if num_tasks != 2:
        raise SweepError(f"num_tasks={num_tasks} is not allowed for mnist-fashion (allowed: 2)")
    return (
        TaskPlan("mnist", "mnist", CLASSES, global_offset=0),
        TaskPlan("fashion-mnist", "fashion", CLASSES, global_offset=len(CLASSES)),
    )


def plan_fashion_mnist(num_tasks: int, class_order: tuple[int, ...] | None) -> tuple[TaskPlan, ...]:
    """Fashion-MNIST, then MNIST."""
    if num_tasks != 2:
        raise SweepError(f"num_tasks={num_tasks} is not allowed for fashion-mnist (allowed: 2)")
    return (
        TaskPlan("fashion-mnist", "fashion", CLASSES, global_offset=0),
        TaskPlan("mnist", "mnist", CLASSES, global_offset=len(CLASSES)),
    )


def _pixel_permutation(seed: int, num_pixels: int) -> np.ndarray:
    return np.random.RandomState(seed).permutation(num_pixels)  # frozen stream: same tasks everywhere


def build_task(plan: TaskPlan, arrays: Arrays, is_val: np.ndarray, scenario: str) -> Task:
    """The task ``plan`` describes, with its own copy of its images; ``is_val`` marks the training
    images held out for validation."""
    # original label -> target for this task and scenario; -1 = not in the task
    lookup = np.full(max(CLASSES) + 1, -1, dtype=np.int64)
    for position, label in enumerate(plan.labels):
        lookup[label] = position if scenario == "domain" else plan.global_offset + label
    classes = tuple(int(lookup[label]) for label in plan.labels)
    in_task_train = np.isin(arrays.train_y, plan.labels)
    in_task_test = np.isin(arrays.test_y, plan.labels)
    num_pixels = math.prod(arrays.train_x.shape[1:])
    pixels = None if plan.permutation_seed is None else _pixel_permutation(plan.permutation_seed, num_pixels)

    def split(x: np.ndarray, y: np.ndarray, keep: np.ndarray) -> Split:
        rows = np.flatnonzero(keep)
        flat = x.reshape(len(x), -1)
        images = flat[rows] if pixels is None else flat[np.ix_(rows, pixels)]  # one copy, this task's own
        images = images.reshape(len(rows), *((1, *x.shape[1:]) if x.ndim == 3 else x.shape[1:]))  # (N, C, H, W)
        return Split(torch.from_numpy(images), torch.from_numpy(lookup[y[rows]]), torch.from_numpy(rows))

    return Task(
        name=plan.name,
        classes=classes,
        train=split(arrays.train_x, arrays.train_y, in_task_train & ~is_val),
        val=split(arrays.train_x, arrays.train_y, in_task_train & is_val),
        test=split(arrays.test_x, arrays.test_y, in_task_test),
    )
