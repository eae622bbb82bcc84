"""distill: learning without forgetting (LwF), on the outputs and, when asked, on intermediate features.

The teacher is a frozen copy of the model after the previous task. From task 2 on the loss is
α·CE + (1 − α)·T²·KL(softmax(z_teacher/T) ‖ softmax(z_student/T)) + w·mean_l MSE(h_l, h_l^teacher):
the trainer weights the cross-entropy by :meth:`ce_weight` and adds :meth:`penalty`. The KL runs
over the classes the teacher knew (the classes of tasks < t; every class in domain-incremental
form), on raw logits: in task-incremental form the old tasks' heads are exactly what the teacher
preserves. T² keeps the gradient's scale independent of T (Hinton et al.). α = 1 and w = 0
reproduce naive bit for bit.

Feature distillation (w = ``feature_distill_weight`` > 0) matches the outputs of the layers
``feature_distill_layers`` names, the model's named layers as ``frozen_layers`` counts them
(0-based indices, negative from the end, or names): the trainer hands the student's outputs to
:meth:`penalty` (:meth:`feature_layers`), the teacher's come from the same forward pass that gives
its logits. Each layer's term is the mean squared difference over its elements, and the layers'
terms are averaged, so w's scale does not depend on how many layers are chosen. It lives in this
strategy, not in one of its own: one teacher, one teacher pass per step, for both terms.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.errors import ConfigError
from sweep.hparams import DEFAULTS
from sweep.models import named_layers
from sweep.strategies.base import NO_FEATURES, Batch, Features, Strategy, TaskContext, tensors_under


class Distill(Strategy):
    name = "distill"

    def __init__(self, distill_temperature: float = DEFAULTS["distill_temperature"],
                 distill_alpha: float = DEFAULTS["distill_alpha"],
                 feature_distill_weight: float = DEFAULTS["feature_distill_weight"],
                 feature_distill_layers: str = DEFAULTS["feature_distill_layers"]) -> None:
        self.temperature = distill_temperature
        self.alpha = distill_alpha
        self.feature_weight = feature_distill_weight
        self.wanted = parse_layers(feature_distill_layers)  # as written: indices and names
        self.layers: tuple[int, ...] = ()  # the wanted layers as indices of named_layers(model), once resolved
        self.teacher: nn.Module | None = None
        self.known: Tensor | None = None  # (K,) class ids the teacher was trained on
        self._pending: dict[str, Tensor] | None = None  # teacher weights loaded before a model exists

    def before_task(self, ctx: TaskContext) -> None:
        if self.feature_weight > 0:  # an unknown layer is refused before task 1 trains, not after it
            self.layers = resolve_layers(ctx.model, self.wanted)
        self._teacher(ctx.model)  # restored from a state dict: rebuilt here, while no feature hook is on the model

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

    def feature_layers(self, task_index: int) -> tuple[str | int, ...]:
        return self.layers if task_index >= 1 and self.feature_weight > 0 else ()

    def penalty(
        self, ctx: TaskContext, batch: Batch, raw_logits: Tensor, features: Features = NO_FEATURES
    ) -> Tensor | None:
        teacher = self._teacher(ctx.model)
        by_features = self.feature_weight > 0 and bool(self.layers)
        if teacher is None or self.known is None or (self.alpha == 1.0 and not by_features):
            return None
        with torch.no_grad():
            taught, teacher_features = teacher_outputs(teacher, batch.x, self.layers if by_features else ())
        total = None
        if self.alpha != 1.0:
            total = kd_term(taught, raw_logits, self.known, self.temperature, self.alpha)
        if by_features:
            student = [features[layer] for layer in self.layers]
            term = feature_term(student, [teacher_features[layer] for layer in self.layers], self.feature_weight)
            total = term if total is None else total + term
        return total

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


def parse_layers(text: str) -> tuple[str | int, ...]:
    """``"0,-2"`` -> ``(0, -2)``, ``"hidden.1,head"`` -> ``("hidden.1", "head")``: indices as ints."""
    return tuple(int(entry) if entry.lstrip("-").isdigit() else entry for entry in text.split(",") if entry)


def resolve_layers(model: nn.Module, wanted: Sequence[str | int]) -> tuple[int, ...]:
    """The ``wanted`` layers (indices, negative from the end, or names) as indices of ``named_layers(model)``,
    in the model's order, each once; an unknown one is a ConfigError naming the model's layers."""
    layers = named_layers(model)
    index = {name: i for i, (name, _) in enumerate(layers)}
    found = set()
    for key in wanted:
        if isinstance(key, int) and -len(layers) <= key < len(layers):
            found.add(key % len(layers))
        elif isinstance(key, str) and key in index:
            found.add(index[key])
        else:
            names = ", ".join(f"{i} {name}" for i, (name, _) in enumerate(layers))
            raise ConfigError(f"feature_distill_layers: {key!r} is not a layer of the model; its layers: {names}")
    return tuple(sorted(found))


def teacher_outputs(teacher: nn.Module, x: Tensor, layers: Sequence[int]) -> tuple[Tensor, dict[int, Tensor]]:
    """The teacher's raw (B, classes) logits and the outputs of its ``layers`` (indices of its named layers),
    taken in one forward pass by hooks that are gone when it returns."""
    modules = named_layers(teacher)
    outputs: dict[int, Tensor] = {}

    def keep(index: int, module: nn.Module, args: tuple, output: Tensor) -> None:
        outputs[index] = output

    handles = []
    for index in layers:
        module = modules[index][1]
        if isinstance(module, nn.ModuleList):  # a block never called as one (a ResNet's stem): its last part
            module = module[-1]
        handles.append(module.register_forward_hook(partial(keep, index)))
    try:
        logits = teacher(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, outputs


def kd_term(teacher_logits: Tensor, raw_logits: Tensor, known: Tensor, temperature: float, alpha: float) -> Tensor:
    """(1 − α)·T²·KL(softmax(z_teacher/T) ‖ softmax(z_student/T)) over the ``known`` (K,) classes."""
    T = temperature
    target = torch.log_softmax(teacher_logits.detach()[:, known] / T, dim=1)  # (B, K)
    student = torch.log_softmax(raw_logits[:, known] / T, dim=1)
    kl = F.kl_div(student, target, reduction="batchmean", log_target=True)  # KL(teacher ‖ student)
    return (1.0 - alpha) * T * T * kl


def feature_term(student: Sequence[Tensor], teacher: Sequence[Tensor], weight: float) -> Tensor:
    """w · the mean over layers of each layer's mean squared difference (student's features against the
    teacher's, which carry no gradient)."""
    terms = [F.mse_loss(s, t.detach()) for s, t in zip(student, teacher, strict=True)]
    return weight * (sum(terms[1:], terms[0]) / len(terms))


def distillation_term(
    teacher: nn.Module, x: Tensor, raw_logits: Tensor, known: Tensor, temperature: float, alpha: float
) -> Tensor:
    """(1 − α)·T²·KL(softmax(z_teacher/T) ‖ softmax(z_student/T)) over the ``known`` (K,) classes."""
    with torch.no_grad():
        taught = teacher(x)
    return kd_term(taught, raw_logits, known, temperature, alpha)


def _frozen_copy(model: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None  # deepcopy copies the last step's gradients too
    return teacher
