"""Squared per-sample gradients, summed over the samples, without a per-sample loop (for the Fisher).

Forward hooks on ``nn.Linear`` and ``nn.Conv2d`` keep each layer's input ``a`` and output ``z``; one batched
``autograd.grad`` of Σ_i w_i log p(c_i|x_i) with respect to the z's gives every sample's output
gradient δ_i, since sample i's log-probability depends only on its own z_i (the model runs in
eval mode: nothing mixes samples). Then, for sample i,

- Linear:  ∂/∂W = δ_i a_iᵀ, so Σ_i (∂/∂W)² = (δ²)ᵀ(a²): one matmul per chunk, and for ``exact``
  one matmul for all classes, since Σ_c p_c δ_c² multiplies the same a².
- Conv2d:  ∂/∂W = Σ_positions δ_i unfold(a_i)ᵀ: the sum over positions does not factor, so the
  per-sample gradients are built in sub-chunks of bounded size, squared and summed.

Any other parametrised module (or a layer called twice, or whose tensors are changed in place)
falls back to ``torch.func`` (vmap over grad). :mod:`sweep.strategies.fisher` drives both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

MAX_PER_SAMPLE_ELEMENTS = 1 << 22  # bound on per-sample gradient elements held at once (16 MB in float32)

LogitsFn = Callable[[Tensor, Tensor | None], Tensor]


def rule_layers(model: nn.Module) -> list[nn.Module]:
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
def capture(layers: list[nn.Module], store: dict[nn.Module, list[tuple[Tensor, Tensor, int, int]]]) -> Iterator[None]:
    """While open, every call of ``layers`` is kept in ``store``: (input, output, their versions then)."""
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        a = inputs[0]
        store.setdefault(module, []).append((a.detach(), output, a._version, output._version))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def intact(calls: list[tuple[Tensor, Tensor, int, int]]) -> bool:
    """One call whose input and output were not changed in place since: the rule applies."""
    return len(calls) == 1 and calls[0][0]._version == calls[0][2] and calls[0][1]._version == calls[0][3]


def add_linear(m: nn.Module, a: Tensor, delta_sq: Tensor, fisher: dict[str, Tensor], names_of: dict[int, str]) -> None:
    """Σ_i g_i² for a Linear layer on (B, in), from ``delta_sq`` = Σ over a chunk's objectives of δ² (B, out)."""
    fisher[names_of[id(m.weight)]] += delta_sq.T @ a.square()  # (out, B) @ (B, in) = Σ_i (δ_i²)ᵀ(a_i²)
    if m.bias is not None:
        fisher[names_of[id(m.bias)]] += delta_sq.sum(0)


def add_positional(
    m: nn.Module, a: Tensor, delta: Tensor, fisher: dict[str, Tensor], names_of: dict[int, str]
) -> None:
    """Σ_i g_i² for a layer whose weight is shared over positions (Conv2d, or Linear on (B, ..., in))."""
    # torch types a module's attributes Tensor | Module; a layer rule_layers covers holds tensors in both
    weight: Tensor = m.weight  # type: ignore[assignment]
    bias: Tensor | None = m.bias  # type: ignore[assignment]
    if isinstance(m, nn.Conv2d):
        groups = m.groups
        d_all = delta.flatten(2)  # (B, out, L)
        assert isinstance(m.padding, tuple), "rule_layers leaves string padding ('same') to the fallback"
        padding = m.padding

        def columns(part: Tensor) -> Tensor:  # (b, in * kh * kw, L)
            return F.unfold(part, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)

    else:
        groups = 1
        d_all = delta.reshape(delta.shape[0], -1, delta.shape[-1]).transpose(1, 2)  # (B, out, L)

        def columns(part: Tensor) -> Tensor:  # (b, in, L)
            return part.reshape(part.shape[0], -1, part.shape[-1]).transpose(1, 2)

    positions = d_all.shape[-1]
    per_sample = weight.numel() + (weight[0].numel() * groups + d_all.shape[1]) * positions
    step = max(1, MAX_PER_SAMPLE_ELEMENTS // per_sample)
    w_sq = torch.zeros_like(weight)
    b_sq = None if bias is None else torch.zeros_like(bias)
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
        fisher[names_of[id(bias)]] += b_sq


class _Logits(nn.Module):
    """Wraps the logits function so that torch.func.functional_call can swap the model's parameters."""

    def __init__(self, model: nn.Module, logits_fn: LogitsFn) -> None:
        super().__init__()
        self.model = model
        self.logits_fn = logits_fn

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self.logits_fn(x, task_ids)


def fallback_squares(
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
