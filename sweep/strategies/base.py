"""The strategy contract: a few hooks with return values; the trainer owns the step.

A strategy never calls ``optimizer.step()`` and never reaches into the trainer. It sees a
:class:`TaskContext` and returns things: a batch to train on, a penalty to add to the loss,
how many leading layers to freeze, the weight of the cross-entropy term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from sweep.config import TrainConfig
from sweep.data.tasks import Benchmark, Split


@dataclass(frozen=True)
class Batch:
    x: Tensor  # (B, C, H, W) float32 on the device
    y: Tensor  # (B,) int64 targets
    task_ids: Tensor | None  # (B,) int64 task index of each sample; None unless task-incremental


@dataclass(frozen=True)
class TrainingData:
    """What a task trains on: usually the task's train split, the union of seen tasks for joint."""

    split: Split
    task_ids: Tensor | None  # (N,) task index per sample, None unless task-incremental


@dataclass(frozen=True)
class TaskContext:
    task_index: int  # 0-based
    benchmark: Benchmark  # tasks already on the device
    model: nn.Module
    device: torch.device
    batch_size: int
    generator: torch.Generator  # CPU generator, seeded per run: strategies draw randomness from it
    logits: Callable[[Tensor, Tensor | None], Tensor]  # (x float, task_ids) -> masked (B, classes)

    @property
    def task(self):  # noqa: ANN201 - Task; avoids a circular annotation
        return self.benchmark.tasks[self.task_index]

    def task_training_data(self, task_index: int | None = None) -> TrainingData:
        t = self.task_index if task_index is None else task_index
        split = self.benchmark.tasks[t].train
        ids = None
        if self.benchmark.scenario == "task":
            ids = torch.full((len(split),), t, dtype=torch.long, device=split.y.device)
        return TrainingData(split, ids)


class Strategy:
    """Base strategy: every hook is a no-op, so this class is exactly naive fine-tuning."""

    name: ClassVar[str] = "naive"
    params: ClassVar[tuple[str, ...]] = ()  # TrainConfig fields this strategy reads (for search spaces)
    # of those, the fields provably unused until task 2: trials differing only in them share task 1
    prefix_free: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_config(cls, config: TrainConfig) -> Strategy:
        """Build from the validated config, reading only the fields named in ``params``."""
        return cls()

    def before_task(self, ctx: TaskContext) -> None:
        """Called before training on ``ctx.task_index``."""

    def training_data(self, ctx: TaskContext) -> TrainingData | None:
        """Override the task's training data (joint training); None keeps the task's own."""
        return None

    def adjust_batch(self, ctx: TaskContext, batch: Batch) -> Batch:
        """Return the batch to train on (replay mixes buffered samples in here)."""
        return batch

    def frozen_layers(self, task_index: int) -> int:
        """How many leading parametrised layers stay frozen while training this task."""
        return 0

    def ce_weight(self, task_index: int) -> float:
        """Weight of the cross-entropy term (distillation trades it against its own term)."""
        return 1.0

    def penalty(self, ctx: TaskContext, batch: Batch, raw_logits: Tensor) -> Tensor | None:
        """A term added to the loss; ``raw_logits`` are the model's unmasked (B, classes) outputs."""
        return None

    def after_task(self, ctx: TaskContext) -> None:
        """Called after training on ``ctx.task_index`` (Fisher, teacher, buffer)."""

    def stats(self) -> dict[str, float]:
        """Numbers reported with the results, e.g. the Fisher's mean and trace."""
        return {}

    def state_dict(self) -> dict[str, Tensor | float | int]:
        """The state built after a task (Fisher and θ*, teacher weights, replay indices), to resume
        from; never training samples."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        """Restore what :meth:`state_dict` returned."""
