"""Diagonal Fisher information for EWC, exactly as docs/design.md defines the four estimators.

- ``exact``:     E_x Σ_c p(c|x) (∂ log p(c|x)/∂θ)²
- ``sampled``:   E_x (∂ log p(ŷ|x)/∂θ)², ŷ drawn from p(·|x)
- ``empirical``: E_x (∂ log p(y|x)/∂θ)², y the true label
- ``batched``:   mean over batches of (∂ batch-mean cross-entropy/∂θ)²; biased (it shrinks with
  the batch size), so its λ lives on another scale

The per-sample estimators use true per-sample gradients with no per-sample loop
(:mod:`sweep.strategies.per_sample`: an activation rule for ``nn.Linear`` and ``nn.Conv2d``,
``torch.func`` for any other module). Log-probabilities come from ``logits(x, task_ids)``, the
trainer's masked logits: over the task's own classes in task-incremental form, over the classes seen so
far in class-incremental form with ``class_outputs: seen``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.data.tasks import to_float
from sweep.strategies.base import TaskContext
from sweep.strategies.per_sample import (
    MAX_PER_SAMPLE_ELEMENTS,
    LogitsFn,
    add_linear,
    add_positional,
    capture,
    fallback_squares,
    intact,
    rule_layers,
)

__all__ = ["ACTIVATION_BUDGET", "ESTIMATORS", "MAX_CHUNK", "MAX_PER_SAMPLE_ELEMENTS", "LogitsFn", "fisher_diagonal",
           "task_fisher"]

ESTIMATORS = ("exact", "sampled", "empirical", "batched")
MAX_CHUNK = 1024  # samples per forward pass: large matmuls run several times faster than batches of 64
ACTIVATION_BUDGET = 1 << 23  # layer-output elements per chunk (32 MB in float32): bounds a CNN's chunk


def task_fisher(ctx: TaskContext, estimator: str, samples: int | None = None) -> dict[str, Tensor]:
    """The diagonal Fisher of ``ctx.model`` on the current task's training split.

    Args:
        ctx: the task just trained; its masked logits and batch size are used, and the run's seed.
        estimator: one of ``ESTIMATORS``.
        samples: how many training samples to use, drawn without replacement; None: all of them.
    """
    data = ctx.task_training_data()
    # a stream of its own, seeded from the run's seed and the task: drawing the subset and the sampled
    # labels never shifts the run's batches, so EWC at λ = 0 stays naive bit for bit
    seed = (ctx.generator.initial_seed() * 1_000_003 + 7919 + ctx.task_index) % 2**63
    generator = torch.Generator().manual_seed(seed)
    return fisher_diagonal(
        ctx.model, data.split.x, data.split.y, estimator=estimator, logits=ctx.logits, task_ids=data.task_ids,
        samples=samples, batch_size=ctx.batch_size, generator=generator,
    )


def fisher_diagonal(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    estimator: str,
    logits: LogitsFn | None = None,
    task_ids: Tensor | None = None,
    samples: int | None = None,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """Diagonal Fisher of every parameter of ``model`` (frozen ones included), name -> tensor.

    Args:
        model: the network; put in eval mode and given gradients for the call, then restored.
        x: (N, ...) inputs; uint8 images are scaled to [0, 1], float inputs are used as they are.
        y: (N,) true labels (used by ``empirical`` and ``batched``).
        estimator: one of ``ESTIMATORS``.
        logits: ``(x, task_ids) -> (B, classes)``, masked in task-incremental form; None: ``model(x)``.
        task_ids: (N,) task index per sample, passed on to ``logits``.
        samples: use this many samples, drawn without replacement with ``generator``; None: all.
        batch_size: the batch of the ``batched`` estimator (the training batch size).
        generator: CPU generator for the subset and for ``sampled``'s draws. Those draws are
            inverse-CDF draws of u_i ~ U[0, 1), one float64 u per selected sample drawn up front,
            so they do not depend on ``chunk_size``.
        chunk_size: samples per forward pass of the per-sample estimators; None: as many as keep the
            layer outputs within ``ACTIVATION_BUDGET`` elements, at most ``MAX_CHUNK``.

    Returns:
        name -> tensor shaped like the parameter: the mean over samples (or batches) of the
        squared gradients.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"fisher estimator {estimator!r} is unknown; allowed: {', '.join(ESTIMATORS)}")
    logits_fn: LogitsFn = logits if logits is not None else (lambda inputs, _ids: model(inputs))
    n = int(y.shape[0])
    if n == 0:
        raise ValueError("cannot estimate a Fisher from zero samples")
    order = None  # every sample, in order: chunks are views, not gathers
    if samples is not None and samples < n:
        order = torch.randperm(n, generator=generator)[:samples].to(y.device)
        n = samples
    uniforms = None
    if estimator == "sampled":
        uniforms = torch.rand(n, generator=generator, dtype=torch.float64).to(y.device)
    with estimating(model):
        if estimator == "batched":
            return _batched(model, logits_fn, x, y, task_ids, order, n, batch_size)
        return _per_sample(model, logits_fn, x, y, task_ids, order, n, estimator, uniforms, chunk_size)


