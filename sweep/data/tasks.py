"""Tasks as tensors: the only thing the trainer knows about data.

A task holds its train/validation/test splits in memory. Images stay ``uint8`` (4x smaller
than float32) and are converted per batch on the device by :func:`to_float`. Labels are the
*targets the model is trained on* for the benchmark's scenario (global class ids for class-
and task-incremental, within-task ids for domain-incremental), already remapped.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from sweep.hparams import SCENARIOS

__all__ = ["SCENARIOS", "Benchmark", "Split", "Task", "to_float"]


@dataclass(frozen=True)
class Split:
    x: Tensor  # (N, C, H, W) uint8, or float32 for user data
    y: Tensor  # (N,) int64 targets
    # (N,) int64: each image's row in the dataset it was read from (built-in benchmarks; None for user data):
    # what lets class_shuffle deal a task's images in the order a build with that class order would give
    rows: Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device), self.rows)


@dataclass(frozen=True)
class Task:
    name: str  # e.g. "digits 0-4"
    classes: tuple[int, ...]  # target ids this task uses; in task-incremental form, the logit mask
    train: Split
    val: Split  # carved from the training data with a fixed seed
    test: Split

    def to(self, device: torch.device | str) -> Task:
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))


@dataclass(frozen=True)
class Benchmark:
    name: str
    scenario: str  # one of SCENARIOS
    tasks: tuple[Task, ...]
    num_classes: int  # size of the single output head
    input_shape: tuple[int, ...]  # (C, H, W) of one sample
    info: dict[str, object] = field(default_factory=dict)  # class order, data root, ...

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def task_masks(self, device: torch.device | str | None = None) -> Tensor | None:
        """(T, num_classes) bool: the classes each task may predict; None unless task-incremental."""
        if self.scenario != "task":
            return None
        masks = torch.zeros(self.num_tasks, self.num_classes, dtype=torch.bool)
        for t, task in enumerate(self.tasks):
            masks[t, list(task.classes)] = True
        return masks.to(device) if device is not None else masks

    def scoring_masks(self, class_outputs: str = "all", device: torch.device | str | None = None) -> Tensor | None:
        """(T, num_classes) bool: row t, the classes task t's samples are scored over. Task-incremental: its
        own (:meth:`task_masks`); class-incremental with ``class_outputs`` ``seen``: the classes of tasks 1..t,
        so that after task t, task i is scored over row max(t, i) (``evaluate_all``'s ``now``); otherwise
        None, every class."""
        if self.scenario == "task":
            return self.task_masks(device)
        if self.scenario != "class" or class_outputs == "all":
            return None
        masks = torch.zeros(self.num_tasks, self.num_classes, dtype=torch.bool)
        for t, task in enumerate(self.tasks):
            masks[t:, list(task.classes)] = True
        return masks.to(device) if device is not None else masks

    def to(self, device: torch.device | str) -> Benchmark:
        return replace(self, tasks=tuple(task.to(device) for task in self.tasks))


def to_float(x: Tensor) -> Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1]; float input is passed through."""
    if x.dtype == torch.uint8:
        # two calls, a cast then an in-place divide: one torch.div(x, 255.0) converting as it divides gives the same
        # values but took 1.3 times as long on the CPU (its mixed-dtype kernel)
        return x.to(torch.float32).div_(255.0)
    return x.float()
