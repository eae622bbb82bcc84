"""The production API: the strategies as plain PyTorch pieces for your own training loop.

The sweep chose a setting; this module applies it where the training loop is yours::

    chosen = sweep.api.from_chosen("results/ewc-mytasks-domain/chosen.yaml")
    fisher = chosen.fisher(model, x_source, y_source)          # once, on the source data
    ewc = chosen.ewc(model, fisher)                              # λ/2 · Σ F (θ − θ*)², θ* = weights now
    chosen.freeze(model)                                         # the chosen frozen_layers, BatchNorm held
    optimizer = chosen.optimizer(model)                          # fine-tuning lr, lr_decay groups
    for x, y in target_batches:
        loss = F.cross_entropy(model(x), y) + ewc(model)
        optimizer.zero_grad(); loss.backward(); optimizer.step()

The Fisher runs on ``chosen.config.threads`` torch threads (default 1, put back afterwards); wrap your
own loop in ``sweep.api.torch_threads(n)`` to do the same: on a busy machine torch's default of a
thread per core spins against every other process.

Each piece is the very code the trainer runs (the Fisher estimators of
:mod:`sweep.strategies.fisher`, the EWC, L2-SP and distillation terms of their strategies), so a
loop that does what the trainer does gets the trainer's numbers, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.config import TrainConfig, read_yaml
from sweep.errors import ConfigError
from sweep.models import freeze_layers, named_layers
from sweep.strategies.distill import distillation_term, frozen_copy, vandeven_term
from sweep.strategies.ewc import EWC
from sweep.strategies.fisher import ESTIMATORS, fisher_diagonal
from sweep.strategies.interp import interpolate_states
from sweep.strategies.l2sp import L2SP
from sweep.strategies.lora import LoRA, adapted_modules, add_loras, layer_modules, lora_of, merge, resolve_layers
from sweep.strategies.lpft import head_parameters
from sweep.strategies.registry import parse_strategy
from sweep.strategies.replay import balanced_quotas
from sweep.train.optim import make_optimizer, task_schedule

__all__ = [
    "Chosen", "DistillationLoss", "EWCPenalty", "L2SPPenalty", "add_adapters", "compute_fisher", "freeze_layers",
    "from_chosen", "head_parameters", "interpolate", "layer_names", "make_optimizer", "merge_adapters", "param_groups",
    "replay_indices", "torch_threads",
]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _class_mask(model_out: int, classes: Sequence[int], device: torch.device) -> Tensor:
    mask = torch.zeros(model_out, dtype=torch.bool, device=device)
    mask[list(classes)] = True
    return mask


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``threads`` inside the block, and put back after it (None: unchanged).

    torch's default is one thread per core, which on a busy machine spins against every other process:
    for models as small as these one thread is as fast on an idle machine and many times faster on a busy
    one (``make bench``, row ``threads_under_load``). Wrap your own loop in it too.
    """
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compute_fisher(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    estimator: str = "exact",
    classes: Sequence[int] | None = None,
    samples: int | None = None,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    threads: int | None = 1,
) -> dict[str, Tensor]:
    """The diagonal Fisher of every parameter of ``model`` on (x, y), name -> tensor.

    Args:
        model: your network, as trained on the data it must remember.
        x: (N, ...) inputs (uint8 images are scaled to [0, 1], floats are used as they are).
        y: (N,) integer labels (``empirical`` and ``batched`` use them).
        estimator: ``exact``, ``sampled``, ``empirical`` or ``batched`` (docs/design.md: their λ scales differ).
        classes: only these logits count (the others are masked out): a task-incremental head's, or the
            classes seen so far with ``class_outputs: seen``.
        samples: use this many samples, drawn with ``generator``; None: all of them.
        batch_size: the batch of the ``batched`` estimator (your training batch size).
        generator: CPU generator for ``samples`` and ``sampled``'s draws.
        threads: torch CPU threads while it runs, put back after (:func:`torch_threads`); 1 cannot
            oversubscribe a busy machine; None: torch's current setting.
    """
    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator {estimator!r} is unknown; allowed: {', '.join(ESTIMATORS)}")
    device = _device(model)
    x, y = x.to(device), y.to(device)
    logits = None
    if classes is not None:
        allowed: list[Tensor] = []

        def logits(inputs: Tensor, _ids: Tensor | None) -> Tensor:
            out = model(inputs)  # (B, classes)
            if not allowed:
                allowed.append(_class_mask(out.shape[1], classes, out.device))
            return out.masked_fill(~allowed[0], torch.finfo(out.dtype).min)

    with torch_threads(threads):
        return fisher_diagonal(model, x, y, estimator=estimator, logits=logits, samples=samples,
                               batch_size=batch_size, generator=generator)


