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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sweep.config import TrainConfig
from sweep.data.tasks import Benchmark, to_float
from sweep.errors import ConfigError
from sweep.models import Dropout, LayeredModel, build_model, dropout_layers, load_weights
from sweep.strategies.base import NO_FEATURES, Batch, Compute, Strategy, TaskContext
from sweep.strategies.registry import build_strategy
from sweep.train.evaluation import EVAL_BATCH, evaluate, evaluate_all, mask_logits, masked_logits
from sweep.train.reports import EpochReport, PrefixStore, SequenceResult, TaskReport, prefix_state, restore_prefix
from sweep.train.task_setup import (
    OptimizerState,
    PhaseOptimizer,
    TaskRun,
    phase_parameters,
    prepare_task,
    set_frozen,
    task_optimizer,
)

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
    epoch_reports: bool | Callable[[int, int], bool] = False,
) -> Generator[TaskReport | EpochReport, None, SequenceResult]:
    """:func:`train_sequence` as a generator: yields after each task, returns the result.

    Lets a caller train several seeds in lockstep and report their mean after every task.
    With ``prefix``, the state after task 1 is loaded from that cache entry when present
    (and saved to it when not): the rest of the run is identical either way. With
    ``epoch_reports``, it also yields an :class:`EpochReport` after each epoch of a task it trains
    (a task restored from the cache, or loaded from ``pretrained``, yields its task report only);
    closing the generator there stops the run. ``epoch_reports`` may instead be a predicate
    ``(task_index, epoch) -> bool`` (both 0-based) naming the epochs to report after; an epoch report
    evaluates the validation split only (its test rows read NaN).

    Every report carries the work done so far (:class:`~sweep.strategies.base.Compute`), counted
    separately for task 1 and for the tasks after it.

    With ``config.optimizer_state == "keep"`` the optimizer's per-parameter state carries from task to task
    (:class:`~sweep.train.task_setup.OptimizerState`); the prefix entry then holds it too, and an entry written
    without it (by a ``reset`` trial with the same key) is computed again, with it.
    """
    started = time.perf_counter()
    if config.class_shuffle != "none" and benchmark.info.get("class_shuffle_seed") != config.seed:
        raise ConfigError(f"class_shuffle {config.class_shuffle}: seed {config.seed}'s tasks are dealt by "
                          "seed_benchmark(config, benchmark) before training; this benchmark was not")
    device = parse_device(device)
    benchmark = benchmark.to(device)
    model.to(device).train()
    masks = benchmark.scoring_masks(config.class_outputs, device)
    seen_outputs = masks is not None and benchmark.scenario == "class"  # class_outputs seen: masks[t] grows
    generator = torch.Generator().manual_seed(config.seed)
    T = benchmark.num_tasks
    val, test = np.full((T, T), np.nan), np.full((T, T), np.nan)
    first, rest = Compute(), Compute()  # task 1's work (it may come from a prefix store), the others'
    wanted = epoch_reports if callable(epoch_reports) else (lambda t, e: bool(epoch_reports))

    def spent() -> dict[str, Any]:  # compute_first, compute: the work so far
        return {"compute_first": first.copy(), "compute": rest.copy()}

    def epoch_report(ctx: TaskContext, task_started: float, epoch: int) -> EpochReport | None:
        t = ctx.task_index
        if not wanted(t, epoch):
            return None
        val_now, test_now = val.copy(), test.copy()
        val_now[t] = evaluate_all(model, benchmark, masks, seen=t + 1, splits=("val",), compute=ctx.compute, now=t,
                                  models=[strategy.eval_model(ctx, i) for i in range(t + 1)])[0]
        return EpochReport(t, epoch, T, val_now, test_now, initial_val, initial_test,
                           time.perf_counter() - task_started, **spent())

    carried = OptimizerState(model) if config.optimizer_state == "keep" else None
    cached = prefix.load() if prefix is not None else None
    if cached is not None and carried is not None and "optimizer" not in cached:
        cached = None  # a reset trial's entry: task 1's model is the same, but keep needs the optimizer state too
    if cached is None:
        initial_val, initial_test = evaluate_all(model, benchmark, masks, compute=first)
    else:
        initial_val, initial_test, val[0], test[0] = restore_prefix(cached, model, strategy, generator, device,
                                                                    carried)
        yield TaskReport(0, T, val.copy(), test.copy(), initial_val, initial_test, 0.0, **spent())
    variants: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []
    for t in range(0 if cached is None else 1, T):
        task_started = time.perf_counter()
        logits_fn = partial(masked_logits, model, masks=masks, now=t if seen_outputs else None)  # (x, ids) -> logits
        # the task's own counter is the running total: what an epoch report shows includes the task so far
        ctx = TaskContext(t, benchmark, model, device, config.batch_size, generator, logits_fn,
                          compute=first if t == 0 else rest, penalty_grads=True,
                          outputs=masks[t] if masks is not None and seen_outputs else None)
        strategy.before_task(ctx)
        report = partial(epoch_report, ctx, task_started) if epoch_reports else None
        reason = yield from _fit_task(model, strategy, ctx, config, masks, progress, report, carried)
        if reason:
            set_frozen(model, 0)
            return SequenceResult(val, test, initial_val, initial_test, status="diverged", reason=reason,
                                  stats=strategy.stats(), duration_s=time.perf_counter() - started, **spent())
        strategy.after_task(ctx)
        val[t], test[t] = evaluate_all(model, benchmark, masks, models=[strategy.eval_model(ctx, i) for i in range(T)],
                                       compute=ctx.compute, now=t)
        if t == 0 and prefix is not None:
            prefix.save(prefix_state(model, strategy, generator, initial_val, initial_test, val[0], test[0], carried))
        variants = _evaluate_variants(model, strategy, ctx, masks) if t == T - 1 else []
        yield TaskReport(t, T, val.copy(), test.copy(), initial_val, initial_test, time.perf_counter() - task_started,
                         **spent())
    set_frozen(model, 0)
    return SequenceResult(val, test, initial_val, initial_test, stats=strategy.stats(),
                          duration_s=time.perf_counter() - started, variants=variants, **spent())


