"""The strategy contract: a few hooks with return values; the trainer owns the step.

A strategy never calls ``optimizer.step()`` and never reaches into the trainer. It sees a
:class:`TaskContext` and returns things: a batch to train on, a penalty to add to the loss (which
may see intermediate features), how many leading layers to freeze and which parameters train in
each :class:`Phase` of a task, the weight of the cross-entropy term, a per-step learning-rate
factor, the module that evaluates a task, an :class:`Auxiliary` model the trainer steps beside the
classifier. Every hook is a no-op by default. What a strategy builds lives in its ``state_dict``
(so the prefix cache holds it unchanged); its randomness comes from ``ctx.generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from sweep.config import TrainConfig
from sweep.data.tasks import Benchmark, Split, Task
from sweep.hparams import strategy_fields


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
    task: int | None = None  # task_ids all equal this task (one task's split, task-incremental); None: mixed or none


@dataclass
class Compute:
    """Work a run did, counted exactly (not timed): what compares the cost of two sweeps on a noisy machine.

    A sample counts once for every pass it makes through the model: a training step's batch (replay's
    samples included), each sample of a Fisher estimate, each sample of an evaluation.
    """

    optimizer_steps: int = 0
    train_samples: int = 0  # forward and backward, in training steps
    fisher_samples: int = 0  # forward and backward, in Fisher estimates (EWC)
    eval_passes: int = 0  # one model on one split of one task
    eval_samples: int = 0  # forward only
    forward_samples: int = 0  # forward only, to make training targets: a teacher's, a generator's

    @property
    def samples(self) -> int:
        return self.train_samples + self.fisher_samples + self.eval_samples + self.forward_samples

    def add(self, other: Compute) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def copy(self) -> Compute:
        return Compute(**asdict(self))

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "samples": self.samples}


@dataclass(frozen=True)
class TaskContext:
    task_index: int  # 0-based
    benchmark: Benchmark  # tasks already on the device
    model: nn.Module
    device: torch.device
    batch_size: int
    generator: torch.Generator  # CPU generator, seeded per run: strategies draw randomness from it
    logits: Callable[[Tensor, Tensor | None], Tensor]  # (x float, task_ids) -> masked (B, classes)
    compute: Compute = field(default_factory=Compute)  # this task's work: a strategy adds what it runs itself
    # True in the trainer: a penalty on the weights alone goes into .grad by penalty_grad, and penalty leaves it
    # out; False (a hand-written loop, a test): penalty returns the whole term, differentiable
    penalty_grads: bool = False
    # class-incremental with class_outputs seen: (classes,) bool, the classes of the tasks so far, which the loss
    # and the accuracies run over (ctx.logits masks the others); None: every class (task-IL masks per sample)
    outputs: Tensor | None = None

    @property
    def task(self) -> Task:
        return self.benchmark.tasks[self.task_index]

    def task_training_data(self, task_index: int | None = None) -> TrainingData:
        t = self.task_index if task_index is None else task_index
        split = self.benchmark.tasks[t].train
        if self.benchmark.scenario != "task":
            return TrainingData(split, None)
        return TrainingData(split, torch.full((len(split),), t, dtype=torch.long, device=split.y.device), t)


# layer (a name or an index in ``named_layers(model)``) -> its output in this step's forward pass
Features = Mapping[str | int, Tensor]
NO_FEATURES: Features = MappingProxyType({})


@dataclass(frozen=True)
class Phase:
    """A stretch of a task's training (linear probing, then fine-tuning); each gets a fresh optimizer."""

    name: str
    epochs: int | None = None  # None: the task's configured epochs
    # the parameters that train in this phase, among those the task trains; None: all of them
    trainable: Callable[[nn.Module], Sequence[nn.Parameter]] | None = None


WHOLE_TASK: tuple[Phase, ...] = (Phase("train"),)  # the default: one phase, the task's epochs, every parameter


@dataclass(frozen=True)
class Auxiliary:
    """A model of the strategy's own (a replay generator) that the trainer steps after each classifier step,
    on the same batch, with an optimizer of its own (fresh each task, like the classifier's)."""

    model: nn.Module  # on ctx.device; in the state_dict unless it models the training data (a generator)
    loss: Callable[[TaskContext, Batch], Tensor]  # scalar, differentiable in ``model``'s parameters
    optimizer: str = "adam"  # as TrainConfig.optimizer
    lr: float = 1e-3
    weight_decay: float = 0.0


