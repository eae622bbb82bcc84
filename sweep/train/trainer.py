"""The sequential-task trainer: one model, task after task, the full accuracy matrix.

The trainer owns the optimizer and the step; a strategy only returns values from its hooks
(sweep.strategies.base lists them), and the trainer asks the per-task ones once, before the first step.
Data never leaves the device: batches are index slices of whole-task tensors, evaluation
counts correct predictions on the device and synchronises once per evaluation sweep.
It knows nothing of Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.config import TrainConfig
from sweep.data.tasks import Benchmark, Split, to_float
from sweep.errors import ConfigError
from sweep.metrics import all_metrics
from sweep.models import LayeredModel, build_model, freeze_layers, layer_parameters, load_weights, named_layers
from sweep.strategies.base import NO_FEATURES, Batch, Features, Strategy, TaskContext
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
class EpochReport:
    """What a caller that asked for them (a scheduler stopping dominated trials) sees after each epoch."""

    task_index: int  # 0-based index of the task being trained
    epoch: int  # 0-based, counted over the task's phases
    num_tasks: int
    val: np.ndarray  # (T, T): rows before task_index final; row task_index the current model on tasks <= it
    test: np.ndarray
    initial_val: np.ndarray  # (T,) untrained model
    initial_test: np.ndarray
    seconds: float  # since the task started


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


def evaluate_all(
    model: nn.Module, benchmark: Benchmark, masks: Tensor | None, *,
    models: Sequence[nn.Module] | None = None, seen: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(val, test) accuracies of every task, one host sync for all of them.

    ``models[i]``, when given, evaluates task i instead of ``model``; with ``seen``, only the first
    ``seen`` tasks are evaluated and the others read NaN.
    """
    T = benchmark.num_tasks
    count = T if seen is None else seen
    accs = [evaluate(model if models is None else models[t], getattr(task, split), t, masks)
            for split in ("val", "test") for t, task in enumerate(benchmark.tasks[:count])]
    values = torch.stack(accs).cpu().numpy()
    if count == T:
        return values[:T], values[T:]
    val, test = np.full(T, np.nan), np.full(T, np.nan)
    val[:count], test[:count] = values[:count], values[count:]
    return val, test


def _set_frozen(model: LayeredModel, k: int) -> list[nn.Parameter]:
    """Freeze the first k parametrised layers (their BatchNorms held in eval mode); return the parameters
    left to train."""
    return freeze_layers(model, k)


def _layer_groups(model: LayeredModel, trainable: list[nn.Parameter], lr: float, decay: float) -> list[dict]:
    """Discriminative learning rates: layer k of L at lr·decay^(L−1−k); frozen parameters left out, and
    trainable ones outside the model's layers (a strategy's adapters) at lr."""
    keep = {id(p) for p in trainable}
    layers = layer_parameters(model)
    groups = [{"params": [p for p in params if id(p) in keep], "lr": lr * decay ** (len(layers) - 1 - k)}
              for k, params in enumerate(layers)]
    placed = {id(p) for params in layers for p in params}
    groups.append({"params": [p for p in trainable if id(p) not in placed], "lr": lr})
    return [group for group in groups if group["params"]]