def _check_names(model: nn.Module, names: Sequence[str], what: str) -> None:
    missing = [n for n, _ in model.named_parameters() if n not in names]
    if missing:
        raise ConfigError(f"{what} has no entry for parameter {missing[0]!r} of {type(model).__name__} "
                          f"({len(missing)} missing): was it computed on another model?")


class EWCPenalty:
    """λ/2 · Σ_k F_k (θ − θ*_k)², θ*_k = the weights when each task's Fisher was added.

    ``penalty(model)`` is a scalar tensor with gradients, to add to your loss. More tasks:
    :meth:`add_task` (separate mode keeps one (F, θ*) per task; online: F ← γF + F_new).
    """

    def __init__(self, model: nn.Module, fisher: dict[str, Tensor], lam: float, *, mode: str = "separate",
                 gamma: float = 1.0) -> None:
        config = TrainConfig(ewc_lambda=lam, ewc_mode=mode, ewc_gamma=gamma)  # the config's range checks
        self._ewc = EWC(config.ewc_lambda, ewc_mode=config.ewc_mode, ewc_gamma=config.ewc_gamma)
        self.add_task(model, fisher)

    @property
    def lam(self) -> float:
        return self._ewc.ewc_lambda

    def add_task(self, model: nn.Module, fisher: dict[str, Tensor]) -> None:
        """Consolidate one more task: its Fisher and ``model``'s current weights as θ*."""
        _check_names(model, list(fisher), "fisher")
        self._ewc.consolidate({n: f.detach() for n, f in fisher.items()},
                              {n: p.detach() for n, p in model.named_parameters()})

    def __call__(self, model: nn.Module) -> Tensor:
        term = self._ewc.model_penalty(model)
        return term if term is not None else torch.zeros((), device=_device(model))

    def fisher_scale(self) -> dict[str, float]:
        """Mean and trace of the Fisher λ multiplies: λ means nothing without them."""
        return self._ewc.stats()

    def state_dict(self) -> dict[str, Tensor | float | int]:
        return self._ewc.state_dict()

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        self._ewc.load_state_dict(state)


class L2SPPenalty:
    """λ/2 · ||θ − θ*||², θ* = ``model``'s weights when this is built (L2 toward the starting point)."""

    def __init__(self, model: nn.Module, lam: float) -> None:
        self._l2sp = L2SP(TrainConfig(l2sp_lambda=lam).l2sp_lambda)
        self._l2sp.anchor = {n: p.detach().clone() for n, p in model.named_parameters()}

    def __call__(self, model: nn.Module) -> Tensor:
        term = self._l2sp.model_penalty(model)
        return term if term is not None else torch.zeros((), device=_device(model))