class Strategy:
    """Base strategy: every hook is a no-op, so this class is exactly naive fine-tuning."""

    name: ClassVar[str] = "naive"  # its key in the registry, and of its block in sweep.strategies.specs
    # where its after_task runs in a composite, whatever the order of the names: lowest first, ties in name order.
    # Adapters merge (-2) before interpolation (-1), which interpolates the merged weights; both before every
    # other component (0), so EWC's Fisher and distillation's teacher see the weights the next task starts from
    after_task_order: ClassVar[int] = 0
    # False: its state after task 1 must not be written anywhere (a generator of the training data), so its trials
    # train task 1 themselves instead of sharing it through the task-prefix cache
    prefix_cacheable: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config: TrainConfig) -> Strategy:
        """Build from the validated config: the constructor gets exactly the fields of this strategy's
        block in :mod:`sweep.strategies.specs`, by name."""
        return cls(**{name: getattr(config, name) for name in strategy_fields(cls.name)})

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

    def trainable_parameters(self, ctx: TaskContext, params: list[nn.Parameter]) -> list[nn.Parameter]:
        """The parameters that train this task, given ``params`` (those outside frozen layers): a subset
        (probing), or others the model's forward uses (adapters). Any other model parameter stays fixed."""
        return params

    def phases(self, task_index: int) -> Sequence[Phase]:
        """The task's phases, in order; the default is one phase over the whole task."""
        return WHOLE_TASK

    def lr_factor(self, task_index: int, step: int, steps_in_task: int) -> float:
        """Multiplier of every parameter group's learning rate for the task's ``step`` (0-based, counted
        over its phases) of ``steps_in_task`` planned (warmup)."""
        return 1.0

    def feature_layers(self, task_index: int) -> tuple[str | int, ...]:
        """Layers of ``named_layers(model)`` (by name or index) whose outputs :meth:`penalty` receives."""
        return ()

    def ce_weight(self, task_index: int) -> float:
        """Weight of the cross-entropy term (distillation trades it against its own term)."""
        return 1.0

    def penalty(
        self, ctx: TaskContext, batch: Batch, raw_logits: Tensor, features: Features = NO_FEATURES
    ) -> Tensor | None:
        """A term added to the loss; ``raw_logits`` are the model's unmasked (B, classes) outputs and
        ``features`` the outputs of the :meth:`feature_layers` in the same forward pass."""
        return None

    def penalty_grad(self, ctx: TaskContext) -> None:
        """After the backward pass, before the step, when ``ctx.penalty_grads``: add to the parameters' ``.grad``,
        in place, the gradient of a term on the weights alone that :meth:`penalty` then leaves out (EWC's, SI's,
        MAS's and L2-SP's quadratics: the trainer never needs their value, and the gradient alone is a fraction
        of the work; bit for bit the gradient autograd would give)."""

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        """Called after every optimizer step, the step's gradients still in ``.grad`` (SI's path integral)."""

    def auxiliary(self, ctx: TaskContext) -> Auxiliary | None:
        """A model the trainer steps beside the classifier during this task (a generator), or None."""
        return None

    def eval_model(self, ctx: TaskContext, task_index: int) -> nn.Module:
        """The module that evaluates task ``task_index`` (per-task adapters); the model itself by default."""
        return ctx.model

    def after_task(self, ctx: TaskContext) -> None:
        """Called after training on ``ctx.task_index`` (Fisher, teacher, buffer)."""

    def variants(self, ctx: TaskContext) -> Iterator[tuple[dict[str, Any], dict[str, Tensor]]]:
        """After the last task (its :meth:`after_task` done): other final models that cost no training, each
        as (the config values that give it, the model's state_dict). The trainer evaluates each one on every
        task and restores the model. Interpolation's free α grid; none by default."""
        return iter(())

    def stats(self) -> dict[str, float]:
        """Numbers reported with the results, e.g. the Fisher's mean and trace."""
        return {}

    def state_dict(self) -> dict[str, Tensor | float | int]:
        """The state built after a task (Fisher and θ*, teacher weights, replay indices), to resume
        from; never training samples."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        """Restore what :meth:`state_dict` returned."""


def tensors_under(state: Mapping[str, Tensor | float | int], prefix: str) -> dict[str, Tensor]:
    """``{name: tensor}`` of a state dict's entries ``<prefix><name>`` (tensors, as ``state_dict`` wrote them)."""
    return {k.removeprefix(prefix): cast(Tensor, v) for k, v in state.items() if k.startswith(prefix)}
