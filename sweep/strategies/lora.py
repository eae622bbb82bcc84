"""Low-rank adapters (LoRA, Hu et al. 2022) on a model's Linear and Conv2d layers, kept outside its state_dict.

A layer with an adapter computes ``W x + (α/r)·B A x``: a forward hook adds the low-rank term to the
layer's output (for a Conv2d, A is a convolution with the layer's kernel, stride and padding into r
channels and B a 1x1 convolution back, so the term is ``(α/r)·(B A reshaped as W) * x``). A and B
sit on the layer as a plain attribute, not as parameters: the model's parameters, its state_dict
and :func:`~sweep.models.named_layers` stay what they were (checkpoints, EWC's names, frozen-layer
counts), and a deepcopy (distillation's teacher) carries its adapter along. B starts at zero, so a
fresh adapter computes exactly the base model; merging is ``W ← W + (α/r)·B A`` reshaped as W.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.errors import ConfigError
from sweep.models import named_layers

_ADAPTER = "_sweep_lora"  # the attribute holding a layer's LoRA (or None)
_HOOKED = "_sweep_lora_hooked"  # the hook is registered once per layer and reads the attribute at each call


@dataclass(eq=False)
class LoRA:
    """One layer's adapter: its output gains ``scale · B A x``."""

    A: nn.Parameter  # (r, in · kh · kw / groups)
    B: nn.Parameter  # (out, r), zero at the start
    scale: float  # α / r

    def delta(self, weight: Tensor) -> Tensor:
        """``scale · B A`` shaped as ``weight``: what merging adds to it."""
        return (self.scale * (self.B @ self.A)).view_as(weight)

    def output(self, layer: nn.Module, x: Tensor) -> Tensor:
        """The low-rank term of ``layer``'s output on its input ``x``."""
        if isinstance(layer, nn.Linear):
            return self.scale * F.linear(F.linear(x, self.A), self.B)
        assert isinstance(layer, nn.Conv2d)
        if layer.groups != 1:  # a grouped convolution: the full delta, one convolution
            return layer._conv_forward(x, self.delta(layer.weight), None)
        rank = self.A.shape[0]
        down = layer._conv_forward(x, self.A.view(rank, *layer.weight.shape[1:]), None)  # (N, r, H', W')
        return self.scale * F.conv2d(down, self.B.view(*self.B.shape, 1, 1))

    def parameters(self) -> list[nn.Parameter]:
        return [self.A, self.B]


def adaptable(module: nn.Module) -> bool:
    """Layers that take an adapter: Linear and Conv2d."""
    return isinstance(module, (nn.Linear, nn.Conv2d))


def new_lora(layer: nn.Module, rank: int, alpha: float, generator: torch.Generator) -> LoRA:
    """A fresh adapter for ``layer``: A Kaiming-uniform as LoRA's (and nn.Linear's) init, drawn from
    ``generator`` (a CPU one, the run's), B zero."""
    weight: Tensor = layer.weight  # type: ignore[assignment]  # Linear and Conv2d hold a tensor
    fan_in = weight[0].numel()  # in · kh · kw / groups
    bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=√5), as nn.Linear initialises its weight
    a = (torch.rand(rank, fan_in, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    A = nn.Parameter(a.to(weight.device, weight.dtype))
    B = nn.Parameter(torch.zeros(weight.shape[0], rank, device=weight.device, dtype=weight.dtype))
    return LoRA(A, B, alpha / rank)


def _add_low_rank(layer: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
    lora: LoRA | None = layer.__dict__.get(_ADAPTER)
    return None if lora is None else output + lora.output(layer, args[0])


def attach(layer: nn.Module, lora: LoRA | None) -> None:
    """Give ``layer`` this adapter (None: none, the layer computes its own weights again)."""
    if lora is not None and not layer.__dict__.get(_HOOKED):
        layer.register_forward_hook(_add_low_rank)  # a module-level function: a deepcopy shares it
        layer.__dict__[_HOOKED] = True
    layer.__dict__[_ADAPTER] = lora


def lora_of(layer: nn.Module) -> LoRA | None:
    return layer.__dict__.get(_ADAPTER)


def adapted_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear and Conv2d of ``model`` by its name in ``model.named_modules()``."""
    return {name: m for name, m in model.named_modules() if adaptable(m)}


def resolve_layers(model: nn.Module, text: str, what: str = "adapter_layers") -> list[int]:
    """Indices into ``named_layers(model)`` of ``text``: ``all``, ``body`` (every layer but the head), or a
    comma-separated list of 0-based indices (negative from the end) and names."""
    layers = named_layers(model)
    if text == "all":
        return list(range(len(layers)))
    if text == "body":
        return list(range(len(layers) - 1))
    by_name = {name: i for i, (name, _) in enumerate(layers)}
    chosen = []
    for token in text.split(","):
        token = token.strip()
        if token.lstrip("-").isdigit() and -len(layers) <= int(token) < len(layers):
            chosen.append(int(token) % len(layers))
        elif token in by_name:
            chosen.append(by_name[token])
        else:
            names = ", ".join(name for name, _ in layers)
            raise ConfigError(f"{what} {text!r}: {token!r} is not a layer of the model; allowed: all, body, "
                              f"indices 0..{len(layers) - 1} (negative from the end) or names {names}")
    return sorted(set(chosen))


def layer_modules(model: nn.Module, layers: Sequence[int]) -> dict[str, nn.Module]:
    """The Linear and Conv2d modules inside the ``named_layers`` at ``layers``, by name in the model."""
    inside = {id(m) for _, layer in (named_layers(model)[i] for i in layers) for m in layer.modules()}
    return {name: m for name, m in adapted_modules(model).items() if id(m) in inside}


def add_loras(modules: dict[str, nn.Module], rank: int, alpha: float, generator: torch.Generator
              ) -> dict[str, LoRA]:
    """A fresh adapter on each of ``modules`` (in their order: the draws are reproducible), attached."""
    loras = {name: new_lora(m, rank, alpha, generator) for name, m in modules.items()}
    for name, lora in loras.items():
        attach(modules[name], lora)
    return loras


@torch.no_grad()
def merge(model: nn.Module) -> int:
    """Fold every attached adapter into its layer's weight and detach it; returns how many were merged."""
    merged = 0
    for m in adapted_modules(model).values():
        lora = lora_of(m)
        if lora is not None:
            weight: Tensor = m.weight  # type: ignore[assignment]
            weight.add_(lora.delta(weight))
            attach(m, None)
            merged += 1
    return merged


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``model.named_parameters()`` with each adapted weight as the layer computes it: ``W + (α/r)·B A``
    (differentiable in A and B); exactly the parameters themselves where no adapter is attached."""
    loras = {id(m.weight): lora for m in adapted_modules(model).values() if (lora := lora_of(m)) is not None}
    for name, p in model.named_parameters():
        lora = loras.get(id(p))
        yield name, p if lora is None else p + lora.delta(p)
