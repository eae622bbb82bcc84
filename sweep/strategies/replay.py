"""replay: a class-balanced buffer of M samples from past tasks, mixed into every batch.

The buffer is two index tensors, (task index, sample index) into the benchmark's training
splits, gathered on the device when a batch is built. It never holds a copy of a sample, so no
training sample can end up in a checkpoint or a cache, and M costs 16 bytes per slot.

- Filled after each task and rebalanced across every class seen so far: each (task, class) group
  gets an equal share of M (max-min fair: a group with fewer samples keeps all of them and the
  rest is shared out); an old group shrinks by keeping a prefix of its randomly ordered indices,
  a new group is a random subset drawn with the run's generator. Groups are (task, class) pairs,
  which in domain-incremental form balances over tasks too.
- Mixing follows the common convention: a batch of B new samples gets round(B·r/(1 − r))
  replayed ones on top (r = ``replay_ratio``; r = 0.5 with B = 64 gives 64 + 64), drawn
  uniformly with replacement from the buffer. Their task ids travel in ``Batch.task_ids`` in
  task-incremental form, so the trainer masks them with their own task's classes.

The buffer's samples are chosen with a generator of their own, seeded from the run's seed and
the task, so filling it never shifts the run's batches and does not depend on r (trials that
differ only in r share the state after task 1). M = 0 keeps no buffer and draws nothing, and
r = 0 mixes nothing in: both are naive, bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sweep.data.tasks import to_float
from sweep.hparams import DEFAULTS
from sweep.strategies.base import Batch, Strategy, TaskContext


class Replay(Strategy):
    name = "replay"

    def __init__(self, replay_size: int = DEFAULTS["replay_size"],
                 replay_ratio: float = DEFAULTS["replay_ratio"]) -> None:
        self.replay_size = replay_size
        self.replay_ratio = replay_ratio
        self.task_index = torch.empty(0, dtype=torch.long)  # (M,) task of each buffered sample
        self.sample_index = torch.empty(0, dtype=torch.long)  # (M,) index into that task's train split
        self._tasks: list[int] = []  # distinct buffered tasks, kept on the host (no sync per batch)

    def after_task(self, ctx: TaskContext) -> None:
        if self.replay_size == 0:
            return
        seed = (ctx.generator.initial_seed() * 1_000_003 + 104_729 + ctx.task_index) % 2**63  # see the docstring
        generator = torch.Generator().manual_seed(seed)
        groups: dict[tuple[int, int], Tensor] = {}  # (task, class) -> sample indices, in random order
        for t in self._tasks:
            kept = self.sample_index[self.task_index == t].to(ctx.device)
            labels = ctx.benchmark.tasks[t].train.y[kept]
            for c in labels.unique().tolist():
                groups[(t, c)] = kept[labels == c]
        y = ctx.task.train.y
        for c in y.unique().tolist():
            members = (y == c).nonzero().flatten()
            groups[(ctx.task_index, c)] = members[torch.randperm(len(members), generator=generator).to(y.device)]
        keys = sorted(groups)
        quotas = balanced_quotas([len(groups[k]) for k in keys], self.replay_size)
        self.task_index = torch.cat([torch.full((q,), k[0], dtype=torch.long) for k, q in zip(keys, quotas)])
        self.task_index = self.task_index.to(ctx.device)
        self.sample_index = torch.cat([groups[k][:q] for k, q in zip(keys, quotas)])
        self._tasks = sorted({k[0] for k, q in zip(keys, quotas) if q > 0})

    def adjust_batch(self, ctx: TaskContext, batch: Batch) -> Batch:
        size = len(self.sample_index)
        extra = int(len(batch.y) * self.replay_ratio / (1.0 - self.replay_ratio) + 0.5)
        if size == 0 or extra == 0:
            return batch
        pick = torch.randint(size, (extra,), generator=ctx.generator).to(ctx.device)
        tasks, samples = torch.index_select(self.task_index, 0, pick), torch.index_select(self.sample_index, 0, pick)
        x = y = None
        # gather from every buffered task and keep each row's own: no host sync, no boolean indexing
        for t in self._tasks:
            split = ctx.benchmark.tasks[t].train
            rows = samples.clamp(max=len(split) - 1)
            xt, yt = torch.index_select(split.x, 0, rows), torch.index_select(split.y, 0, rows)  # row copies: cheap
            if x is None or y is None:
                x, y = xt, yt
            else:
                here = tasks == t
                x = torch.where(here.view(-1, *[1] * (xt.dim() - 1)), xt, x)
                y = torch.where(here, yt, y)
        assert x is not None and y is not None
        task_ids = None if batch.task_ids is None else torch.cat([batch.task_ids, tasks])
        return Batch(torch.cat([batch.x, to_float(x)]), torch.cat([batch.y, y]), task_ids)

    def state_dict(self) -> dict[str, Tensor | float | int]:
        return {"task_index": self.task_index, "sample_index": self.sample_index}  # indices, never samples

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        for key in ("task_index", "sample_index"):
            value = state.get(key)
            setattr(self, key, value if isinstance(value, Tensor) else torch.empty(0, dtype=torch.long))
        self._tasks = sorted(set(self.task_index.tolist()))


def balanced_quotas(available: list[int], total: int) -> list[int]:
    """Max-min fair shares of ``total`` slots over groups holding ``available`` samples each."""
    quotas = [0] * len(available)
    remaining = total
    order = sorted(range(len(available)), key=lambda i: available[i])  # stable: ties keep group order
    for rank, i in enumerate(order):
        quotas[i] = min(available[i], remaining // (len(order) - rank))
        remaining -= quotas[i]
    return quotas