class _EarlyStop:
    """After each epoch: the task's validation accuracy; stop after ``patience`` epochs without a
    better one, and :meth:`restore` the best epoch's weights. ``evaluated()`` gives the module judged
    (the strategy's evaluation model); the weights kept and restored are ``model``'s."""

    def __init__(self, model: nn.Module, split: Split, task_index: int, masks: Tensor | None, patience: int,
                 evaluated: Callable[[], nn.Module] | None = None) -> None:
        self.model, self.split, self.task_index, self.masks, self.patience = model, split, task_index, masks, patience
        self.evaluated = evaluated
        self.best, self.waited, self.last_was_best = -1.0, 0, True
        self.state: dict[str, Tensor] | None = None

    def __call__(self, epoch: int) -> bool:
        judged = self.model if self.evaluated is None else self.evaluated()
        accuracy = float(evaluate(judged, self.split, self.task_index, self.masks))
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
    epoch_reports: bool = False,
) -> Generator[TaskReport | EpochReport, None, SequenceResult]:
    """:func:`train_sequence` as a generator: yields after each task, returns the result.

    Lets a caller train several seeds in lockstep and report their mean after every task.
    With ``prefix``, the state after task 1 is loaded from that cache entry when present
    (and saved to it when not): the rest of the run is identical either way. With
    ``epoch_reports``, it also yields an :class:`EpochReport` after each epoch of a task it trains
    (a task restored from the cache, or loaded from ``pretrained``, yields its task report only);
    closing the generator there stops the run.
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

    def epoch_report(ctx: TaskContext, task_started: float, epoch: int) -> EpochReport:
        t = ctx.task_index
        models = [strategy.eval_model(ctx, i) for i in range(t + 1)]
        val_now, test_now = val.copy(), test.copy()
        val_now[t], test_now[t] = evaluate_all(model, benchmark, masks, models=models, seen=t + 1)
        return EpochReport(t, epoch, T, val_now, test_now, initial_val, initial_test,
                           time.perf_counter() - task_started)

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
            lr = config.lr if t == 0 or config.finetune_lr is None else config.finetune_lr
            report = partial(epoch_report, ctx, task_started) if epoch_reports else None
            diverged = yield from _train_task(model, strategy, ctx, config, masks, lr, progress, report)
        if diverged:
            _set_frozen(model, 0)
            return SequenceResult(
                val, test, initial_val, initial_test, status="diverged",
                reason=f"loss became {diverged} on task {t + 1} (lr={lr:g})",
                stats=strategy.stats(), duration_s=time.perf_counter() - started,
            )
        strategy.after_task(ctx)
        models = [strategy.eval_model(ctx, i) for i in range(T)]
        val[t], test[t] = evaluate_all(model, benchmark, masks, models=models)
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
    model: LayeredModel,
    strategy: Strategy,
    ctx: TaskContext,
    config: TrainConfig,
    masks: Tensor | None,
    lr: float,
    progress: Callable[[int, int, int], None] | None,
    epoch_report: Callable[[int], EpochReport] | None,
) -> Generator[EpochReport, None, str]:
    """Train one task, phase after phase; return "" or, if the loss stopped being finite, "nan"/"inf".

    Yields ``epoch_report(epoch)`` after each epoch when given. Every hook the strategy answers
    once per task is asked here, before the first step; the step loop asks only the per-step ones.
    """
    t = ctx.task_index
    data = strategy.training_data(ctx) or ctx.task_training_data()
    params = _task_parameters(model, strategy, ctx)
    plan = [(phase, config.epochs if phase.epochs is None else phase.epochs) for phase in strategy.phases(t)]
    ce_weight = strategy.ce_weight(t)
    stop = None
    if t > 0 and config.early_stop_patience > 0:
        stop = _EarlyStop(model, ctx.task.val, t, masks, config.early_stop_patience,
                          evaluated=partial(strategy.eval_model, ctx, t))
    auxiliary = strategy.auxiliary(ctx)
    aux_optimizer = None if auxiliary is None else make_optimizer(
        auxiliary.optimizer, list(auxiliary.model.parameters()), auxiliary.lr, auxiliary.weight_decay)
    layers = strategy.feature_layers(t)
    tap = _FeatureTap(model, layers) if layers else None

    n = len(data.split)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * sum(epochs for _, epochs in plan)
    finite = torch.ones((), dtype=torch.bool, device=ctx.device)
    step = epoch = 0
    stopping = False
    try:
        for index, (phase, epochs) in enumerate(plan):
            trainable = params if phase.trainable is None else _phase_parameters(params, phase.trainable(model))
            # a fresh optimizer per task (and phase): frozen parameters hold no optimizer state, get no weight decay
            optimizer = _optimizer(model, trainable, lr, config, t)
            base_lrs = [group["lr"] for group in optimizer.param_groups]
            factor = 1.0  # the lr factor the optimizer's groups hold now
            watch = stop if index == len(plan) - 1 else None  # early stopping judges the phase the task ends with
            for _ in range(epochs):
                order = torch.randperm(n, generator=ctx.generator).to(ctx.device, non_blocking=True)
                for start in range(0, n, config.batch_size):
                    idx = order[start : start + config.batch_size]
                    batch = Batch(to_float(data.split.x[idx]), data.split.y[idx],
                                  None if data.task_ids is None else data.task_ids[idx])
                    batch = strategy.adjust_batch(ctx, batch)
                    wanted = strategy.lr_factor(t, step, total)
                    if wanted != factor:
                        for group, base in zip(optimizer.param_groups, base_lrs):
                            group["lr"] = base * wanted
                        factor = wanted
                    raw = model(batch.x)  # (B, classes)
                    logits = raw if masks is None or batch.task_ids is None else raw.masked_fill(
                        ~masks[batch.task_ids], torch.finfo(raw.dtype).min
                    )
                    loss = F.cross_entropy(logits, batch.y)
                    if ce_weight != 1.0:
                        loss = ce_weight * loss
                    penalty = strategy.penalty(ctx, batch, raw, NO_FEATURES if tap is None else tap.take())
                    if penalty is not None:
                        loss = loss + penalty
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    strategy.after_step(ctx, batch)
                    if auxiliary is not None and aux_optimizer is not None:
                        aux_loss = auxiliary.loss(ctx, batch)
                        aux_optimizer.zero_grad(set_to_none=True)
                        aux_loss.backward()
                        aux_optimizer.step()
                        finite &= torch.isfinite(aux_loss.detach())
                    finite &= torch.isfinite(loss.detach())
                    step += 1
                    if step % DIVERGENCE_CHECK_EVERY == 0 or step == total:
                        if not bool(finite):
                            return "nan" if torch.isnan(loss.detach()) else "inf"
                        if progress is not None:
                            progress(t, step, total)
                if watch is not None:
                    if not bool(finite):
                        return "nan" if torch.isnan(loss.detach()) else "inf"
                    stopping = watch(epoch)
                if epoch_report is not None:
                    yield epoch_report(epoch)
                epoch += 1
                if stopping:
                    break
            if trainable is not params:
                for p in params:
                    p.requires_grad_(True)
    finally:
        if tap is not None:
            tap.remove()
    # a finite last loss can still be followed by a step that leaves inf/NaN weights
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return "nan"
    if stop is not None:
        stop.restore()
    return ""


def _task_parameters(model: LayeredModel, strategy: Strategy, ctx: TaskContext) -> list[nn.Parameter]:
    """The parameters this task trains: outside the frozen layers, then as the strategy chooses."""
    params = _set_frozen(model, strategy.frozen_layers(ctx.task_index))
    chosen = strategy.trainable_parameters(ctx, params)
    if chosen is not params:
        keep = {id(p) for p in chosen}
        for p in model.parameters():
            if id(p) not in keep:
                p.requires_grad_(False)
        for p in chosen:
            p.requires_grad_(True)
    return list(chosen)


def _phase_parameters(params: list[nn.Parameter], wanted: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    """Of the task's ``params``, those the phase trains (in the task's order); the others wait, gradient-free."""
    keep = {id(p) for p in wanted}
    for p in params:
        if id(p) not in keep:
            p.requires_grad_(False)
    return [p for p in params if id(p) in keep]


def _optimizer(
    model: LayeredModel, params: list[nn.Parameter], lr: float, config: TrainConfig, task_index: int
) -> torch.optim.Optimizer:
    groups: list[nn.Parameter] | list[dict] = params
    if task_index > 0 and config.lr_decay != 1.0:
        groups = _layer_groups(model, params, lr, config.lr_decay)
    return make_optimizer(config.optimizer, groups, lr, config.weight_decay)


class _FeatureTap:
    """Forward hooks on the layers a strategy's penalty reads; each step's outputs, taken once."""

    def __init__(self, model: nn.Module, wanted: Sequence[str | int]) -> None:
        layers = named_layers(model)
        by_name = dict(layers)
        self.outputs: dict[str | int, Tensor] = {}
        self.handles = []
        for key in wanted:
            if isinstance(key, int) and -len(layers) <= key < len(layers):
                layer = layers[key][1]
            elif isinstance(key, str) and key in by_name:
                layer = by_name[key]
            else:
                names = ", ".join(name for name, _ in layers)
                raise ConfigError(f"feature layer {key!r} is not a layer of the model; its layers: {names}")
            if isinstance(layer, nn.ModuleList):  # a block never called as one (a ResNet's stem): its last part
                layer = layer[-1]
            self.handles.append(layer.register_forward_hook(partial(self._keep, key)))

    def _keep(self, key: str | int, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.outputs[key] = output

    def take(self) -> Features:
        taken, self.outputs = self.outputs, {}
        return taken

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


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
