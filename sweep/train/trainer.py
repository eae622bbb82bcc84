"""The sequential-task trainer: one model, task after task, the full accuracy matrix.

The trainer owns the optimizer and the step; a strategy only returns values from its hooks.
Data never leaves the device: batches are index slices of whole-task tensors, evaluation
counts correct predictions on the device and synchronises once per evaluation sweep.
It knows nothing of Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.config import TrainConfig
from sweep.data.tasks import Benchmark, Split, to_float
from sweep.metrics import all_metrics
from sweep.models import LayeredModel, build_model, freeze_layers, layer_parameters, load_weights
from sweep.strategies.base import Batch, Strategy, TaskContext, TrainingData
from sweep.strategies.registry import build_strategy
from sweep.train.optim import make_optimizer

EVAL_BATCH = 4096  # evaluation has no graph to keep, so large batches cost only activations
DIVERGENCE_CHECK_EVERY = 50  # steps between host syncs for the NaN check (free on CPU, a sync on GPU)


class PrefixStore(Protocol):
    """Where the state after task 1 is kept between runs that agree on it (the sweep's prefix cache).

    The trainer is handed one; it never builds or imports one.
    """

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


@dataclass
class TaskReport:
    """What a caller (the Ray trainable, a progress bar) sees after each task."""

    task_index: int  # 0-based index of the task just trained
    num_tasks: int
    val: np.ndarray  # (T, T) accuracy matrix so far; rows after task_index are NaN
    test: np.ndarray
    initial_val: np.ndarray  # (T,) untrained model
    initial_test: np.ndarray
    seconds: float  # training + evaluation time of this task


@dataclass
class SequenceResult:
    val: np.ndarray  # (T, T): R[t, i] on the validation split; NaN rows after a divergence
    test: np.ndarray  # (T, T) on the test split
    initial_val: np.ndarray  # (T,) accuracy of the untrained model, for FWT
    initial_test: np.ndarray
    status: str = "finished"  # "finished" or "diverged"
    reason: str = ""
    stats: dict[str, float] = field(default_factory=dict)  # e.g. fisher_mean, fisher_trace
    duration_s: float = 0.0

    def metrics(self, split: str = "val") -> dict[str, float]:
        """Every metric of the finished matrix; raises if the run diverged (no full matrix)."""
        if self.status != "finished":
            raise ValueError(f"no metrics for a {self.status} run: {self.reason}")
        if split == "val":
            return all_metrics(self.val, self.initial_val)
        return all_metrics(self.test, self.initial_test)


def masked_logits(model: nn.Module, x: Tensor, task_ids: Tensor | None, masks: Tensor | None) -> Tensor:
    """Forward pass; in task-incremental form, logits outside each sample's task are masked out."""
    logits = model(x)  # (B, classes)
    if masks is None or task_ids is None:
        return logits
    return logits.masked_fill(~masks[task_ids], torch.finfo(logits.dtype).min)


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, task_index: int, masks: Tensor | None, batch_size: int = EVAL_BATCH
) -> Tensor:
    """Accuracy of ``model`` on one split, as a 0-d tensor on the split's device (no host sync)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=split.y.device)
    for start in range(0, len(split), batch_size):
        x = to_float(split.x[start : start + batch_size])
        y = split.y[start : start + batch_size]
        logits = model(x)
        if masks is not None:
            logits = logits.masked_fill(~masks[task_index], torch.finfo(logits.dtype).min)
        correct += (logits.argmax(dim=1) == y).sum()
    model.train(was_training)
    return correct.double() / max(len(split), 1)


def evaluate_all(model: nn.Module, benchmark: Benchmark, masks: Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """(val, test) accuracies of every task, one host sync for all of them."""
    accs = [evaluate(model, getattr(task, split), t, masks) for split in ("val", "test") for t, task in
            enumerate(benchmark.tasks)]
    values = torch.stack(accs).cpu().numpy()
    T = benchmark.num_tasks
    return values[:T], values[T:]


def _set_frozen(model: LayeredModel, k: int) -> list[nn.Parameter]:
    """Freeze the first k parametrised layers (their BatchNorms held in eval mode); return the parameters
    left to train."""
    return freeze_layers(model, k)


def _layer_groups(model: LayeredModel, trainable: list[nn.Parameter], lr: float, decay: float) -> list[dict]:
    """Discriminative learning rates: layer k of L at lr·decay^(L−1−k); frozen parameters left out."""
    keep = {id(p) for p in trainable}
    layers = layer_parameters(model)
    groups = [{"params": [p for p in params if id(p) in keep], "lr": lr * decay ** (len(layers) - 1 - k)}
              for k, params in enumerate(layers)]
    return [group for group in groups if group["params"]]


class _EarlyStop:
    """After each epoch: the task's validation accuracy; stop after ``patience`` epochs without a
    better one, and :meth:`restore` the best epoch's weights."""

    def __init__(self, model: nn.Module, split: Split, task_index: int, masks: Tensor | None, patience: int) -> None:
        self.model, self.split, self.task_index, self.masks, self.patience = model, split, task_index, masks, patience
        self.best, self.waited, self.last_was_best = -1.0, 0, True
        self.state: dict[str, Tensor] | None = None

    def __call__(self, epoch: int) -> bool:
        accuracy = float(evaluate(self.model, self.split, self.task_index, self.masks))
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


