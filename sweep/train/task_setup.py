"""One task's setup, before its first step: what trains, in which phases, with which optimizer.

:func:`prepare_task` asks the strategy every hook it answers once per task (training data, frozen
layers, trainable parameters, phases, cross-entropy weight, auxiliary model, feature layers) and
returns a :class:`TaskRun`, all the step loop reads. Each phase gets a fresh optimizer
(:func:`task_optimizer`), with discriminative learning rates on fine-tunes (:func:`layer_groups`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from sweep.config import TrainConfig
from sweep.errors import ConfigError
from sweep.models import LayeredModel, freeze_layers, layer_parameters, named_layers
from sweep.strategies.base import Auxiliary, Features, Phase, Strategy, TaskContext, TrainingData
from sweep.train.evaluation import EarlyStop
from sweep.train.optim import make_optimizer, task_schedule


def set_frozen(model: LayeredModel, k: int) -> list[nn.Parameter]:
    """Freeze the first k parametrised layers (their BatchNorms held in eval mode); return the parameters
    left to train."""
    return freeze_layers(model, k)


def layer_groups(model: LayeredModel, trainable: list[nn.Parameter], lr: float, decay: float) -> list[dict]:
    """Discriminative learning rates: layer k of L at lr·decay^(L−1−k); frozen parameters left out, and
    trainable ones outside the model's layers (a strategy's adapters) at lr."""
    keep = {id(p) for p in trainable}
    layers = layer_parameters(model)
    groups = [{"params": [p for p in params if id(p) in keep], "lr": lr * decay ** (len(layers) - 1 - k)}
              for k, params in enumerate(layers)]
    placed = {id(p) for params in layers for p in params}
    groups.append({"params": [p for p in trainable if id(p) not in placed], "lr": lr})
    return [group for group in groups if group["params"]]


def task_parameters(model: LayeredModel, strategy: Strategy, ctx: TaskContext) -> list[nn.Parameter]:
    """The parameters this task trains: outside the frozen layers, then as the strategy chooses."""
    params = set_frozen(model, strategy.frozen_layers(ctx.task_index))
    chosen = strategy.trainable_parameters(ctx, params)
    if chosen is not params:
        keep = {id(p) for p in chosen}
        for p in model.parameters():
            if id(p) not in keep:
                p.requires_grad_(False)
        for p in chosen:
            p.requires_grad_(True)
    return list(chosen)


def phase_parameters(params: list[nn.Parameter], wanted: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    """Of the task's ``params``, those the phase trains (in the task's order); the others wait, gradient-free."""
    keep = {id(p) for p in wanted}
    for p in params:
        if id(p) not in keep:
            p.requires_grad_(False)
    return [p for p in params if id(p) in keep]


def task_optimizer(
    model: LayeredModel, params: list[nn.Parameter], lr: float, config: TrainConfig, task_index: int
) -> torch.optim.Optimizer:
    """A fresh optimizer over ``params``: frozen parameters hold no optimizer state and get no weight decay."""
    groups: list[nn.Parameter] | list[dict] = params
    if task_index > 0 and config.lr_decay != 1.0:
        groups = layer_groups(model, params, lr, config.lr_decay)
    return make_optimizer(config.optimizer, groups, lr, config.weight_decay)


class OptimizerState:
    """``optimizer_state: keep``: each model parameter's optimizer state, by parameter name, as the last phase that
    trained it left it (Adam's ``step``, ``exp_avg``, ``exp_avg_sq``; SGD without momentum has none).

    Every phase of tasks 2..T builds its optimizer as usual (its groups, learning rates and weight decay are the
    task's), then :meth:`load_into` gives each of its parameters the state it had: the moments and the step count
    carry, whatever group (``lr_decay``) the parameter is in now. A parameter that does not train in a phase (a frozen
    layer, a probing phase's body) is not in its optimizer, so its state stays as it was until it trains again. A
    parameter with no state yet starts fresh, as do parameters outside the model (a strategy's adapters: they have no
    name in the model, so nothing could restore them from the task-prefix cache). Task 1 starts fresh, so the state
    after task 1 is the same under reset and keep. Tensors are handed over, not copied: the phase that wrote them
    has ended.
    """

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(p): name for name, p in model.named_parameters()}
        self.state: dict[str, dict[str, Tensor]] = {}

    def load_into(self, optimizer: torch.optim.Optimizer) -> None:
        fused = bool(optimizer.defaults.get("fused")) or bool(optimizer.defaults.get("capturable"))
        for group in optimizer.param_groups:
            for p in group["params"]:
                kept = self.state.get(self.names.get(id(p), ""))
                if kept is not None:  # torch's unfused Adam keeps its step count on the CPU, the fused one with p
                    optimizer.state[p] = {k: v.to(p.device) if k != "step" or fused else v for k, v in kept.items()}

    def save_from(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = self.names.get(id(p))
                tensors = {k: v for k, v in optimizer.state.get(p, {}).items() if isinstance(v, Tensor)}
                if name is not None and tensors:
                    self.state[name] = tensors

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        """A CPU copy, for the task-prefix cache."""
        return {name: {k: v.detach().cpu().clone() for k, v in kept.items()} for name, kept in self.state.items()}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        self.state = {name: dict(kept) for name, kept in state.items()}  # moved where they belong by load_into


class FeatureTap:
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


@dataclass(eq=False, slots=True)  # slots: the step reads a dozen of these fields
class TaskRun:
    """One task as its step loop sees it: the strategy's once-per-task answers, asked before the first step."""

    model: LayeredModel
    strategy: Strategy
    ctx: TaskContext
    masks: Tensor | None  # (tasks, classes) Benchmark.scoring_masks: task-IL, or class-IL with class_outputs seen
    data: TrainingData
    params: list[nn.Parameter]  # what the task trains; a phase may train part of it
    plan: list[tuple[Phase, int]]  # each phase with its number of epochs
    ce_weight: float
    stop: EarlyStop | None  # judges the epochs of the phase the task ends with
    auxiliary: Auxiliary | None
    aux_optimizer: torch.optim.Optimizer | None
    tap: FeatureTap | None  # hooks on the layers the penalty reads; removed when the task ends
    total: int  # steps in the task, over every phase
    # the losses since the last check, detached (a list append per step, no kernel); all_finite() reads them
    losses: list[Tensor]
    # step -> the learning-rate factor of warmup_epochs and lr_schedule (tasks 2..T); None: 1 throughout
    schedule: Callable[[int], float] | None = None
    finite: bool = True  # every loss checked so far was finite

    def all_finite(self) -> bool:
        """Whether every loss so far was finite: the losses since the last check in one kernel and one host sync,
        every few steps, instead of two more kernels in every step."""
        if self.losses:
            self.finite = self.finite and bool(torch.isfinite(torch.stack(self.losses)).all())
            self.losses.clear()
        return self.finite


class PhaseOptimizer:
    """A phase's optimizer and the learning-rate factor its groups hold now (a strategy's per-step factor)."""

    __slots__ = ("base_lrs", "factor", "optimizer")

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.factor = 1.0

    def set_factor(self, factor: float) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self.factor = factor


def prepare_task(
    model: LayeredModel, strategy: Strategy, ctx: TaskContext, config: TrainConfig, masks: Tensor | None
) -> TaskRun:
    """Ask the strategy its once-per-task hooks, freeze what the task leaves alone, and count its steps.

    The returned run's feature hooks are registered: the caller removes them (``run.tap.remove()``).
    """
    t = ctx.task_index
    data = strategy.training_data(ctx) or ctx.task_training_data()
    params = task_parameters(model, strategy, ctx)
    plan = [(phase, config.epochs if phase.epochs is None else phase.epochs) for phase in strategy.phases(t)]
    ce_weight = strategy.ce_weight(t)
    stop = None
    if t > 0 and config.early_stop_patience > 0:
        stop = EarlyStop(model, ctx.task.val, t, masks, config.early_stop_patience,
                         evaluated=partial(strategy.eval_model, ctx, t), compute=ctx.compute)
    auxiliary = strategy.auxiliary(ctx)
    aux_optimizer = None if auxiliary is None else make_optimizer(
        auxiliary.optimizer, list(auxiliary.model.parameters()), auxiliary.lr, auxiliary.weight_decay)
    layers = strategy.feature_layers(t)
    tap = FeatureTap(model, layers) if layers else None
    steps_per_epoch = (len(data.split) + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * sum(epochs for _, epochs in plan)
    # warmup_epochs and lr_schedule act on fine-tunes (tasks 2..T), over the task's planned steps, every phase's
    schedule = task_schedule(config.warmup_epochs, config.lr_schedule, steps_per_epoch, total) if t > 0 else None
    return TaskRun(model, strategy, ctx, masks, data, params, plan, ce_weight, stop, auxiliary, aux_optimizer, tap,
                   total, [], schedule)
