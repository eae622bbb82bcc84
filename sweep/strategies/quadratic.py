"""What every weight penalty shares: factor · (Σ A (θ − m)² + offset), a quadratic pull of each weight toward an
anchor m with a precision A (1 for L2-SP), as one fused autograd node for the loss, or as its gradient added in place
to ``.grad`` by the trainer (``penalty_grad``). EWC, SI, MAS and L2-SP say only what A, m, the factor and the offset
are (:meth:`WeightPenalty.quadratic`); the two paths, and the once-a-task slopes of the in-place one, live here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sweep.strategies.base import NO_FEATURES, Batch, Features, Strategy, TaskContext
from sweep.strategies.lora import lora_of


def quadratic_penalty(
    params: Sequence[Tensor], anchor: Sequence[Tensor], precision: Sequence[Tensor] | None = None
) -> Tensor:
    """Σ A (θ − m)² over parameter tensors (A = 1 when ``precision`` is None), as one autograd node.

    Written out, it is ~30 small autograd nodes per step; fused, the forward is three passes over
    the weights and the backward one (2A(θ − m)): half the cost (0.5 ms instead of 1 ms per step
    for the 269k-weight MLP on one core, where a plain step takes 1.3 ms).
    """
    return _Quadratic.apply(list(anchor), None if precision is None else list(precision), *params)


def add_quadratic_grad(params: Sequence[Tensor], anchor: Sequence[Tensor], slope: Sequence[Tensor] | float) -> None:
    """Add S (θ − m) to the ``.grad`` of each parameter that trains (``requires_grad``), in place: the gradient of
    ½ Σ S (θ − m)² (S = 2 × a penalty's factor × its precision A, made once per task by the caller, or a number),
    as :func:`quadratic_penalty`'s backward gives it up to rounding, in two passes over the weights and no autograd
    node, value or gradient to accumulate. For the trainer, after the backward pass and before the step."""
    chosen = [i for i, p in enumerate(params) if p.requires_grad]
    if not chosen:
        return
    diffs = torch._foreach_sub([params[i].detach() for i in chosen], [anchor[i] for i in chosen])
    grads = [params[i].grad for i in chosen]
    if any(g is None for g in grads):  # a parameter the loss did not reach: its gradient is the penalty's alone
        for i, g in zip(chosen, grads):
            if g is None:
                params[i].grad = torch.zeros_like(params[i])
        grads = [params[i].grad for i in chosen]
    if isinstance(slope, float):
        torch._foreach_add_(grads, diffs, alpha=slope)  # type: ignore[arg-type]
    else:
        torch._foreach_addcmul_(grads, diffs, [slope[i] for i in chosen])  # type: ignore[arg-type]


def by_grad(ctx: TaskContext) -> bool:
    """Whether a penalty on ``ctx.model``'s weights goes into ``.grad`` by ``penalty_grad`` (the trainer's way) rather
    than into the loss: not with a low-rank adapter attached (the weights the model computes with are then not
    its parameters, and autograd carries the penalty into the adapter's)."""
    return ctx.penalty_grads and not any(lora_of(m) is not None for m in ctx.model.modules())


class _Quadratic(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, anchor: list[Tensor], precision: list[Tensor] | None, *params: Tensor) -> Tensor:
        diffs = torch._foreach_sub(list(params), anchor)
        slopes = diffs if precision is None else torch._foreach_mul(diffs, precision)  # A (θ − m)
        ctx.save_for_backward(*slopes)
        return torch.stack([torch.dot(a.flatten(), d.flatten()) for a, d in zip(slopes, diffs)]).sum()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        needs = ctx.needs_input_grad[2:]
        return (None, None, *[2 * grad * slope if need else None for slope, need in zip(ctx.saved_tensors, needs)])


class Quadratic:
    """One penalty's terms, factor · (Σ A (θ − m)² + offset): ``precision`` A (None: 1) and ``anchor`` m by
    parameter name."""

    __slots__ = ("factor", "precision", "anchor", "offset")

    def __init__(self, factor: float, anchor: dict[str, Tensor], precision: dict[str, Tensor] | None = None,
                 offset: float = 0.0) -> None:
        self.factor, self.anchor, self.precision, self.offset = factor, anchor, precision, offset


class WeightPenalty(Strategy):
    """A strategy whose penalty is a :class:`Quadratic` on the model's weights.

    ``penalty`` returns it whole and differentiable, except in the trainer (``ctx.penalty_grads``), where
    ``penalty_grad`` adds its gradient 2·factor·A (θ − m) to ``.grad`` after the backward pass instead; the slopes
    2·factor·A are made once and kept until :meth:`reslope` (call it whenever A, the factor or the anchor's set of
    names changes)."""

    _slopes: list[Tensor] | float | None = None  # 2·factor·A in named_parameters order, made once a task
    # (the task's context, by reference, and its penalty_grads; its model's (names, parameters), or None when the
    # penalty is not by grad)
    _by_grad: tuple[TaskContext, bool, tuple[tuple[str, ...], tuple[nn.Parameter, ...]] | None] | None = None

    def quadratic(self) -> Quadratic | None:
        """The penalty's terms now; None when there is none (before any task, or at strength 0)."""
        raise NotImplementedError

    def penalised(self, model: nn.Module) -> Iterator[tuple[str, Tensor]]:
        """(name, weight) the penalty is a function of: the model's parameters (EWC: as the model computes them)."""
        return model.named_parameters()

    def reslope(self) -> None:
        self._slopes = None

    def penalty(
        self, ctx: TaskContext, batch: Batch, raw_logits: Tensor, features: Features = NO_FEATURES
    ) -> Tensor | None:
        return None if self._weights(ctx) is not None else self.model_penalty(ctx.model)

    def _weights(self, ctx: TaskContext) -> tuple[tuple[str, ...], tuple[nn.Parameter, ...]] | None:
        """(names, parameters) of ``ctx.model`` when the penalty goes into ``.grad`` (:func:`by_grad`), else None:
        asked once per task context, not at every step (the model's modules and parameters are set before the
        task's first step)."""
        cached = self._by_grad
        # the context is held until the next one (an id could be reused); its penalty_grads is the trainer's switch
        if cached is None or cached[0] is not ctx or cached[1] != ctx.penalty_grads:
            named = None
            if by_grad(ctx):
                pairs = list(ctx.model.named_parameters())
                named = (tuple(n for n, _ in pairs), tuple(p for _, p in pairs))
            cached = (ctx, ctx.penalty_grads, named)
            self._by_grad = cached
        return cached[2]

    def penalty_grad(self, ctx: TaskContext) -> None:
        term = self.quadratic()
        weights = None if term is None else self._weights(ctx)
        if term is None or weights is None:
            return
        names, params = weights
        if self._slopes is None:  # the gradient of factor · A (θ − m)² is 2·factor·A (θ − m)
            slope = 2.0 * term.factor  # a float even for an integer factor: add_quadratic_grad tells them apart
            self._slopes = slope if term.precision is None else [slope * term.precision[n] for n in names]
        add_quadratic_grad(params, [term.anchor[n] for n in names], self._slopes)

    def model_penalty(self, model: nn.Module) -> Tensor | None:
        """The penalty at ``model``'s weights, differentiable in them; None when there is none."""
        term = self.quadratic()
        if term is None:
            return None
        names, params = zip(*self.penalised(model))
        precision = None if term.precision is None else [term.precision[n] for n in names]
        quadratic = quadratic_penalty(params, [term.anchor[n] for n in names], precision)
        return term.factor * (quadratic + term.offset if term.offset else quadratic)
