"""The optimizer every trial and every production fine-tune uses: Adam (fused where torch has it) or SGD.

torch's fused Adam kernel (one pass over all the weights per step) takes a 269k-weight MLP's step
from 0.49 ms to 0.18 ms on one CPU core, against a 1.1 ms forward and backward at batch 64. It
exists for floating-point weights on the CPU and on CUDA; anything else gets torch's default path.
SGD keeps torch's default path: its fused kernel refuses sparse gradients (``nn.Embedding(sparse=True)``),
which plain SGD accepts. A hand-written loop reproduces the trainer bit for bit with
``torch.optim.Adam(..., fused=True)`` (or plain ``torch.optim.SGD``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from sweep.config import OPTIMIZERS

FUSED_DEVICES = ("cpu", "cuda")


def make_optimizer(
    kind: str, params: Tensor | Iterable[Tensor] | Iterable[dict[str, Any]], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (``kind="adam"``) or ``SGD`` over ``params``: tensors, or groups as torch takes them."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer {kind!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
    items: list[Any] = [params] if isinstance(params, Tensor) else list(params)  # tensors, or groups (dicts)
    if items and all(isinstance(item, dict) for item in items):
        # a group's params may be a generator (model.parameters()): read it once, hand torch the list
        items = [{**group, "params": _tensors(group["params"])} if "params" in group else group for group in items]
        tensors = [p for group in items for p in group.get("params", [])]
    else:
        tensors = items
    if kind == "sgd":
        return torch.optim.SGD(items, lr=lr, weight_decay=weight_decay)
    fused = bool(tensors) and all(
        isinstance(p, Tensor) and p.device.type in FUSED_DEVICES and p.is_floating_point() for p in tensors
    )
    return torch.optim.Adam(items, lr=lr, weight_decay=weight_decay, fused=fused or None)


def schedule_factor(step: int, total: int, warmup: int, schedule: str = "constant") -> float:
    """The learning-rate factor of a task's ``step`` (0-based) of ``total``: a linear warmup, ``(step + 1) / warmup``
    over the first ``warmup`` steps, then 1 (``constant``) or, for ``cosine``, ``(1 + cos(π·s/n)) / 2`` at the
    s-th of the n steps left, which reaches 0 just after the task's last step."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    return 1.0


def task_schedule(warmup_epochs: float, schedule: str, steps_per_epoch: int, total: int
                  ) -> Callable[[int], float] | None:
    """``step -> factor`` of a fine-tune of ``total`` steps (every phase), ``warmup_epochs`` of them (rounded up
    to whole steps, at most ``total``) warming up; None when there is neither a warmup nor a schedule."""
    if warmup_epochs == 0 and schedule == "constant":
        return None
    warmup = min(total, math.ceil(warmup_epochs * steps_per_epoch))
    return partial(schedule_factor, total=total, warmup=warmup, schedule=schedule)


def _tensors(params: Tensor | Iterable[Tensor]) -> list[Tensor]:
    return [params] if isinstance(params, Tensor) else list(params)
