"""distill: learning without forgetting (LwF).

The teacher is a frozen copy of the model after the previous task. From task 2 on the loss is
α·CE + (1 − α)·T²·KL(softmax(z_teacher/T) ‖ softmax(z_student/T)): the trainer weights the
cross-entropy by :meth:`ce_weight` and adds :meth:`penalty`. The KL runs over the classes the
teacher knew (the classes of tasks < t; every class in domain-incremental form), on raw logits:
in task-incremental form the old tasks' heads are exactly what the teacher preserves. T² keeps
the gradient's scale independent of T (Hinton et al.). α = 1 reproduces naive bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.hparams import DEFAULTS
from sweep.strategies.base import NO_FEATURES, Batch, Features, Strategy, TaskContext, tensors_under


class Distill(Strategy):
    name = "distill"

    def __init__(self, distill_temperature: float = DEFAULTS["distill_temperature"],
                 distill_alpha: float = DEFAULTS["distill_alpha"]) -> None:
        self.temperature = distill_temperature
        self.alpha = distill_alpha
        self.teacher: nn.Module | None = None
        self.known: Tensor | None = None  # (K,) class ids the teacher was trained on
        self._pending: dict[str, Tensor] | None = None  # teacher weights loaded before a model exists

    def after_task(self, ctx: TaskContext) -> None:
        self.teacher = _frozen_copy(ctx.model)  # also at α = 1: the state after a task never depends on α
        known: Sequence[int]
        if ctx.benchmark.scenario == "domain":
            known = range(ctx.benchmark.num_classes)
        else:
            known = sorted({c for task in ctx.benchmark.tasks[: ctx.task_index + 1] for c in task.classes})
        self.known = torch.tensor(list(known), dtype=torch.long, device=ctx.device)

    def ce_weight(self, task_index: int) -> float:
        return self.alpha if task_index >= 1 and self.alpha != 1.0 else 1.0

    def penalty(
        self, ctx: TaskContext, batch: Batch, raw_logits: Tensor, features: Features = NO_FEATURES
    ) -> Tensor | None:
        teacher = self._teacher(ctx.model)
        if self.alpha == 1.0 or teacher is None or self.known is None:
            return None
        return distillation_term(teacher, batch.x, raw_logits, self.known, self.temperature, self.alpha)

    def _teacher(self, model: nn.Module) -> nn.Module | None:
        if self._pending is not None:  # restored from a state dict: rebuild on the model's structure
            self.teacher = _frozen_copy(model)
            self.teacher.load_state_dict(self._pending)
            self._pending = None
        return self.teacher

    def state_dict(self) -> dict[str, Tensor | float | int]:
        teacher = self.teacher.state_dict() if self.teacher is not None else (self._pending or {})
        state: dict[str, Tensor | float | int] = {f"teacher.{k}": v for k, v in teacher.items()}
        if self.known is not None:
            state["known"] = self.known
        return state

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        weights = tensors_under(state, "teacher.")
        self.teacher = None
        self._pending = weights or None
        known = state.get("known")
        self.known = known if isinstance(known, Tensor) else None


def distillation_term(
    teacher: nn.Module, x: Tensor, raw_logits: Tensor, known: Tensor, temperature: float, alpha: float
) -> Tensor:
    """(1 − α)·T²·KL(softmax(z_teacher/T) ‖ softmax(z_student/T)) over the ``known`` (K,) classes."""
    T = temperature
    with torch.no_grad():
        target = torch.log_softmax(teacher(x)[:, known] / T, dim=1)  # (B, K)
    student = torch.log_softmax(raw_logits[:, known] / T, dim=1)
    kl = F.kl_div(student, target, reduction="batchmean", log_target=True)  # KL(teacher ‖ student)
    return (1.0 - alpha) * T * T * kl


def _frozen_copy(model: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None  # deepcopy copies the last step's gradients too
    return teacher
