"""The sequential-task trainer: one model, task after task, the full accuracy matrix.

The trainer owns the optimizer and the step; a strategy only returns values from its hooks
(sweep.strategies.base lists them), and the trainer asks the per-task ones once, before the first step
(:mod:`sweep.train.task_setup`). Data never leaves the device: batches are index slices of whole-task
tensors, and evaluation (:mod:`sweep.train.evaluation`) synchronises once per sweep over the tasks.
What it hands out is in :mod:`sweep.train.reports`. It knows nothing of Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sweep.config import TrainConfig
from sweep.data.tasks import Benchmark, to_float
from sweep.errors import ConfigError
from sweep.models import LayeredModel, build_model, load_weights
from sweep.strategies.base import NO_FEATURES, Batch, Strategy, TaskContext
from sweep.strategies.registry import build_strategy
from sweep.train.evaluation import EVAL_BATCH, evaluate, evaluate_all, masked_logits
from sweep.train.reports import EpochReport, PrefixStore, SequenceResult, TaskReport, prefix_state, restore_prefix
from sweep.train.task_setup import PhaseOptimizer, TaskRun, phase_parameters, prepare_task, set_frozen, task_optimizer

__all__ = ["EVAL_BATCH", "EpochReport", "PrefixStore", "SequenceResult", "TaskReport", "build_run", "evaluate",
           "evaluate_all", "iter_sequence", "load_benchmark", "masked_logits", "parse_device", "run_config",
           "train_sequence"]

DIVERGENCE_CHECK_EVERY = 50  # steps between host syncs for the NaN check (free on CPU, a sync on GPU)
DEVICE_TYPES = ("cpu", "cuda")  # where the trainer runs; meta, mps and others are refused


def parse_device(device: torch.device | str, label: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` the trainer runs on (cpu, or cuda when this machine has it);
    anything else is a one-line ConfigError naming ``label`` (``--device`` on the command line)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{label} {device!r} is not a torch device; allowed e.g. cpu, cuda, cuda:0") from None
    if parsed.type not in DEVICE_TYPES:
        raise ConfigError(f"{label} {device!r}: training runs on {' or '.join(DEVICE_TYPES)}, not {parsed.type}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{label} {device!r}: CUDA is not available on this machine; use cpu")
    return parsed


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
        if callback is not None and isinstance(report, TaskReport):  # always: no epoch reports were asked for
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
    device = parse_device(device)
    benchmark = benchmark.to(device)
    model.to(device).train()
    masks = benchmark.task_masks(device)
    generator = torch.Generator().manual_seed(config.seed)
    T = benchmark.num_tasks
    val, test = np.full((T, T), np.nan), np.full((T, T), np.nan)
    logits_fn = partial(masked_logits, model, masks=masks)  # (x, task_ids) -> masked (B, classes)

    def epoch_report(ctx: TaskContext, task_started: float, epoch: int) -> EpochReport:
        t = ctx.task_index
        val_now, test_now = val.copy(), test.copy()
        val_now[t], test_now[t] = evaluate_all(model, benchmark, masks, seen=t + 1,
                                               models=[strategy.eval_model(ctx, i) for i in range(t + 1)])
        return EpochReport(t, epoch, T, val_now, test_now, initial_val, initial_test,
                           time.perf_counter() - task_started)

    cached = prefix.load() if prefix is not None else None
    if cached is None:
        initial_val, initial_test = evaluate_all(model, benchmark, masks)
    else:
        initial_val, initial_test, val[0], test[0] = restore_prefix(cached, model, strategy, generator, device)
        yield TaskReport(0, T, val.copy(), test.copy(), initial_val, initial_test, 0.0)
    for t in range(0 if cached is None else 1, T):
        task_started = time.perf_counter()
        ctx = TaskContext(t, benchmark, model, device, config.batch_size, generator, logits_fn)
        strategy.before_task(ctx)
        report = partial(epoch_report, ctx, task_started) if epoch_reports else None
        reason = yield from _fit_task(model, strategy, ctx, config, masks, progress, report)
        if reason:
            set_frozen(model, 0)
            return SequenceResult(val, test, initial_val, initial_test, status="diverged", reason=reason,
                                  stats=strategy.stats(), duration_s=time.perf_counter() - started)
        strategy.after_task(ctx)
        val[t], test[t] = evaluate_all(model, benchmark, masks, models=[strategy.eval_model(ctx, i) for i in range(T)])
        if t == 0 and prefix is not None:
            prefix.save(prefix_state(model, strategy, generator, initial_val, initial_test, val[0], test[0]))
        yield TaskReport(t, T, val.copy(), test.copy(), initial_val, initial_test, time.perf_counter() - task_started)
    set_frozen(model, 0)
    return SequenceResult(val, test, initial_val, initial_test, stats=strategy.stats(),
                          duration_s=time.perf_counter() - started)


def _fit_task(
    model: LayeredModel, strategy: Strategy, ctx: TaskContext, config: TrainConfig, masks: Tensor | None,
    progress: Callable[[int, int, int], None] | None, epoch_report: Callable[[int], EpochReport] | None,
) -> Generator[EpochReport, None, str]:
    """Train task ``ctx.task_index``, or load the source task's ``pretrained`` weights; return why the
    run diverged, or ""."""
    t = ctx.task_index
    if t == 0 and config.pretrained is not None:
        load_weights(model, config.pretrained)  # the source task: trained elsewhere, evaluated here
        return ""
    lr = config.lr if t == 0 or config.finetune_lr is None else config.finetune_lr
    diverged = yield from _train_task(model, strategy, ctx, config, masks, lr, progress, epoch_report)
    return f"loss became {diverged} on task {t + 1} (lr={lr:g})" if diverged else ""


def _train_task(
    model: LayeredModel, strategy: Strategy, ctx: TaskContext, config: TrainConfig, masks: Tensor | None, lr: float,
    progress: Callable[[int, int, int], None] | None, epoch_report: Callable[[int], EpochReport] | None,
) -> Generator[EpochReport, None, str]:
    """Train one task, phase after phase; return "" or, if the loss stopped being finite, "nan"/"inf".

    Yields ``epoch_report(epoch)`` after each epoch when given. Every hook the strategy answers
    once per task is asked by :func:`prepare_task`, before the first step; a step asks only the per-step ones.
    """
    run = prepare_task(model, strategy, ctx, config, masks)
    t, n, batch_size = ctx.task_index, len(run.data.split), config.batch_size
    step = epoch = 0
    stopping = False
    try:
        for index, (phase, epochs) in enumerate(run.plan):
            trainable = run.params if phase.trainable is None else phase_parameters(run.params, phase.trainable(model))
            optimizer = PhaseOptimizer(task_optimizer(model, trainable, lr, config, t))  # fresh per task and phase
            watch = run.stop if index == len(run.plan) - 1 else None  # early stopping judges the task's last phase
            for _ in range(epochs):
                order = torch.randperm(n, generator=ctx.generator).to(ctx.device, non_blocking=True)
                for start in range(0, n, batch_size):
                    loss = _train_step(run, optimizer, order[start : start + batch_size], step)
                    step += 1
                    if step % DIVERGENCE_CHECK_EVERY == 0 or step == run.total:
                        if not bool(run.finite):
                            return "nan" if torch.isnan(loss.detach()) else "inf"
                        if progress is not None:
                            progress(t, step, run.total)
                if watch is not None:
                    if not bool(run.finite):
                        return "nan" if torch.isnan(loss.detach()) else "inf"
                    stopping = watch(epoch)
                if epoch_report is not None:
                    yield epoch_report(epoch)
                epoch += 1
                if stopping:
                    break
            if trainable is not run.params:
                for p in run.params:
                    p.requires_grad_(True)
    finally:
        if run.tap is not None:
            run.tap.remove()
    # a finite last loss can still be followed by a step that leaves inf/NaN weights
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return "nan"
    if run.stop is not None:
        run.stop.restore()
    return ""


def _train_step(run: TaskRun, optimizer: PhaseOptimizer, idx: Tensor, step: int) -> Tensor:
    """One step on the training samples ``idx`` (and one of the auxiliary model); returns the loss.

    Whether the losses stayed finite is folded into ``run.finite`` on the device, without a host sync.
    """
    data, strategy, ctx, masks = run.data, run.strategy, run.ctx, run.masks
    batch = Batch(to_float(data.split.x[idx]), data.split.y[idx], None if data.task_ids is None else data.task_ids[idx])
    batch = strategy.adjust_batch(ctx, batch)
    wanted = strategy.lr_factor(ctx.task_index, step, run.total)
    if wanted != optimizer.factor:
        optimizer.set_factor(wanted)
    raw = run.model(batch.x)  # (B, classes)
    logits = raw if masks is None or batch.task_ids is None else raw.masked_fill(
        ~masks[batch.task_ids], torch.finfo(raw.dtype).min
    )
    loss = F.cross_entropy(logits, batch.y)
    if run.ce_weight != 1.0:
        loss = run.ce_weight * loss
    penalty = strategy.penalty(ctx, batch, raw, NO_FEATURES if run.tap is None else run.tap.take())
    if penalty is not None:
        loss = loss + penalty
    optimizer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.optimizer.step()
    strategy.after_step(ctx, batch)
    auxiliary, aux_optimizer = run.auxiliary, run.aux_optimizer
    if auxiliary is not None and aux_optimizer is not None:
        aux_loss = auxiliary.loss(ctx, batch)
        aux_optimizer.zero_grad(set_to_none=True)
        aux_loss.backward()
        aux_optimizer.step()
        run.finite &= torch.isfinite(aux_loss.detach())
    run.finite &= torch.isfinite(loss.detach())
    return loss


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
