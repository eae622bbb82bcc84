"""l2sp: λ/2 · ||θ − θ*||², θ* = the weights after the previous task (L2 toward the starting point).

λ = 0 returns no penalty, so it reproduces naive bit for bit (the anchor is kept at any λ: the
state after a task never depends on λ).
"""

from __future__ import annotations

from torch import Tensor

from sweep.hparams import DEFAULTS
from sweep.strategies.base import TaskContext, tensors_under
from sweep.strategies.quadratic import Quadratic, WeightPenalty


class L2SP(WeightPenalty):
    name = "l2sp"

    def __init__(self, l2sp_lambda: float = DEFAULTS["l2sp_lambda"]) -> None:
        self.l2sp_lambda = l2sp_lambda
        self.anchor: dict[str, Tensor] = {}  # θ*, name -> tensor

    def after_task(self, ctx: TaskContext) -> None:
        self.anchor = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}

    def quadratic(self) -> Quadratic | None:
        """λ/2 · ||θ − θ*||²; None without an anchor (or with λ = 0)."""
        if self.l2sp_lambda == 0 or not self.anchor:
            return None
        return Quadratic(0.5 * self.l2sp_lambda, self.anchor)

    def state_dict(self) -> dict[str, Tensor | float | int]:
        return {f"anchor.{n}": t for n, t in self.anchor.items()}

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        self.anchor = tensors_under(state, "anchor.")
