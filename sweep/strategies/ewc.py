"""ewc: elastic weight consolidation, penalty λ/2 · Σ_k F_k (θ − θ*_k)² (docs/design.md, Strategies).

Both modes keep the penalty as one quadratic per parameter element, A (θ − m)² + offset:

- separate: one (F_k, θ*_k) per past task. Σ_k F_k (θ − θ*_k)² is again a quadratic with
  precision A = Σ_k F_k, centre m = Σ_k F_k θ*_k / A and a constant offset, so the penalty
  costs the same after ten tasks as after one, and its value stays exact (no cancellation).
- online: F ← γF + F_new and θ* = the latest weights, i.e. A ← γA + F_new, m = θ, offset 0.

λ = 0 returns no penalty, so it reproduces naive bit for bit. It still computes the Fisher: the
state after a task never depends on λ (trials differing only in λ share task 1), and the scale is
reported. The Fisher draws from a generator of its own, so it never shifts the run's batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from sweep.hparams import DEFAULTS
from sweep.strategies.base import TaskContext, tensors_under
from sweep.strategies.fisher import task_fisher
from sweep.strategies.lora import effective_parameters
from sweep.strategies.quadratic import Quadratic, WeightPenalty


class EWC(WeightPenalty):
    name = "ewc"

    def __init__(
        self, ewc_lambda: float = DEFAULTS["ewc_lambda"], fisher: str = DEFAULTS["fisher"],
        fisher_samples: int | None = DEFAULTS["fisher_samples"], ewc_mode: str = DEFAULTS["ewc_mode"],
        ewc_gamma: float = DEFAULTS["ewc_gamma"],
    ) -> None:
        self.ewc_lambda = ewc_lambda
        self.fisher = fisher
        self.fisher_samples = fisher_samples
        self.ewc_mode = ewc_mode
        self.ewc_gamma = ewc_gamma
        self.precision: dict[str, Tensor] = {}  # A: Σ_k F_k (separate) or the online F, per parameter
        self.anchor: dict[str, Tensor] = {}  # m: the precision-weighted mean of the θ*_k
        self.offset = 0.0  # Σ_k F_k (θ*_k − m)²: the θ-independent part, so the penalty's value is exact
        self.tasks = 0  # tasks consolidated so far

    def after_task(self, ctx: TaskContext) -> None:
        if ctx.task_index == ctx.benchmark.num_tasks - 1:
            return  # no task follows: this Fisher would never be multiplied by λ (and stats() reports that one)
        fisher = task_fisher(ctx, self.fisher, self.fisher_samples)  # also at λ = 0: see the module docstring
        n = len(ctx.task.train)
        ctx.compute.fisher_samples += n if self.fisher_samples is None else min(n, self.fisher_samples)
        # θ*: the weights as the model computes them (an attached adapter's low-rank term included)
        self.consolidate(fisher, {name: p.detach() for name, p in effective_parameters(ctx.model)})

    def consolidate(self, fisher: dict[str, Tensor], theta: dict[str, Tensor]) -> None:
        """Add one task's Fisher and weights θ* (name -> tensor) to the penalty."""
        if not self.precision or self.ewc_mode == "online":
            decay = self.ewc_gamma if self.precision else 0.0
            self.precision = {n: decay * self.precision[n] + f if decay else f.clone() for n, f in fisher.items()}
            self.anchor = {n: theta[n].clone() for n in fisher}
            self.offset = 0.0
        else:
            # a(x − u)² + b(x − v)² = (a + b)(x − (au + bv)/(a + b))² + ab/(a + b) (u − v)²
            offset = 0.0
            for n, f in fisher.items():
                a, u, v = self.precision[n], self.anchor[n], theta[n]
                total = a + f
                safe = torch.where(total > 0, total, torch.ones_like(total))
                self.anchor[n] = torch.where(total > 0, (a * u + f * v) / safe, v)
                offset += float((a * f / safe * (u - v).square()).sum(dtype=torch.float64))
                self.precision[n] = total
            self.offset += offset
        self.tasks += 1
        self.reslope()

    def quadratic(self) -> Quadratic | None:
        """λ/2 · (Σ A (θ − m)² + offset) = λ/2 · Σ_k F_k (θ − θ*_k)²; None before any task (or with λ = 0)."""
        if self.ewc_lambda == 0 or not self.precision:
            return None
        return Quadratic(0.5 * self.ewc_lambda, self.anchor, self.precision, self.offset)

    def penalised(self, model: nn.Module) -> Iterator[tuple[str, Tensor]]:
        return effective_parameters(model)  # adapters: W + (α/r)·B A, differentiable in A, B

    def stats(self) -> dict[str, float]:
        # the scale λ multiplies: mean and trace of A (the sum over tasks in separate mode); NaN without one
        if not self.precision:
            return {"fisher_mean": math.nan, "fisher_trace": math.nan}
        trace = sum(float(a.sum(dtype=torch.float64)) for a in self.precision.values())
        count = sum(a.numel() for a in self.precision.values())
        return {"fisher_mean": trace / count, "fisher_trace": trace}

    def state_dict(self) -> dict[str, Tensor | float | int]:
        state: dict[str, Tensor | float | int] = {"offset": self.offset, "tasks": self.tasks}
        state.update({f"precision.{n}": a for n, a in self.precision.items()})
        state.update({f"anchor.{n}": m for n, m in self.anchor.items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        self.offset = float(state.get("offset", 0.0))
        self.tasks = int(state.get("tasks", 0))
        self.precision = tensors_under(state, "precision.")
        self.anchor = tensors_under(state, "anchor.")
        self.reslope()
