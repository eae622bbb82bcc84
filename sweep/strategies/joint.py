"""joint: train on the union of the training splits of every task seen so far.

The ceiling for stability and plasticity every study is compared with. On task 1 it is naive.
"""

from __future__ import annotations

import torch

from sweep.data.tasks import Split
from sweep.strategies.base import Strategy, TaskContext, TrainingData


class Joint(Strategy):
    name = "joint"

    def training_data(self, ctx: TaskContext) -> TrainingData | None:
        if ctx.task_index == 0:
            return None
        parts = [ctx.task_training_data(t) for t in range(ctx.task_index + 1)]
        split = Split(torch.cat([p.split.x for p in parts]), torch.cat([p.split.y for p in parts]))
        task_ids = None if parts[0].task_ids is None else torch.cat([p.task_ids for p in parts])  # type: ignore[misc]
        return TrainingData(split, task_ids)
