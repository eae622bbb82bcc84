"""distill: learning without forgetting (LwF), on the outputs and, when asked, on intermediate features.

The teacher is a frozen copy of the model after the previous task. From task 2 on the loss is
w_CE·CE + w_KD·T²·KL(p_teacher ‖ p_student) + w·mean_l MSE(h_l, h_l^teacher): the trainer weights the
cross-entropy by :meth:`ce_weight` and adds :meth:`penalty`. T² keeps the gradient's scale independent
of T (Hinton et al.). ``distill_weighting`` sets the weights: ``alpha``, w_CE = α and w_KD = 1 − α
(α = 1 and w = 0 reproduce naive bit for bit); ``task-count``, on task t w_CE = 1/t and w_KD = 1 − 1/t
(van de Ven & Tolias' ``rnt``: every task seen so far weighs the same).

``distill_variant`` sets which classes the KL covers, on raw logits (docs/reproductions.md compares them):

- ``vandeven`` (GMvandeVen/continual-learning, ``models/classifier.py`` ``train_a_batch`` and
  ``loss_fn_kd``): class-incremental, the student's softmax runs over every class seen so far, the new
  task's included, and the teacher's softmax over the old classes is padded with zeros for the new ones,
  so the term pulls probability mass back from the new classes to the old; task-incremental, one softmax
  per past task over its own classes (what its head is evaluated on), the KL averaged over past tasks;
  domain-incremental, every class.
- ``old-classes`` (this tool before): both softmaxes over the old classes only (every class in
  domain-incremental form). Invariant to a shift of all old logits, it cannot stop the new classes'
  logits from outranking the old ones: class-incremental, it barely helps.

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
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.data.tasks import Benchmark
from sweep.errors import ConfigError
from sweep.hparams import DEFAULTS
from sweep.models import named_layers
from sweep.strategies.base import NO_FEATURES, Batch, Features, Strategy, TaskContext, tensors_under

_M = TypeVar("_M", bound=nn.Module)


class Distill(Strategy):
    name = "distill"

    def __init__(self, distill_variant: str = DEFAULTS["distill_variant"],
                 distill_weighting: str = DEFAULTS["distill_weighting"],
                 distill_temperature: float = DEFAULTS["distill_temperature"],
                 distill_alpha: float = DEFAULTS["distill_alpha"],
                 feature_distill_weight: float = DEFAULTS["feature_distill_weight"],
                 feature_distill_layers: str = DEFAULTS["feature_distill_layers"]) -> None:
        self.variant = distill_variant
        self.weighting = distill_weighting
        self.temperature = distill_temperature
        self.alpha = distill_alpha
        self.feature_weight = feature_distill_weight
        self.wanted = parse_layers(feature_distill_layers)  # as written: indices and names
        self.layers: tuple[int, ...] = ()  # the wanted layers as indices of named_layers(model), once resolved
        self.teacher: nn.Module | None = None
        self.known: Tensor | None = None  # (K,) class ids the teacher was trained on
        self._pending: dict[str, Tensor] | None = None  # teacher weights loaded before a model exists
        self._columns: dict[int, tuple[Tensor, ...]] = {}  # task index -> the column sets of vandeven's term

    def before_task(self, ctx: TaskContext) -> None:
        if self.feature_weight > 0:  # an unknown layer is refused before task 1 trains, not after it
            self.layers = resolve_layers(ctx.model, self.wanted)
        self._teacher(ctx.model)  # restored from a state dict: rebuilt here, while no feature hook is on the model

    def after_task(self, ctx: TaskContext) -> None:
        self.teacher = frozen_copy(ctx.model)  # also at α = 1: the state after a task never depends on α
        known: Sequence[int]
        if ctx.benchmark.scenario == "domain":
            known = range(ctx.benchmark.num_classes)
        else:
            known = sorted({c for task in ctx.benchmark.tasks[: ctx.task_index + 1] for c in task.classes})
        self.known = torch.tensor(list(known), dtype=torch.long, device=ctx.device)

    def ce_weight(self, task_index: int) -> float:
        if task_index < 1:
            return 1.0
        if self.weighting == "task-count":
            return 1.0 / (task_index + 1)
        return self.alpha if self.alpha != 1.0 else 1.0

    def kd_weight(self, task_index: int) -> float:
        """w_KD of task ``task_index`` (0-based): 1 − α, or 1 − 1/t with ``task-count``."""
        return 1.0 - (1.0 / (task_index + 1) if self.weighting == "task-count" else self.alpha)

    def feature_layers(self, task_index: int) -> tuple[str | int, ...]:
        return self.layers if task_index >= 1 and self.feature_weight > 0 else ()

    def penalty(
        self, ctx: TaskContext, batch: Batch, raw_logits: Tensor, features: Features = NO_FEATURES
    ) -> Tensor | None:
        teacher = self._teacher(ctx.model)
        by_features = self.feature_weight > 0 and bool(self.layers)
        weight = self.kd_weight(ctx.task_index)
        if teacher is None or self.known is None or (weight == 0.0 and not by_features):
            return None
        with torch.no_grad():
            taught, teacher_features = teacher_outputs(teacher, batch.x, self.layers if by_features else ())
        ctx.compute.forward_samples += len(batch.x)
        total = None
        if weight != 0.0:
            if self.variant == "old-classes":
                total = kd_term(taught, raw_logits, self.known, self.temperature, 1.0 - weight)
            else:
                total = weight * vandeven_term(taught, raw_logits, self._vandeven_columns(ctx), self.temperature)
        if by_features:
            student = [features[layer] for layer in self.layers]
            term = feature_term(student, [teacher_features[layer] for layer in self.layers], self.feature_weight)
            total = term if total is None else total + term
        return total

    def _vandeven_columns(self, ctx: TaskContext) -> tuple[Tensor, ...]:
        """:func:`vandeven_columns` of the context's task, computed once per task (derived, not state)."""
        if ctx.task_index not in self._columns:
            self._columns = {ctx.task_index: vandeven_columns(ctx.benchmark, ctx.task_index, ctx.device)}
        return self._columns[ctx.task_index]

    def _teacher(self, model: nn.Module) -> nn.Module | None:
        if self._pending is not None:  # restored from a state dict: rebuild on the model's structure
            self.teacher = frozen_copy(model)
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