def _evaluate_variants(model: LayeredModel, strategy: Strategy, ctx: TaskContext, masks: Tensor | None
                       ) -> list[tuple[dict[str, Any], np.ndarray, np.ndarray]]:
    """Evaluate every free variant of the final model (:meth:`Strategy.variants`) on every task, then put the
    run's own weights back."""
    out: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []
    own: dict[str, Tensor] | None = None
    T = ctx.benchmark.num_tasks
    for values, state in strategy.variants(ctx):
        if own is None:
            own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        val_row, test_row = evaluate_all(model, ctx.benchmark, masks, compute=ctx.compute, now=ctx.task_index,
                                         models=[strategy.eval_model(ctx, i) for i in range(T)])
        out.append((values, val_row, test_row))
    if own is not None:
        model.load_state_dict(own)
    return out


def _fit_task(
    model: LayeredModel, strategy: Strategy, ctx: TaskContext, config: TrainConfig, masks: Tensor | None,
    progress: Callable[[int, int, int], None] | None, epoch_report: Callable[[int], EpochReport | None] | None,
    carried: OptimizerState | None = None,
) -> Generator[EpochReport, None, str]:
    """Train task ``ctx.task_index``, or load the source task's ``pretrained`` weights (no optimizer state: with
    ``keep``, task 2 then starts fresh); return why the run diverged, or ""."""
    t = ctx.task_index
    if t == 0 and config.pretrained is not None:
        load_weights(model, config.pretrained)  # the source task: trained elsewhere, evaluated here
        return ""
    lr = config.lr if t == 0 or config.finetune_lr is None else config.finetune_lr
    diverged = yield from _train_task(model, strategy, ctx, config, masks, lr, progress, epoch_report, carried)
    return f"loss became {diverged} on task {t + 1} (lr={lr:g})" if diverged else ""


