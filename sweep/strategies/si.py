"""si: synaptic intelligence (Zenke, Poole & Ganguli 2017), penalty c · Σ_k Ω_k (θ_k − θ*_k)².

Each weight's importance is the path integral of its contribution to the fall of the loss:

- during a task, after every optimizer step (the contract's ``after_step``), ω += −g · Δθ_step, g the step's
  gradient and Δθ_step the step's change of the weight;
- when the task ends, Ω += ω / (Δθ_task² + ξ), Δθ_task the weight's change over the whole task (from the
  weights the task started from: after the previous task, and after any interpolation), then ω = 0;
- θ* = the weights after the latest task; the penalty is c · Σ Ω (θ − θ*)², as Zenke et al. write it and as
  Hsu et al.'s and van de Ven's code compute it (no factor 1/2).

g is the gradient the step used, the one in ``.grad`` after the trainer's backward: the whole loss's, SI's own
penalty included, as van de Ven's code does. Zenke's and Hsu et al.'s code take the unregularised loss's
gradient, which costs a second backward pass on every step from task 2 on; the strategy contract leaves the
step to the trainer, which runs one. On task 1 (no penalty yet) the two are the same. Ω is not clipped at 0
(neither does any of the three): a weight whose path went uphill on average gets a negative importance.

c = 0 returns no penalty, so it reproduces naive bit for bit: the path integral only reads the weights and
their gradients, never changes them and draws no random number, and it runs at any c (the state after task 1
never depends on c). The last task's path is not integrated: no task follows to be penalised with it (as EWC
skips the last Fisher), so SI costs nothing on the last task and ``stats`` report the Ω that c multiplied.
Weights that do not train in a step (frozen, or a probing phase's body) have no gradient: they add nothing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sweep.hparams import DEFAULTS
from sweep.strategies.base import Batch, TaskContext, tensors_under
from sweep.strategies.quadratic import Quadratic, WeightPenalty


def importance_stats(prefix: str, importance: dict[str, Tensor]) -> dict[str, float]:
    """``{prefix}_importance_mean`` and ``_trace``: the mean and the sum of an importance over every weight (the
    scale its strength multiplies, as EWC's Fisher's); NaN before there is one."""
    if not importance:
        return {f"{prefix}_importance_mean": math.nan, f"{prefix}_importance_trace": math.nan}
    trace = sum(float(a.sum(dtype=torch.float64)) for a in importance.values())
    count = sum(a.numel() for a in importance.values())
    return {f"{prefix}_importance_mean": trace / count, f"{prefix}_importance_trace": trace}


class ImportancePenalty(WeightPenalty):
    """What SI and MAS share: a per-weight importance Ω summed over the tasks, the anchor θ* (the weights after
    the latest task), the penalty strength · Σ Ω (θ − θ*)², and the state that holds them."""

    def __init__(self) -> None:
        self.omega: dict[str, Tensor] = {}  # Ω, summed over the tasks so far, per parameter name
        self.anchor: dict[str, Tensor] = {}  # θ*: the weights after the latest task
        self.tasks = 0

    @property
    def strength(self) -> float:
        """The penalty's strength: SI's c, MAS's λ."""
        raise NotImplementedError

    def consolidate(self, importance: dict[str, Tensor], model: nn.Module) -> None:
        """Add one task's importance (name -> tensor) to Ω and anchor the penalty at ``model``'s weights now."""
        for name, value in importance.items():
            self.omega[name] = self.omega[name] + value if name in self.omega else value
        self.anchor = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.tasks += 1
        self.reslope()

    def quadratic(self) -> Quadratic | None:
        """strength · Σ Ω (θ − θ*)²; None before any task (or with strength 0)."""
        if self.strength == 0 or not self.omega:
            return None
        return Quadratic(self.strength, self.anchor, self.omega)

    def state_dict(self) -> dict[str, Tensor | float | int]:
        state: dict[str, Tensor | float | int] = {"tasks": self.tasks}
        state.update({f"omega.{n}": t for n, t in self.omega.items()})
        state.update({f"anchor.{n}": t for n, t in self.anchor.items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        self.tasks = int(state.get("tasks", 0))
        self.omega = tensors_under(state, "omega.")
        self.anchor = tensors_under(state, "anchor.")
        self.reslope()


class SI(ImportancePenalty):
    name = "si"

    def __init__(self, si_c: float = DEFAULTS["si_c"], si_xi: float = DEFAULTS["si_xi"]) -> None:
        super().__init__()
        self.si_c = si_c
        self.si_xi = si_xi
        # the task in progress (empty on the last task: nothing follows to use its path)
        self.path: dict[str, Tensor] = {}  # ω
        self.start: dict[str, Tensor] = {}  # θ when the task began
        self.previous: dict[str, Tensor] = {}  # θ before the latest step

    def before_task(self, ctx: TaskContext) -> None:
        self.path, self.start, self.previous = {}, {}, {}
        if ctx.task_index == ctx.benchmark.num_tasks - 1:
            return
        for name, p in ctx.model.named_parameters():
            self.start[name] = p.detach().clone()
            self.previous[name] = p.detach().clone()
            self.path[name] = torch.zeros_like(p, memory_format=torch.preserve_format).detach()

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        if not self.path:
            return
        moved = [(name, p, p.grad) for name, p in ctx.model.named_parameters() if p.grad is not None]
        if not moved:
            return
        now = [p.detach() for _, p, _ in moved]
        before = [self.previous[name] for name, _, _ in moved]
        grads = [g for _, _, g in moved if g is not None]
        steps = torch._foreach_sub(now, before)  # Δθ of this step
        torch._foreach_addcmul_([self.path[name] for name, _, _ in moved], grads, steps, value=-1.0)  # ω −= g Δθ
        torch._foreach_copy_(before, now)

    def after_task(self, ctx: TaskContext) -> None:
        if not self.path:
            return  # the last task
        self.consolidate({name: self.path[name] / ((p.detach() - self.start[name]).square() + self.si_xi)
                          for name, p in ctx.model.named_parameters()}, ctx.model)
        self.path, self.start, self.previous = {}, {}, {}

    @property
    def strength(self) -> float:
        return self.si_c

    def stats(self) -> dict[str, float]:
        return importance_stats("si", self.omega)
