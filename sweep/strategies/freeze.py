"""freeze: the first k parametrised layers (``model.layers()``) stop learning from task 2 on.

The trainer does the freezing: it sets ``requires_grad`` and builds each task's optimizer
without the frozen parameters, so they get no gradient, no optimizer state and no weight decay.
k = 0 is naive.
"""

from __future__ import annotations

from sweep.config import TrainConfig
from sweep.strategies.base import Strategy


class Freeze(Strategy):
    name = "freeze"
    params = ("frozen_layers",)
    prefix_free = ("frozen_layers",)  # nothing is frozen on task 1

    def __init__(self, frozen_layers: int = 0) -> None:
        self.layers = frozen_layers  # k; bounded by the model's layer count in build_strategy

    @classmethod
    def from_config(cls, config: TrainConfig) -> Freeze:
        return cls(config.frozen_layers)

    def frozen_layers(self, task_index: int) -> int:
        return self.layers if task_index >= 1 else 0  # task 1 trains every layer
