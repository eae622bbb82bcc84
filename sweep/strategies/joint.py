"""joint: train on the union of the training splits of every task seen so far.

The ceiling for stability every study is compared with, not for plasticity: it spends the same epochs on
every task seen so far, so it can learn the newest task less well than naive. On task 1 it is naive.
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
        ids = [p.task_ids for p in parts if p.task_ids is not None]  # every task's or none: the scenario's
        task_ids = torch.cat(ids) if ids else None
        return TrainingData(split, task_ids)
