"""Diagonal Fisher information for EWC, exactly as DESIGN.md defines the four estimators.

- ``exact``:     E_x Σ_c p(c|x) (∂ log p(c|x)/∂θ)²
- ``sampled``:   E_x (∂ log p(ŷ|x)/∂θ)², ŷ drawn from p(·|x)
- ``empirical``: E_x (∂ log p(y|x)/∂θ)², y the true label
- ``batched``:   mean over batches of (∂ batch-mean cross-entropy/∂θ)²; biased (it shrinks with
  the batch size), so its λ lives on another scale

The per-sample estimators use true per-sample gradients with no per-sample loop. Forward hooks
on ``nn.Linear`` and ``nn.Conv2d`` keep each layer's input ``a`` and output ``z``; one batched
``autograd.grad`` of Σ_i w_i log p(c_i|x_i) with respect to the z's gives every sample's output
gradient δ_i, since sample i's log-probability depends only on its own z_i (the model runs in
eval mode: nothing mixes samples). Then, for sample i,

- Linear:  ∂/∂W = δ_i a_iᵀ, so Σ_i (∂/∂W)² = (δ²)ᵀ(a²): one matmul per chunk, and for ``exact``
  one matmul for all classes, since Σ_c p_c δ_c² multiplies the same a².
- Conv2d:  ∂/∂W = Σ_positions δ_i unfold(a_i)ᵀ: the sum over positions does not factor, so the
  per-sample gradients are built in sub-chunks of bounded size, squared and summed.

Any other parametrised module (or a layer called twice, or whose tensors are changed in place)
falls back to ``torch.func`` (vmap over grad). Log-probabilities come from ``logits(x, task_ids)``,
the trainer's masked logits: over the task's own classes in task-incremental form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from sweep.data.tasks import to_float
from sweep.strategies.base import TaskContext

ESTIMATORS = ("exact", "sampled", "empirical", "batched")
MAX_CHUNK = 1024  # samples per forward pass: large matmuls run several times faster than batches of 64
ACTIVATION_BUDGET = 1 << 23  # layer-output elements per chunk (32 MB in float32): bounds a CNN's chunk
MAX_PER_SAMPLE_ELEMENTS = 1 << 22  # bound on per-sample gradient elements held at once (16 MB in float32)

LogitsFn = Callable[[Tensor, Tensor | None], Tensor]


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
    with _fisher_mode(model):
        if estimator == "batched":
            return _batched(model, logits_fn, x, y, task_ids, order, n, batch_size)
        return _per_sample(model, logits_fn, x, y, task_ids, order, n, estimator, uniforms, chunk_size)


@contextmanager
def _fisher_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and gradients for every parameter (frozen layers too), restored afterwards."""
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
    return t[start:stop] if order is None else t[order[start:stop]]


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
        for name, g in zip(named, grads):
            if g is not None:
                fisher[name] += g.square()
        batches += 1
    return {name: f / batches for name, f in fisher.items()}