def _train_task(
    model: LayeredModel, strategy: Strategy, ctx: TaskContext, config: TrainConfig, masks: Tensor | None, lr: float,
    progress: Callable[[int, int, int], None] | None, epoch_report: Callable[[int], EpochReport | None] | None,
    carried: OptimizerState | None = None,
) -> Generator[EpochReport, None, str]:
    """Train one task, phase after phase; return "" or, if the loss stopped being finite, "nan"/"inf".

    Each phase builds a fresh optimizer; with ``carried`` (``optimizer_state: keep``) the phases of tasks 2..T
    start from the state each parameter last had, and every phase's final state is kept for the next.

    Yields ``epoch_report(epoch)`` after each epoch when given. Every hook the strategy answers
    once per task is asked by :func:`prepare_task`, before the first step; a step asks only the per-step ones.
    """
    run = prepare_task(model, strategy, ctx, config, masks)
    t, n, batch_size = ctx.task_index, len(run.data.split), config.batch_size
    step = epoch = 0
    stopping = False
    dropping = _seed_dropout(model, ctx)
    try:
        for index, (phase, epochs) in enumerate(run.plan):
            trainable = run.params if phase.trainable is None else phase_parameters(run.params, phase.trainable(model))
            optimizer = PhaseOptimizer(task_optimizer(model, trainable, lr, config, t))  # fresh per task and phase
            if carried is not None and t > 0:
                carried.load_into(optimizer.optimizer)
            watch = run.stop if index == len(run.plan) - 1 else None  # early stopping judges the task's last phase
            for _ in range(epochs):
                order = torch.randperm(n, generator=ctx.generator).to(ctx.device, non_blocking=True)
                for start in range(0, n, batch_size):
                    loss = _train_step(run, optimizer, order[start : start + batch_size], step)
                    step += 1
                    if step % DIVERGENCE_CHECK_EVERY == 0 or step == run.total:
                        if not run.all_finite():
                            return "nan" if torch.isnan(loss.detach()) else "inf"
                        if progress is not None:
                            progress(t, step, run.total)
                if watch is not None:
                    if not run.all_finite():
                        return "nan" if torch.isnan(loss.detach()) else "inf"
                    stopping = watch(epoch)
                if epoch_report is not None and (made := epoch_report(epoch)) is not None:
                    yield made
                epoch += 1
                if stopping:
                    break
            if carried is not None:
                carried.save_from(optimizer.optimizer)
            if trainable is not run.params:
                for p in run.params:
                    p.requires_grad_(True)
    finally:
        if run.tap is not None:
            run.tap.remove()
        for layer in dropping:
            layer.generator = None
    # a finite last loss can still be followed by a step that leaves inf/NaN weights
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return "nan"
    if run.stop is not None:
        run.stop.restore()
    return ""


def _seed_dropout(model: LayeredModel, ctx: TaskContext) -> list[Dropout]:
    """Give the model's dropout layers a generator for this task, seeded by a draw from the run's generator: seeds
    in lockstep draw their own masks, and a run restored from the prefix cache (its generator too) the same ones.
    No dropout, no draw: the run's random numbers stay as they were. The caller unsets it when the task ends."""
    layers = dropout_layers(model)
    if layers:
        seed = int(torch.randint(2**63 - 1, (1,), generator=ctx.generator))
        generator = torch.Generator(ctx.device).manual_seed(seed)
        for layer in layers:
            layer.generator = generator
    return layers