def train_sequence(
    benchmark: Benchmark,
    model: LayeredModel,
    strategy: Strategy,
    config: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    callback: Callable[[TaskReport], None] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> SequenceResult:
    """Train ``model`` on every task of ``benchmark`` in order with ``strategy``.

    Args:
        benchmark: the tasks; moved to ``device`` once (a no-op when they are already there).
        model: a model listing its layers; trained in place.
        strategy: the mitigation; its hooks are called around every task and step.
        config: optimisation settings (optimizer, lr, epochs, batch_size, weight_decay, seed).
        device: where the tensors live and the model runs.
        callback: called after each task with the accuracy matrix so far.
        progress: ``progress(task_index, step, steps_in_task)`` every few steps, for a progress bar.

    Returns:
        The validation and test accuracy matrices and the untrained model's accuracies; status
        "diverged" (and NaN rows from that task on) if the loss stopped being finite.
    """
    steps = iter_sequence(benchmark, model, strategy, config, device=device, progress=progress)
    while True:
        try:
            report = next(steps)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(report)


def iter_sequence(
    benchmark: Benchmark,
    model: LayeredModel,
    strategy: Strategy,
    config: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int, int], None] | None = None,
    prefix: PrefixStore | None = None,
) -> Generator[TaskReport, None, SequenceResult]:
    """:func:`train_sequence` as a generator: yields after each task, returns the result.

    Lets a caller train several seeds in lockstep and report their mean after every task.
    With ``prefix``, the state after task 1 is loaded from that cache entry when present
    (and saved to it when not): the rest of the run is identical either way.
    """
    started = time.perf_counter()
    device = torch.device(device)
    benchmark = benchmark.to(device)
    model.to(device).train()
    masks = benchmark.task_masks(device)
    generator = torch.Generator().manual_seed(config.seed)
    T = benchmark.num_tasks
    val = np.full((T, T), np.nan)
    test = np.full((T, T), np.nan)

    def logits_fn(x: Tensor, task_ids: Tensor | None) -> Tensor:
        return masked_logits(model, x, task_ids, masks)

    first = 0
    cached = prefix.load() if prefix is not None else None
    if cached is None:
        initial_val, initial_test = evaluate_all(model, benchmark, masks)
    else:
        model.load_state_dict(cached["model"])
        # the entry is read onto the CPU; the strategy's tensors (Fisher, anchors, indices) belong on the device
        strategy.load_state_dict({k: v.to(device) if isinstance(v, Tensor) else v
                                  for k, v in cached["strategy"].items()})
        generator.set_state(cached["generator"])  # a CPU generator, as the run's always is
        initial_val, initial_test = cached["initial_val"].numpy(), cached["initial_test"].numpy()
        val[0], test[0] = cached["val"].numpy(), cached["test"].numpy()
        first = 1
        yield TaskReport(0, T, val.copy(), test.copy(), initial_val, initial_test, 0.0)

    for t in range(first, T):
        task_started = time.perf_counter()
        ctx = TaskContext(t, benchmark, model, device, config.batch_size, generator, logits_fn)
        strategy.before_task(ctx)
        if t == 0 and config.pretrained is not None:
            load_weights(model, config.pretrained)  # the source task: trained elsewhere, evaluated here
            diverged = ""
        else:
            data = strategy.training_data(ctx) or ctx.task_training_data()
            lr = config.lr if t == 0 or config.finetune_lr is None else config.finetune_lr
            params = _set_frozen(model, strategy.frozen_layers(t))
            if t > 0 and config.lr_decay != 1.0:
                params = _layer_groups(model, params, lr, config.lr_decay)
            # a fresh optimizer per task: frozen layers then hold no optimizer state and get no weight decay
            optimizer = make_optimizer(config.optimizer, params, lr, config.weight_decay)
            ce_weight = strategy.ce_weight(t)
            stop = None
            if t > 0 and config.early_stop_patience > 0:
                stop = _EarlyStop(model, benchmark.tasks[t].val, t, masks, config.early_stop_patience)
            diverged = _train_task(model, optimizer, strategy, ctx, data, config, masks, ce_weight, progress, stop)
            if stop is not None and not diverged:
                stop.restore()
        if diverged:
            _set_frozen(model, 0)
            return SequenceResult(
                val, test, initial_val, initial_test, status="diverged",
                reason=f"loss became {diverged} on task {t + 1} (lr={lr:g})",
                stats=strategy.stats(), duration_s=time.perf_counter() - started,
            )
        strategy.after_task(ctx)
        val[t], test[t] = evaluate_all(model, benchmark, masks)
        if t == 0 and prefix is not None:
            prefix.save({
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "strategy": {k: v.detach().cpu() if isinstance(v, Tensor) else v
                             for k, v in strategy.state_dict().items()},
                "generator": generator.get_state(),
                "initial_val": torch.from_numpy(initial_val), "initial_test": torch.from_numpy(initial_test),
                "val": torch.from_numpy(val[0].copy()), "test": torch.from_numpy(test[0].copy()),
            })
        yield TaskReport(t, T, val.copy(), test.copy(), initial_val, initial_test, time.perf_counter() - task_started)
    _set_frozen(model, 0)
    return SequenceResult(val, test, initial_val, initial_test, stats=strategy.stats(),
                          duration_s=time.perf_counter() - started)