def vandeven_columns(benchmark: Benchmark, task_index: int, device: torch.device) -> tuple[Tensor, ...]:
    """The column sets of :func:`vandeven_term` on task ``task_index`` (0-based): pairs (the classes the
    student's softmax runs over, the teacher's classes among them), flattened."""
    def ids(classes: Sequence[int]) -> Tensor:
        return torch.tensor(sorted(classes), dtype=torch.long, device=device)

    def every(classes: Sequence[int]) -> tuple[Tensor, Tensor]:  # the teacher's softmax over all of S
        return ids(classes), torch.arange(len(set(classes)), device=device)

    if benchmark.scenario == "domain":
        return every(range(benchmark.num_classes))
    past = benchmark.tasks[:task_index]
    if benchmark.scenario == "task":
        return tuple(column for task in past for column in every(task.classes))
    old = {c for task in past for c in task.classes}
    seen = sorted(old | set(benchmark.tasks[task_index].classes))
    return ids(seen), torch.tensor([seen.index(c) for c in sorted(old)], dtype=torch.long, device=device)


def vandeven_term(teacher_logits: Tensor, raw_logits: Tensor, columns: Sequence[Tensor], temperature: float) -> Tensor:
    """T²·KL(p_teacher ‖ p_student), averaged over the pairs of ``columns``: for each pair (S, K) the
    student's softmax over classes S, the teacher's over the classes K (positions within S) padded with
    zeros for the rest of S; summed over classes, averaged over the batch (van de Ven & Tolias'
    ``loss_fn_kd`` minus the teacher's entropy, which has no gradient)."""
    T = temperature
    terms = []
    for student_columns, kept in zip(columns[::2], columns[1::2], strict=True):
        student = torch.log_softmax(raw_logits[:, student_columns] / T, dim=1)[:, kept]  # (B, K)
        target = torch.log_softmax(teacher_logits.detach()[:, student_columns[kept]] / T, dim=1)
        terms.append((target.exp() * (target - student)).sum(dim=1).mean())
    return T * T * (sum(terms[1:], terms[0]) / len(terms))


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


def frozen_copy(module: _M) -> _M:
    """A frozen copy in eval mode (a teacher, a previous generator): no gradients, none of the last step's either."""
    copied = copy.deepcopy(module).eval()
    for p in copied.parameters():
        p.requires_grad_(False)
        p.grad = None  # deepcopy copies the last step's gradients too
    return copied
