"""freeze: the first k parametrised layers (``model.layers()``) stop learning from task 2 on.

The trainer does the freezing: it sets ``requires_grad`` and builds each task's optimizer
without the frozen parameters, so they get no gradient, no optimizer state and no weight decay.
k = 0 is naive.
"""

from __future__ import annotations

from sweep.hparams import DEFAULTS
from sweep.strategies.base import Strategy


class Freeze(Strategy):
    name = "freeze"

    def __init__(self, frozen_layers: int = DEFAULTS["frozen_layers"]) -> None:
        self.layers = frozen_layers  # k; bounded by the model's layer count in build_strategy

    def frozen_layers(self, task_index: int) -> int:
        return self.layers if task_index >= 1 else 0  # task 1 trains every layer