class DistillationLoss:
    """Learning without forgetting: α·CE + (1 − α)·T²·KL(softmax(z_teacher/T) ‖ softmax(z_student/T)).

    The teacher is a frozen copy of ``teacher`` taken now (pass your model before fine-tuning). Which
    classes the KL covers is ``variant`` (``distill_variant``, docs/reproductions.md):

    - ``old-classes``: both softmaxes over ``classes`` (the classes the teacher knew; None: every output);
    - ``vandeven``: the student's softmax over ``classes`` and ``new_classes`` (the task being learned), the
      teacher's over ``classes`` padded with 0 for the new ones (class-incremental); with ``per_task`` (each
      past task's classes, task-incremental) one softmax per past task, averaged; with neither, every output.
    """

    def __init__(self, teacher: nn.Module, temperature: float = 2.0, alpha: float = 0.5, *,
                 classes: Sequence[int] | None = None, variant: str = "old-classes",
                 new_classes: Sequence[int] | None = None, per_task: Sequence[Sequence[int]] | None = None) -> None:
        config = TrainConfig(distill_temperature=temperature, distill_alpha=alpha, distill_variant=variant)
        self.temperature, self.alpha, self.variant = config.distill_temperature, config.distill_alpha, variant
        self.teacher = frozen_copy(teacher)
        self.classes = None if classes is None else list(classes)
        self.new_classes = [] if new_classes is None else list(new_classes)
        self.per_task = None if per_task is None else [list(group) for group in per_task]

    def penalty(self, x: Tensor, student_logits: Tensor) -> Tensor:
        """The (1 − α)·T²·KL term alone, on the student's raw (B, classes) logits."""
        device = student_logits.device
        if self.alpha == 1.0:
            return torch.zeros((), device=device)
        if self.variant == "vandeven" and (self.per_task is not None or self.classes is not None):
            with torch.no_grad():
                taught = self.teacher(x)
            return (1.0 - self.alpha) * vandeven_term(taught, student_logits, self._columns(device), self.temperature)
        known = torch.arange(student_logits.shape[1], device=device) if self.classes is None \
            else torch.tensor(self.classes, dtype=torch.long, device=device)
        return distillation_term(self.teacher, x, student_logits, known, self.temperature, self.alpha)

    def _columns(self, device: torch.device) -> tuple[Tensor, ...]:
        """:func:`sweep.strategies.distill.vandeven_term`'s column pairs, as the trainer builds them."""
        def ids(classes: Sequence[int]) -> Tensor:
            return torch.tensor(sorted(set(classes)), dtype=torch.long, device=device)

        if self.per_task is not None:
            return tuple(c for group in self.per_task for c in (ids(group), torch.arange(len(set(group)),
                                                                                         device=device)))
        assert self.classes is not None
        seen = sorted(set(self.classes) | set(self.new_classes))
        return ids(seen), torch.tensor([seen.index(c) for c in sorted(set(self.classes))], dtype=torch.long,
                                       device=device)

    def __call__(self, student_logits: Tensor, x: Tensor, y: Tensor, *, ce_logits: Tensor | None = None) -> Tensor:
        """The whole loss; ``ce_logits``: the logits the cross-entropy sees when they differ (a masked head)."""
        ce = F.cross_entropy(student_logits if ce_logits is None else ce_logits, y)
        if self.alpha == 1.0:
            return ce
        return self.alpha * ce + self.penalty(x, student_logits)


