"""Evaluation on the device: accuracies of a split, of every task, and early stopping on them.

Data never leaves the device: batches are slices of whole-task tensors, correct predictions are
counted on the device, and one host sync reads every task's accuracy at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sweep.data.tasks import Benchmark, Split, to_float
from sweep.strategies.base import Compute

EVAL_BATCH = 4096  # evaluation has no graph to keep, so large batches cost only activations


def mask_logits(logits: Tensor, masks: Tensor | None, task_ids: Tensor | None = None, now: int | None = None
                ) -> Tensor:
    """``logits`` (B, classes) with the classes a sample is not scored over masked out: in task-incremental form
    each sample's own task's (``masks[task_ids]``); otherwise row ``now`` of ``masks`` (class-incremental with
    seen outputs: the classes of tasks 1..now+1; task-incremental without task ids: task ``now``'s). The one
    rule the training step, the strategies' ``ctx.logits`` and the evaluation share."""
    if masks is None:
        return logits
    # torch.where keeps the scored logits and fills the others, as masked_fill(~mask) would, in one call instead of
    # two; index_select, not masks[task_ids]: a row copy instead of advanced indexing (a step's per-call costs)
    if task_ids is not None:
        rows = torch.index_select(masks, 0, task_ids.to(masks.device))  # .to: a no-op in the trainer
        return torch.where(rows, logits, torch.finfo(logits.dtype).min)
    if now is not None:
        return torch.where(masks[now], logits, torch.finfo(logits.dtype).min)
    return logits


def masked_logits(model: nn.Module, x: Tensor, task_ids: Tensor | None, masks: Tensor | None,
                  now: int | None = None) -> Tensor:
    """Forward pass, masked by :func:`mask_logits` (``now``: the task being trained, under seen outputs)."""
    return mask_logits(model(x), masks, task_ids, now)  # (B, classes)


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, task_index: int, masks: Tensor | None, batch_size: int = EVAL_BATCH
) -> Tensor:
    """Accuracy of ``model`` on one split, as a 0-d tensor on the split's device (no host sync); with
    ``masks``, over the classes of row ``task_index``."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=split.y.device)
    for start in range(0, len(split), batch_size):
        x = to_float(split.x[start : start + batch_size])
        y = split.y[start : start + batch_size]
        logits = mask_logits(model(x), masks, now=task_index)
        correct += (logits.argmax(dim=1) == y).sum()
    model.train(was_training)
    return correct.double() / max(len(split), 1)


def evaluate_all(
    model: nn.Module, benchmark: Benchmark, masks: Tensor | None, *,
    models: Sequence[nn.Module] | None = None, seen: int | None = None, splits: Sequence[str] = ("val", "test"),
    compute: Compute | None = None, now: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(val, test) accuracies of every task, one host sync for all of them.

    ``models[i]``, when given, evaluates task i instead of ``model``; with ``seen``, only the first
    ``seen`` tasks are evaluated and the others read NaN; a split left out of ``splits`` reads NaN.
    ``masks`` are :meth:`Benchmark.scoring_masks`; in class-incremental form, task i is scored over row
    max(``now``, i): the classes seen by the task just trained, or by task i when it comes later.
    The passes are added to ``compute`` when given.
    """
    T = benchmark.num_tasks
    count = T if seen is None else seen
    jobs = [(split, t, getattr(task, split)) for split in splits for t, task in enumerate(benchmark.tasks[:count])]
    floor = now if now is not None and benchmark.scenario == "class" else -1
    accs = [evaluate(model if models is None else models[t], data, max(t, floor), masks) for _, t, data in jobs]
    if compute is not None:
        compute.eval_passes += len(jobs)
        compute.eval_samples += sum(len(data) for _, _, data in jobs)
    values = torch.stack(accs).cpu().numpy() if accs else np.zeros(0)
    out = {split: np.full(T, np.nan) for split in ("val", "test")}
    for (split, t, _), value in zip(jobs, values):
        out[split][t] = value
    return out["val"], out["test"]


class EarlyStop:
    """After each epoch: the task's validation accuracy; stop after ``patience`` epochs without a
    better one, and :meth:`restore` the best epoch's weights. ``evaluated()`` gives the module judged
    (the strategy's evaluation model); the weights kept and restored are ``model``'s."""

    def __init__(self, model: nn.Module, split: Split, task_index: int, masks: Tensor | None, patience: int,
                 evaluated: Callable[[], nn.Module] | None = None, compute: Compute | None = None) -> None:
        self.model, self.split, self.task_index, self.masks, self.patience = model, split, task_index, masks, patience
        self.evaluated, self.compute = evaluated, compute
        self.best, self.waited, self.last_was_best = -1.0, 0, True
        self.state: dict[str, Tensor] | None = None

    def __call__(self, epoch: int) -> bool:
        judged = self.model if self.evaluated is None else self.evaluated()
        accuracy = float(evaluate(judged, self.split, self.task_index, self.masks))
        if self.compute is not None:
            self.compute.eval_passes += 1
            self.compute.eval_samples += len(self.split)
        self.last_was_best = accuracy > self.best
        if self.last_was_best:
            self.best, self.waited = accuracy, 0
            self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return False
        self.waited += 1
        return self.waited >= self.patience

    def restore(self) -> None:
        if self.state is not None and not self.last_was_best:
            self.model.load_state_dict(self.state)