@contextmanager
def estimating(model: nn.Module) -> Iterator[None]:
    """Eval mode and gradients for every parameter (frozen layers too), restored afterwards: how an importance
    estimate (EWC's Fisher, MAS's) runs the model."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        with torch.enable_grad():
            for p, _ in flags:
                p.requires_grad_(True)
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _inputs(x: Tensor) -> Tensor:
    return to_float(x) if x.dtype == torch.uint8 else x  # float64 stays float64 (the exactness tests)


def _rows(t: Tensor, order: Tensor | None, start: int, stop: int) -> Tensor:
    """Samples start:stop of the selection: a view when every sample is used, else a gather."""
    return t[start:stop] if order is None else torch.index_select(t, 0, order[start:stop].to(t.device))


def _batched(
    model: nn.Module, logits_fn: LogitsFn, x: Tensor, y: Tensor, task_ids: Tensor | None, order: Tensor | None,
    n: int, batch_size: int,
) -> dict[str, Tensor]:
    # batches in selection order (natural order when every sample is used), the last one possibly smaller
    named = dict(model.named_parameters())
    fisher = {name: torch.zeros_like(p) for name, p in named.items()}
    batches = 0
    for start in range(0, n, batch_size):
        stop = start + batch_size
        ids = None if task_ids is None else _rows(task_ids, order, start, stop)
        loss = F.cross_entropy(logits_fn(_inputs(_rows(x, order, start, stop)), ids), _rows(y, order, start, stop))
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
        reached = [(fisher[name], g) for name, g in zip(named, grads) if g is not None]
        if reached:  # F += g², in place, one fused call over the parameters
            sums, squared = zip(*reached)
            torch._foreach_addcmul_(list(sums), list(squared), list(squared))
        batches += 1
    return {name: f / batches for name, f in fisher.items()}


def _per_sample(
    model: nn.Module, logits_fn: LogitsFn, x: Tensor, y: Tensor, task_ids: Tensor | None, order: Tensor | None,
    n: int, estimator: str, uniforms: Tensor | None, chunk_size: int | None,
) -> dict[str, Tensor]:
    named = dict(model.named_parameters())
    fisher = {name: torch.zeros_like(p) for name, p in named.items()}
    names_of = {id(p): name for name, p in named.items()}
    layers = rule_layers(model)
    start, size = 0, chunk_size or 64  # without a chunk size, the first chunk measures the layer outputs
    while start < n:
        stop = min(start + size, n)
        xc = _inputs(_rows(x, order, start, stop))
        tc = None if task_ids is None else _rows(task_ids, order, start, stop)
        captured: dict[nn.Module, list[tuple[Tensor, Tensor, int, int]]] = {}
        with capture(layers, captured):
            out = logits_fn(xc, tc)  # (B, classes)
        if chunk_size is None:
            per_sample = sum(call[1].numel() for calls in captured.values() for call in calls) // (stop - start)
            size = max(64, min(MAX_CHUNK, ACTIVATION_BUDGET // max(1, per_sample)))
        # a layer called twice, or whose input/output was changed in place, goes to the fallback
        handled = [m for m in layers if intact(captured.get(m, []))]
        handled_ids = {id(p) for m in handled for p in m.parameters(recurse=False)}
        fallback = [name for name, p in named.items() if id(p) not in handled_ids]
        p = torch.softmax(out.detach(), dim=1)  # (B, classes); exactly 0 on masked classes
        draws = None if uniforms is None else uniforms[start:stop]
        objectives = _objectives(estimator, out, p, _rows(y, order, start, stop), draws)
        # Linear layers on (B, features): Σ over objectives of δ², multiplied by a² once at the end
        linear_sq: dict[nn.Module, Tensor | None] = {
            m: None for m in handled if isinstance(m, nn.Linear) and captured[m][0][0].dim() == 2
        }
        outputs = [captured[m][0][1] for m in handled]
        for k, (target, weight) in enumerate(objectives):
            if outputs:
                # ∂ Σ_i w_i log p(c_i|x_i) / ∂ logits = w_i (e_(c_i) − p_i), backpropagated to every layer's z
                w = p.new_ones(p.shape[0], 1) if weight is None else weight[:, None]
                seed = (-p * w).scatter_add_(1, target[:, None], w)
                deltas = torch.autograd.grad(
                    out, outputs, seed, retain_graph=k < len(objectives) - 1, allow_unused=True
                )
                for m, delta in zip(handled, deltas):
                    if delta is None:
                        continue  # the layer ran but does not reach the logits
                    if m in linear_sq:
                        so_far = linear_sq[m]
                        if so_far is None:
                            linear_sq[m] = delta.square()
                        else:
                            so_far.addcmul_(delta, delta)
                    else:
                        add_positional(m, captured[m][0][0], delta, fisher, names_of)
            if fallback:
                for name, sq in fallback_squares(model, logits_fn, fallback, xc, tc, target, weight).items():
                    fisher[name] += sq
        for m, delta_sq in linear_sq.items():
            if delta_sq is not None:
                add_linear(m, captured[m][0][0], delta_sq, fisher, names_of)
        start = stop
    return {name: f / n for name, f in fisher.items()}


def _objectives(
    estimator: str, out: Tensor, p: Tensor, y: Tensor, uniforms: Tensor | None
) -> list[tuple[Tensor, Tensor | None]]:
    """(target class per sample, weight per sample or None) for each backward pass of a chunk.

    The weight of ``exact`` is sqrt(p_c), so that the squared gradient carries p_c.
    """
    n = out.shape[0]
    if estimator == "empirical":
        return [(y, None)]
    if estimator == "sampled":
        assert uniforms is not None
        cdf = p.double().cumsum(1)
        drawn = torch.searchsorted(cdf, (uniforms[:n] * cdf[:, -1])[:, None], right=True).squeeze(1)
        last = (p > 0).cumsum(1).argmax(1)  # last class with p > 0: guards a draw rounded onto the total
        return [(torch.minimum(drawn, last), None)]
    # exact: only the classes some sample of the chunk can output (task-IL masks the others)
    possible = (out.detach() > torch.finfo(out.dtype).min).any(0).nonzero().flatten().tolist()
    return [(torch.full((n,), c, dtype=torch.long, device=out.device), p[:, c].sqrt()) for c in possible]