def interpolate(model: nn.Module, before_state: dict[str, Tensor], alpha: float) -> nn.Module:
    """WiSE-FT: set ``model``'s weights to ``(1 - alpha) * before_state + alpha * its own`` in place, and return it.

    ``before_state`` is ``model.state_dict()`` copied before the fine-tune (e.g. the pretrained weights);
    the arithmetic is the trainer's (:func:`sweep.strategies.interp.interpolate_states`), so α = 0 gives the
    weights before exactly and α = 1 the fine-tune's."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"interpolation alpha must be in [0, 1], got {alpha!r}")
    model.load_state_dict(interpolate_states(before_state, model.state_dict(), float(alpha)))
    return model


def add_adapters(model: nn.Module, rank: int, alpha: float, layers: str = "body", *, seed: int = 0
                 ) -> list[nn.Parameter]:
    """Freeze ``model``'s base and give each Linear and Conv2d of ``layers`` a fresh LoRA adapter, as the
    ``adapter`` strategy does from task 2 on: the layer then computes ``W x + (alpha/rank)·B A x``, B zero
    (so the model computes exactly what it did), A Kaiming-uniform drawn with ``seed``.

    Args:
        model: trained in place; its parameters and state_dict keep their names (adapters are not in them).
        rank: r, at least 1.
        alpha: α > 0; the low-rank term is scaled by α/r.
        layers: ``all``, ``body`` (every layer of :func:`layer_names` but the head) or comma-separated
            indices (negative from the end) or names of :func:`layer_names`.

    Returns:
        What trains, for your optimizer: every adapter's A and B, and the head's parameters unless the head
        has an adapter (every other parameter is frozen, BatchNorm statistics held, as :func:`freeze_layers`).

    Raises:
        ConfigError: a bad rank, α or layer, or a layer of ``model`` that already has an adapter (a second call
            would discard the first adapter's training: :func:`merge_adapters` first).
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"adapter rank must be an integer >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ConfigError(f"adapter alpha must be a number > 0, got {alpha!r}")
    chosen = resolve_layers(model, layers)
    for name, module in adapted_modules(model).items():  # a new adapter would replace it: its training lost
        if lora_of(module) is not None:
            raise ConfigError(f"layer {name!r} already has an adapter; call merge_adapters first")
    head = len(named_layers(model)) - 1
    trainable = freeze_layers(model, head)  # the head's parameters
    if head in chosen:
        for p in trainable:
            p.requires_grad_(False)
        trainable = []
    loras: dict[str, LoRA] = add_loras(layer_modules(model, chosen), rank, float(alpha),
                                       torch.Generator().manual_seed(seed))
    return trainable + [p for lora in loras.values() for p in lora.parameters()]


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight (``W ← W + (α/r)·B A``), remove the adapters and unfreeze
    every layer: one plain model again, which computes what the adapted one did (to float rounding) and
    saves as any checkpoint. Returns ``model``."""
    merge(model)
    freeze_layers(model, 0)
    return model


def layer_names(model: nn.Module) -> list[str]:
    """The layers ``frozen_layers`` and ``lr_decay`` count, in order (e.g. stem, layer1..layer4, head)."""
    return [name for name, _ in named_layers(model)]


def param_groups(model: nn.Module, lr: float, lr_decay: float = 1.0, frozen_layers: int = 0) -> list[dict[str, Any]]:
    """Optimizer groups for discriminative learning rates: layer k of L at lr·decay^(L−1−k).

    Frozen layers (the first ``frozen_layers``; see :func:`freeze_layers`) are left out.
    """
    layers = named_layers(model)
    groups = []
    for k, (_, layer) in enumerate(layers):
        params = [p for p in layer.parameters() if p.requires_grad] if k >= frozen_layers else []
        if params:
            groups.append({"params": params, "lr": lr * lr_decay ** (len(layers) - 1 - k)})
    return groups


def replay_indices(y: Tensor, size: int, *, seed: int = 0) -> Tensor:
    """Indices of a class-balanced replay buffer of ``size`` samples of labels ``y`` (max-min fair)."""
    generator = torch.Generator().manual_seed(seed)
    classes = sorted(y.unique().tolist())
    members = [(y == c).nonzero().flatten().cpu() for c in classes]
    members = [m[torch.randperm(len(m), generator=generator)] for m in members]
    quotas = balanced_quotas([len(m) for m in members], size)
    return torch.cat([m[:q] for m, q in zip(members, quotas)]) if members else torch.empty(0, dtype=torch.long)


@dataclass(frozen=True)
class Chosen:
    """A ``chosen.yaml``: the training config ``sweep choose`` picked, and the evidence for it."""

    config: TrainConfig
    evidence: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def components(self) -> tuple[str, ...]:
        """The strategy's parts, e.g. ("ewc", "freeze")."""
        return parse_strategy(self.config.strategy)

    @property
    def finetune_lr(self) -> float:
        """The learning rate of the fine-tune (tasks 2..T in the sweep)."""
        return self.config.finetune_lr if self.config.finetune_lr is not None else self.config.lr

    def fisher(self, model: nn.Module, x: Tensor, y: Tensor, *, classes: Sequence[int] | None = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The Fisher with the chosen estimator and sample count, on your source data, on the config's
        ``threads`` (default 1). A setting chosen with ``class_outputs: seen`` (class-incremental) needs
        ``classes``, the classes seen so far: the sweep's Fisher ran over those outputs only."""
        c = self.config
        if classes is None and c.scenario == "class" and c.class_outputs == "seen":
            raise ConfigError("this setting was chosen with class_outputs seen: its Fisher covers the classes seen so "
                              "far only; pass classes=[...] (the classes your model has learned)")
        return compute_fisher(model, x, y, estimator=c.fisher, classes=classes, samples=c.fisher_samples,
                              batch_size=c.batch_size, generator=generator, threads=c.threads)

    def ewc(self, model: nn.Module, fisher: dict[str, Tensor]) -> EWCPenalty:
        c = self.config
        return EWCPenalty(model, fisher, c.ewc_lambda, mode=c.ewc_mode, gamma=c.ewc_gamma)

    def l2sp(self, model: nn.Module) -> L2SPPenalty:
        return L2SPPenalty(model, self.config.l2sp_lambda)

    def distillation(self, teacher: nn.Module, *, classes: Sequence[int] | None = None,
                     new_classes: Sequence[int] | None = None, per_task: Sequence[Sequence[int]] | None = None,
                     task: int | None = None) -> DistillationLoss:
        """LwF's output distillation with the chosen T, α and ``distill_variant`` (:class:`DistillationLoss` says
        what ``classes``, ``new_classes`` and ``per_task`` mean). With ``distill_weighting: task-count`` give the
        1-based ``task`` being learned: α is then 1/task. A setting that also distils intermediate features
        (``feature_distill_weight`` > 0) is refused: this loss has no feature term, and dropping it silently
        would train something other than what the sweep measured."""
        if self.config.feature_distill_weight > 0:
            raise ConfigError(f"the chosen setting distils features too (feature_distill_weight="
                              f"{self.config.feature_distill_weight:g}, layers {self.config.feature_distill_layers}); "
                              "the production API has output distillation only: train with `sweep train --config` "
                              "or choose a setting with feature_distill_weight 0")
        c = self.config
        alpha = c.distill_alpha
        if c.distill_weighting == "task-count":
            if not isinstance(task, int) or isinstance(task, bool) or task < 2:
                raise ConfigError(f"the chosen setting weighs distillation by the task count (distill_weighting "
                                  f"task-count): pass task=, the 1-based task being learned (>= 2), got {task!r}")
            alpha = 1.0 / task
        return DistillationLoss(teacher, c.distill_temperature, alpha, classes=classes, variant=c.distill_variant,
                                new_classes=new_classes, per_task=per_task)

    @property
    def interp_alpha(self) -> float:
        """The α to interpolate the fine-tune with (the last task's, for a two-task fine-tune); 1.0 (the
        fine-tune's weights, unchanged) when the chosen strategy does not interpolate."""
        c = self.config
        if "interp" not in self.components:
            return 1.0
        return c.interp_last_alpha if c.interp_last_alpha is not None else c.interp_alpha

    def interpolate(self, model: nn.Module, before_state: dict[str, Tensor]) -> nn.Module:
        """:func:`interpolate` with the chosen α."""
        return interpolate(model, before_state, self.interp_alpha)

    def freeze(self, model: nn.Module) -> list[nn.Parameter]:
        """Freeze the chosen number of leading layers; returns the parameters left to train."""
        return freeze_layers(model, self.config.frozen_layers)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The chosen optimizer for the fine-tune: its lr, weight decay and lr_decay groups, frozen layers out."""
        c = self.config
        groups = param_groups(model, self.finetune_lr, c.lr_decay, c.frozen_layers)
        return make_optimizer(c.optimizer, groups, self.finetune_lr, c.weight_decay)

    def add_adapters(self, model: nn.Module, *, seed: int = 0) -> list[nn.Parameter]:
        """:func:`add_adapters` with the chosen rank, α and layers (the ``adapter`` strategy's, merge mode);
        returns the parameters to give :func:`make_optimizer`. After the fine-tune, :func:`merge_adapters`."""
        c = self.config
        if "adapter" not in self.components or c.adapter_rank == 0:
            raise ConfigError(f"the chosen strategy {c.strategy!r} has no adapters (adapter_rank "
                              f"{c.adapter_rank}); fine-tune with optimizer() instead")
        if c.adapter_mode != "merge":
            raise ConfigError(f"the chosen setting uses adapter_mode {c.adapter_mode!r} (an adapter and a head per "
                              "task); only adapter_mode 'merge' deploys through the API: train it with "
                              "`sweep train --config`, or choose a merge setting")
        return add_adapters(model, c.adapter_rank, c.adapter_alpha, c.adapter_layers, seed=seed)

    @property
    def lp_epochs(self) -> int:
        """LP-FT's probing epochs (0 unless the strategy has ``lpft``): train only :func:`head_parameters` first,
        with an optimizer of its own, then fine-tune with :meth:`optimizer`."""
        return self.config.lp_epochs if "lpft" in self.components else 0

    def lr_factor(self, steps_per_epoch: int) -> Callable[[int], float]:
        """``step -> factor`` of the fine-tune's learning rate (``warmup_epochs`` then ``lr_schedule``), step
        counted from the fine-tune's first, the probe's included; multiply each group's lr by it before each step,
        e.g. ``torch.optim.lr_scheduler.LambdaLR(optimizer, chosen.lr_factor(n))`` stepped after each step."""
        c = self.config
        total = steps_per_epoch * (c.epochs + self.lp_epochs)
        return task_schedule(c.warmup_epochs, c.lr_schedule, steps_per_epoch, total) or (lambda step: 1.0)


def from_chosen(path: str | os.PathLike[str]) -> Chosen:
    """Read ``sweep choose``'s YAML (or any flat config YAML) into a :class:`Chosen`.

    Raises:
        ConfigError: the file is missing, not YAML, or its config is invalid; one line.
    """
    config = TrainConfig.from_yaml(path)
    document = read_yaml(Path(path).expanduser(), "config")  # as from_yaml read it: bounded, no key twice
    evidence = document.get("evidence") if isinstance(document, dict) else None
    return Chosen(config, dict(evidence) if isinstance(evidence, dict) else {}, str(path))
