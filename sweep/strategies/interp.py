"""Weight interpolation (WiSE-FT, Wortsman et al. 2022): after a task, move only part of the way to the fine-tune.

After each task from task 2 on, the weights become ``(1 - α) θ_before + α θ_after``: θ_before the
weights the task started from (after the previous task; the pretrained ones for a fine-tune),
θ_after the weights its training reached (with any other strategy of the composite: ``ewc+interp``
interpolates the EWC-trained weights). Its ``after_task`` runs before every other component's but the
adapters' merge (``adapter+interp`` interpolates toward the merged weights, whatever the order of the names),
so EWC's Fisher and anchors and distillation's teacher see the interpolated weights.

**The free front.** α needs no training to vary at the last task: one fine-tune, evaluated at the
``interp_grid`` values of α from 0 to 1, gives that many results (:meth:`Interp.variants`, evaluated
by the trainer). With more than two tasks the grid varies the last task's α only
(``interp_last_alpha``); every earlier task used ``interp_alpha``, so each grid point is exactly the
run with that ``interp_last_alpha``, which ``sweep train --config`` reproduces.

Floating-point buffers (batch-norm statistics) are interpolated like the weights; integer ones
(batch counts) are the fine-tune's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from sweep.hparams import DEFAULTS
from sweep.strategies.base import Strategy, TaskContext


def interpolate_states(before: dict[str, Tensor], after: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``(1 - alpha) * before + alpha * after`` for every floating tensor; others are ``after``'s. α = 1 is
    ``after`` exactly and α = 0 ``before`` exactly (no rounding of the end points)."""
    out = {}
    for name, value in after.items():
        if alpha == 1.0 or not torch.is_floating_point(value):
            out[name] = value.clone()
        elif alpha == 0.0:
            out[name] = before[name].clone()
        else:
            out[name] = torch.lerp(before[name], value, alpha)
    return out


def grid(points: int) -> list[float]:
    """``points`` values of α from 0 to 1, both ends included (none for fewer than 2)."""
    if points < 2:
        return []
    return [k / (points - 1) for k in range(points)]


class Interp(Strategy):
    name = "interp"
    after_task_order = -1  # after adapters merge (it interpolates the merged weights), before everything else

    def __init__(self, interp_alpha: float = DEFAULTS["interp_alpha"],
                 interp_last_alpha: float | None = DEFAULTS["interp_last_alpha"],
                 interp_grid: int = DEFAULTS["interp_grid"]) -> None:
        self.alpha = interp_alpha
        self.last_alpha = interp_last_alpha
        self.points = interp_grid
        self.before: dict[str, Tensor] | None = None  # the weights the current task started from
        self.trained: dict[str, Tensor] | None = None  # the last task's weights before interpolation

    def before_task(self, ctx: TaskContext) -> None:
        self.before = _state(ctx.model) if ctx.task_index >= 1 else None

    def alpha_at(self, task_index: int, num_tasks: int) -> float:
        last = task_index == num_tasks - 1
        return self.last_alpha if last and self.last_alpha is not None else self.alpha

    def after_task(self, ctx: TaskContext) -> None:
        if self.before is None:
            return
        trained = _state(ctx.model)
        if ctx.task_index == ctx.benchmark.num_tasks - 1:
            self.trained = trained  # the free grid interpolates from it
        ctx.model.load_state_dict(interpolate_states(self.before, trained,
                                                     self.alpha_at(ctx.task_index, ctx.benchmark.num_tasks)))

    def variants(self, ctx: TaskContext) -> Iterator[tuple[dict[str, Any], dict[str, Tensor]]]:
        """Every α of the grid at the last task: its config value and the interpolated weights, one at a time."""
        if self.before is None or self.trained is None:
            return
        for alpha in grid(self.points):
            yield {"interp_last_alpha": alpha}, interpolate_states(self.before, self.trained, alpha)
        self.before = self.trained = None  # the run is over: its copies are freed


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
