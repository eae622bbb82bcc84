"""l2sp: λ/2 · ||θ − θ*||², θ* = the weights after the previous task (L2 toward the starting point).

λ = 0 returns no penalty, so it reproduces naive bit for bit (the anchor is kept at any λ: the
state after a task never depends on λ).
"""

from __future__ import annotations

from torch import Tensor, nn

from sweep.hparams import DEFAULTS
from sweep.strategies.base import NO_FEATURES, Batch, Features, Strategy, TaskContext, tensors_under
from sweep.strategies.ewc import add_quadratic_grad, by_grad, quadratic_penalty


class L2SP(Strategy):
    name = "l2sp"

    def __init__(self, l2sp_lambda: float = DEFAULTS["l2sp_lambda"]) -> None:
        self.l2sp_lambda = l2sp_lambda
        self.anchor: dict[str, Tensor] = {}  # θ*, name -> tensor

    def after_task(self, ctx: TaskContext) -> None:
        self.anchor = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}

    def penalty(
        self, ctx: TaskContext, batch: Batch, raw_logits: Tensor, features: Features = NO_FEATURES
    ) -> Tensor | None:
        return None if by_grad(ctx) else self.model_penalty(ctx.model)

    def penalty_grad(self, ctx: TaskContext) -> None:
        if self.l2sp_lambda == 0 or not self.anchor or not by_grad(ctx):
            return
        names, params = zip(*ctx.model.named_parameters())
        add_quadratic_grad(params, [self.anchor[n] for n in names], float(self.l2sp_lambda))  # of λ/2 (θ − θ*)²

    def model_penalty(self, model: nn.Module) -> Tensor | None:
        """λ/2 · ||θ − θ*||² at ``model``'s weights; None without an anchor (or with λ = 0)."""
        if self.l2sp_lambda == 0 or not self.anchor:
            return None
        names, params = zip(*model.named_parameters())
        return 0.5 * self.l2sp_lambda * quadratic_penalty(params, [self.anchor[n] for n in names])

    def state_dict(self) -> dict[str, Tensor | float | int]:
        return {f"anchor.{n}": t for n, t in self.anchor.items()}

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        self.anchor = tensors_under(state, "anchor.")
