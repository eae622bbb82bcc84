"""l2sp: λ/2 · ||θ − θ*||², θ* = the weights after the previous task (L2 toward the starting point).

λ = 0 keeps no anchor and returns no penalty, so it reproduces naive bit for bit.
"""

from __future__ import annotations

from torch import Tensor

from sweep.config import TrainConfig
from sweep.strategies.base import Batch, Strategy, TaskContext


class L2SP(Strategy):
    name = "l2sp"
    params = ("l2sp_lambda",)
    prefix_free = ("l2sp_lambda",)  # scales the penalty only, which starts on task 2

    def __init__(self, l2sp_lambda: float = 1.0) -> None:
        self.l2sp_lambda = l2sp_lambda
        self.anchor: dict[str, Tensor] = {}  # θ*, name -> tensor

    @classmethod
    def from_config(cls, config: TrainConfig) -> L2SP:
        return cls(config.l2sp_lambda)

    def after_task(self, ctx: TaskContext) -> None:
        if self.l2sp_lambda > 0:
            self.anchor = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}

    def penalty(self, ctx: TaskContext, batch: Batch, raw_logits: Tensor) -> Tensor | None:
        if self.l2sp_lambda == 0 or not self.anchor:
            return None
        distance = sum((p - self.anchor[n]).square().sum() for n, p in ctx.model.named_parameters())
        return 0.5 * self.l2sp_lambda * distance

    def state_dict(self) -> dict[str, Tensor | float | int]:
        return {f"anchor.{n}": t for n, t in self.anchor.items()}

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        self.anchor = {k.removeprefix("anchor."): v for k, v in state.items() if k.startswith("anchor.")}