def _train_task(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    strategy: Strategy,
    ctx: TaskContext,
    data: TrainingData,
    config: TrainConfig,
    masks: Tensor | None,
    ce_weight: float,
    progress: Callable[[int, int, int], None] | None,
    epoch_end: Callable[[int], bool] | None = None,
) -> str:
    """Train one task; return "" or, if the loss stopped being finite, "nan"/"inf".

    ``epoch_end(epoch)`` (early stopping) is called after each epoch; True ends the task there.
    """
    n = len(data.split)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * config.epochs
    finite = torch.ones((), dtype=torch.bool, device=ctx.device)
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=ctx.generator).to(ctx.device, non_blocking=True)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            batch = Batch(
                to_float(data.split.x[idx]), data.split.y[idx], None if data.task_ids is None else data.task_ids[idx]
            )
            batch = strategy.adjust_batch(ctx, batch)
            raw = model(batch.x)  # (B, classes)
            logits = raw if masks is None or batch.task_ids is None else raw.masked_fill(
                ~masks[batch.task_ids], torch.finfo(raw.dtype).min
            )
            loss = F.cross_entropy(logits, batch.y)
            if ce_weight != 1.0:
                loss = ce_weight * loss
            penalty = strategy.penalty(ctx, batch, raw)
            if penalty is not None:
                loss = loss + penalty
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            finite &= torch.isfinite(loss.detach())
            step += 1
            if step % DIVERGENCE_CHECK_EVERY == 0 or step == total:
                if not bool(finite):
                    return "nan" if torch.isnan(loss.detach()) else "inf"
                if progress is not None:
                    progress(ctx.task_index, step, total)
        if epoch_end is not None:
            if not bool(finite):
                return "nan" if torch.isnan(loss.detach()) else "inf"
            if epoch_end(epoch):
                break
    # a finite last loss can still be followed by a step that leaves inf/NaN weights
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return "nan"
    return ""


def build_run(config: TrainConfig, benchmark: Benchmark) -> tuple[LayeredModel, Strategy]:
    """A seeded model and the strategy for ``config`` on ``benchmark``."""
    torch.manual_seed(config.seed)  # the model's initial weights depend on the seed only
    model = build_model(config.model, benchmark.input_shape, benchmark.num_classes, config.hidden)
    if config.init_weights is not None:
        load_weights(model, config.init_weights, strict=False, what="init_weights")
    return model, build_strategy(config, len(model.layers()))


def load_benchmark(config: TrainConfig) -> Benchmark:
    from sweep.data.benchmarks import build_benchmark

    return build_benchmark(
        config.benchmark, config.scenario, config.num_tasks, config.class_order, config.data_root, config.val_fraction
    )


def run_config(
    config: TrainConfig,
    benchmark: Benchmark | None = None,
    *,
    device: torch.device | str = "cpu",
    callback: Callable[[TaskReport], None] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> SequenceResult:
    """Build the benchmark (unless given), a seeded model and the strategy, and train."""
    benchmark = load_benchmark(config) if benchmark is None else benchmark
    model, strategy = build_run(config, benchmark)
    return train_sequence(benchmark, model, strategy, config, device=device, callback=callback, progress=progress)