def _train_step(run: TaskRun, optimizer: PhaseOptimizer, idx: Tensor, step: int) -> Tensor:
    """One step on the training samples ``idx`` (and one of the auxiliary model); returns the loss.

    The losses are kept for :meth:`TaskRun.all_finite`, on the device, without a host sync.
    """
    data, strategy, ctx, masks = run.data, run.strategy, run.ctx, run.masks
    # index_select, not x[idx]: the same rows, a row copy instead of torch's per-element advanced indexing (on the
    # CPU, 7 µs against 50 µs for 64 MNIST images); one task's ids are one value, a slice of them will do
    ids = data.task_ids
    if ids is not None:
        ids = ids[: len(idx)] if data.task is not None else torch.index_select(ids, 0, idx)
    drawn = Batch(to_float(torch.index_select(data.split.x, 0, idx)), torch.index_select(data.split.y, 0, idx), ids)
    batch = strategy.adjust_batch(ctx, drawn)
    run.ctx.compute.optimizer_steps += 1
    run.ctx.compute.train_samples += int(batch.x.shape[0])
    wanted = strategy.lr_factor(ctx.task_index, step, run.total)
    if run.schedule is not None:  # warmup_epochs, lr_schedule: the trainer's own factor, times the strategy's
        wanted *= run.schedule(step)
    if wanted != optimizer.factor:
        optimizer.set_factor(wanted)
    raw = run.model(batch.x)  # (B, classes)
    # task-incremental: each sample's own task's classes; class-incremental with class_outputs seen: the classes so
    # far (ctx.outputs is masks[t] then); otherwise every output
    if batch is drawn and data.task is not None:  # every sample the one task's: its row of the masks, broadcast
        logits = mask_logits(raw, masks, now=data.task)
    else:
        logits = mask_logits(raw, masks, batch.task_ids, ctx.task_index if ctx.outputs is not None else None)
    loss = F.cross_entropy(logits, batch.y)
    if run.ce_weight != 1.0:
        loss = run.ce_weight * loss
    penalty = strategy.penalty(ctx, batch, raw, NO_FEATURES if run.tap is None else run.tap.take())
    if penalty is not None:
        loss = loss + penalty
    optimizer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    strategy.penalty_grad(ctx)
    optimizer.optimizer.step()
    strategy.after_step(ctx, batch)
    auxiliary, aux_optimizer = run.auxiliary, run.aux_optimizer
    if auxiliary is not None and aux_optimizer is not None:
        aux_loss = auxiliary.loss(ctx, batch)
        aux_optimizer.zero_grad(set_to_none=True)
        aux_loss.backward()
        aux_optimizer.step()
        ctx.compute.optimizer_steps += 1  # the auxiliary's own step; its loss counts the samples it trains on
        run.losses.append(aux_loss.detach())
    run.losses.append(loss.detach())
    return loss


def build_run(config: TrainConfig, benchmark: Benchmark) -> tuple[LayeredModel, Strategy]:
    """A seeded model and the strategy for ``config`` on ``benchmark``."""
    torch.manual_seed(config.seed)  # the model's initial weights depend on the seed only
    model = build_model(config.model, benchmark.input_shape, benchmark.num_classes, config.hidden, config.dropout)
    if config.init_weights is not None:
        load_weights(model, config.init_weights, strict=False, what="init_weights")
    return model, build_strategy(config, len(model.layers()))


def load_benchmark(config: TrainConfig) -> Benchmark:
    """``config``'s benchmark as its seed sees it (:func:`seed_benchmark`)."""
    from sweep.data.benchmarks import build_benchmark

    check_class_shuffle(config)  # before any file is read
    return seed_benchmark(config, build_benchmark(
        config.benchmark, config.scenario, config.num_tasks, config.class_order, config.data_root, config.val_fraction
    ))


def seed_benchmark(config: TrainConfig, benchmark: Benchmark) -> Benchmark:
    """The tasks ``config.seed`` trains on: ``benchmark`` itself, or under ``class_shuffle: per-seed`` its classes
    dealt in the seed's own order (the same benchmark when it is already dealt for that seed).

    Raises:
        ConfigError: as :func:`check_class_shuffle`.
    """
    if config.class_shuffle == "none":
        return benchmark
    from sweep.data.benchmarks import shuffle_classes

    check_class_shuffle(config)
    return shuffle_classes(benchmark, config.seed)


def check_class_shuffle(config: TrainConfig) -> None:
    """Refuse ``class_shuffle: per-seed`` with a class order, with pretrained weights (trained on one task 1),
    or on a benchmark whose tasks are not a split of its classes."""
    if config.class_shuffle == "none":
        return
    from sweep.data.benchmarks import check_class_split

    check_class_split(config.benchmark)
    if config.class_order is not None:
        raise ConfigError(f"class_shuffle per-seed draws each seed's class order; it cannot be combined with "
                          f"class_order {list(config.class_order)}: set one of them")
    if config.pretrained is not None:
        raise ConfigError(f"class_shuffle per-seed gives every seed its own task 1, but pretrained "
                          f"{config.pretrained} was trained on one task 1: use init_weights, or class_shuffle none")


def run_config(
    config: TrainConfig,
    benchmark: Benchmark | None = None,
    *,
    device: torch.device | str = "cpu",
    callback: Callable[[TaskReport], None] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> SequenceResult:
    """Build the benchmark (unless given), a seeded model and the strategy, and train."""
    benchmark = load_benchmark(config) if benchmark is None else seed_benchmark(config, benchmark)
    model, strategy = build_run(config, benchmark)
    return train_sequence(benchmark, model, strategy, config, device=device, callback=callback, progress=progress)