def _rule_layers(model: nn.Module) -> list[nn.Module]:
    """Linear and Conv2d layers the activation rule covers: zero padding, parameters not shared."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    layers = []
    for module in model.modules():
        conv_ok = (
            isinstance(module, nn.Conv2d) and isinstance(module.padding, tuple) and module.padding_mode == "zeros"
        )
        if (isinstance(module, nn.Linear) or conv_ok) and all(
            owners[id(p)] == 1 for p in module.parameters(recurse=False)
        ):
            layers.append(module)
    return layers


@contextmanager
def _capture(layers: list[nn.Module], store: dict[nn.Module, list[tuple[Tensor, Tensor, int, int]]]) -> Iterator[None]:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        a = inputs[0]
        store.setdefault(module, []).append((a.detach(), output, a._version, output._version))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _intact(calls: list[tuple[Tensor, Tensor, int, int]]) -> bool:
    """One call whose input and output were not changed in place since: the rule applies."""
    return len(calls) == 1 and calls[0][0]._version == calls[0][2] and calls[0][1]._version == calls[0][3]


def _per_sample(
    model: nn.Module, logits_fn: LogitsFn, x: Tensor, y: Tensor, task_ids: Tensor | None, order: Tensor | None,
    n: int, estimator: str, uniforms: Tensor | None, chunk_size: int | None,
) -> dict[str, Tensor]:
    named = dict(model.named_parameters())
    fisher = {name: torch.zeros_like(p) for name, p in named.items()}
    names_of = {id(p): name for name, p in named.items()}
    layers = _rule_layers(model)
    start, size = 0, chunk_size or 64  # without a chunk size, the first chunk measures the layer outputs
    while start < n:
        stop = min(start + size, n)
        xc = _inputs(_rows(x, order, start, stop))
        tc = None if task_ids is None else _rows(task_ids, order, start, stop)
        captured: dict[nn.Module, list[tuple[Tensor, Tensor, int, int]]] = {}
        with _capture(layers, captured):
            out = logits_fn(xc, tc)  # (B, classes)
        if chunk_size is None:
            per_sample = sum(call[1].numel() for calls in captured.values() for call in calls) // (stop - start)
            size = max(64, min(MAX_CHUNK, ACTIVATION_BUDGET // max(1, per_sample)))
        # a layer called twice, or whose input/output was changed in place, goes to the fallback
        handled = [m for m in layers if _intact(captured.get(m, []))]
        handled_ids = {id(p) for m in handled for p in m.parameters(recurse=False)}
        fallback = [name for name, p in named.items() if id(p) not in handled_ids]
        p = torch.softmax(out.detach(), dim=1)  # (B, classes); exactly 0 on masked classes
        draws = None if uniforms is None else uniforms[start:stop]
        objectives = _objectives(estimator, out, p, _rows(y, order, start, stop), draws)
        # Linear layers on (B, features): Σ over objectives of δ², multiplied by a² once at the end
        linear_sq = {m: None for m in handled if isinstance(m, nn.Linear) and captured[m][0][0].dim() == 2}
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
                        if linear_sq[m] is None:
                            linear_sq[m] = delta.square()
                        else:
                            linear_sq[m].addcmul_(delta, delta)
                    else:
                        _add_positional(m, captured[m][0][0], delta, fisher, names_of)
            if fallback:
                for name, sq in _fallback(model, logits_fn, fallback, xc, tc, target, weight).items():
                    fisher[name] += sq
        for m, sq in linear_sq.items():
            if sq is None:
                continue
            a = captured[m][0][0]
            fisher[names_of[id(m.weight)]] += sq.T @ a.square()  # (out, B) @ (B, in) = Σ_i (δ_i²)ᵀ(a_i²)
            if m.bias is not None:
                fisher[names_of[id(m.bias)]] += sq.sum(0)
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


def _add_positional(
    m: nn.Module, a: Tensor, delta: Tensor, fisher: dict[str, Tensor], names_of: dict[int, str]
) -> None:
    """Σ_i g_i² for a layer whose weight is shared over positions (Conv2d, or Linear on (B, ..., in))."""
    weight: Tensor = m.weight  # type: ignore[assignment]
    if isinstance(m, nn.Conv2d):
        groups = m.groups
        d_all = delta.flatten(2)  # (B, out, L)

        def columns(part: Tensor) -> Tensor:  # (b, in * kh * kw, L)
            return F.unfold(part, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)

    else:
        groups = 1
        d_all = delta.reshape(delta.shape[0], -1, delta.shape[-1]).transpose(1, 2)  # (B, out, L)

        def columns(part: Tensor) -> Tensor:  # (b, in, L)
            return part.reshape(part.shape[0], -1, part.shape[-1]).transpose(1, 2)

    positions = d_all.shape[-1]
    per_sample = weight.numel() + (weight[0].numel() * groups + d_all.shape[1]) * positions
    step = max(1, MAX_PER_SAMPLE_ELEMENTS // per_sample)
    w_sq = torch.zeros_like(weight)
    b_sq = None if m.bias is None else torch.zeros_like(m.bias)
    for s in range(0, a.shape[0], step):
        d = d_all[s : s + step]
        b = d.shape[0]
        cols = columns(a[s : s + step]).reshape(b, groups, -1, positions)
        g = torch.einsum("bgol,bgil->bgoi", d.reshape(b, groups, -1, positions), cols)  # per-sample grads
        w_sq += g.square().sum(0).reshape(weight.shape)
        if b_sq is not None:
            b_sq += d.sum(2).square().sum(0)
    fisher[names_of[id(weight)]] += w_sq
    if b_sq is not None:
        fisher[names_of[id(m.bias)]] += b_sq


class _Logits(nn.Module):
    """Wraps the logits function so that torch.func.functional_call can swap the model's parameters."""

    def __init__(self, model: nn.Module, logits_fn: LogitsFn) -> None:
        super().__init__()
        self.model = model
        self.logits_fn = logits_fn

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self.logits_fn(x, task_ids)


def _fallback(
    model: nn.Module, logits_fn: LogitsFn, names: list[str], x: Tensor, task_ids: Tensor | None, target: Tensor,
    weight: Tensor | None,
) -> dict[str, Tensor]:
    """Σ_i g_i² for parameters the activation rule does not cover, by vmap over grad."""
    wrapper = _Logits(model, logits_fn)
    params = dict(model.named_parameters())
    sub = {name: params[name].detach() for name in names}
    weights = torch.ones_like(target, dtype=x.dtype) if weight is None else weight

    def log_prob(theta: dict[str, Tensor], xi: Tensor, ti: Tensor | None, ci: Tensor, wi: Tensor) -> Tensor:
        swapped = {f"model.{name}": value for name, value in theta.items()}
        out = functional_call(wrapper, swapped, (xi[None], None if ti is None else ti[None]))
        return wi * torch.log_softmax(out, dim=1)[0].gather(0, ci[None])[0]

    per_sample_grads = vmap(grad(log_prob), in_dims=(None, 0, None if task_ids is None else 0, 0, 0))
    step = max(1, MAX_PER_SAMPLE_ELEMENTS // max(1, sum(v.numel() for v in sub.values())))
    total = {name: torch.zeros_like(v) for name, v in sub.items()}
    for s in range(0, x.shape[0], step):
        part = slice(s, s + step)
        with torch.no_grad():  # the other parameters require grad: without this, the Fisher would carry a graph
            grads = per_sample_grads(sub, x[part], None if task_ids is None else task_ids[part], target[part],
                                     weights[part])
        for name, g in grads.items():
            total[name] += g.detach().square().sum(0)
    return total
