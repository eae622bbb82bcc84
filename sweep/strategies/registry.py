"""Strategy registry and composition (``ewc+replay+freeze``).

One file per strategy; this explicit dict is the only place a new one is registered. The
trainer does not change when a strategy is added.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from torch import Tensor, nn

from sweep.config import TrainConfig
from sweep.errors import ConfigError, did_you_mean
from sweep.hparams import strategy_fields
from sweep.strategies.adapter import Adapter
from sweep.strategies.base import (
    NO_FEATURES,
    WHOLE_TASK,
    Auxiliary,
    Batch,
    Features,
    Phase,
    Strategy,
    TaskContext,
    TrainingData,
)
from sweep.strategies.distill import Distill
from sweep.strategies.ewc import EWC
from sweep.strategies.freeze import Freeze
from sweep.strategies.genreplay import GenReplay
from sweep.strategies.interp import Interp
from sweep.strategies.joint import Joint
from sweep.strategies.l2sp import L2SP
from sweep.strategies.lpft import LPFT
from sweep.strategies.mas import MAS
from sweep.strategies.naive import Naive
from sweep.strategies.replay import Replay
from sweep.strategies.si import SI

# name -> class with ``from_config(config) -> Strategy``; filled explicitly, never by scanning modules
STRATEGIES: dict[str, type[Strategy]] = {
    "naive": Naive,
    "joint": Joint,
    "ewc": EWC,
    "distill": Distill,
    "replay": Replay,
    "l2sp": L2SP,
    "freeze": Freeze,
    "interp": Interp,
    "lpft": LPFT,
    "si": SI,
    "mas": MAS,
    "adapter": Adapter,
    "genreplay": GenReplay,
}

# references: they stand alone, as the floor and the ceiling every study is compared with
STANDALONE = ("naive", "joint")

_T = TypeVar("_T")


class Composite(Strategy):
    """Several strategies at once: hooks run in order, penalties add, freezing takes the max, learning-rate
    factors multiply, trainable parameters pass through each part in turn, feature layers are the union.
    Phases, the evaluation model and the auxiliary model each come from at most one part."""

    name = "composite"

    def __init__(self, parts: list[Strategy]) -> None:
        self.parts = parts
        # Strategy.name is a class's registry key; a composite's is its parts', so it is set per instance
        self.name = "+".join(p.name for p in parts)  # type: ignore[misc]
        self.prefix_cacheable = all(p.prefix_cacheable for p in parts)  # type: ignore[misc]

    def before_task(self, ctx: TaskContext) -> None:
        for part in self.parts:
            part.before_task(ctx)

    def training_data(self, ctx: TaskContext) -> TrainingData | None:
        for part in self.parts:
            data = part.training_data(ctx)
            if data is not None:
                return data
        return None

    def adjust_batch(self, ctx: TaskContext, batch: Batch) -> Batch:
        for part in self.parts:
            batch = part.adjust_batch(ctx, batch)
        return batch

    def frozen_layers(self, task_index: int) -> int:
        return max(p.frozen_layers(task_index) for p in self.parts)

    def trainable_parameters(self, ctx: TaskContext, params: list[nn.Parameter]) -> list[nn.Parameter]:
        for part in self.parts:
            params = part.trainable_parameters(ctx, params)
        return params

    def phases(self, task_index: int) -> Sequence[Phase]:
        defined = [(p.name, phases) for p in self.parts if (phases := tuple(p.phases(task_index))) != WHOLE_TASK]
        return self._at_most_one("phases", defined, WHOLE_TASK)

    def lr_factor(self, task_index: int, step: int, steps_in_task: int) -> float:
        factor = 1.0
        for part in self.parts:
            factor *= part.lr_factor(task_index, step, steps_in_task)
        return factor

    def feature_layers(self, task_index: int) -> tuple[str | int, ...]:
        return tuple(dict.fromkeys(layer for part in self.parts for layer in part.feature_layers(task_index)))

    def ce_weight(self, task_index: int) -> float:
        weight = 1.0
        for part in self.parts:
            weight *= part.ce_weight(task_index)
        return weight

    def penalty(
        self, ctx: TaskContext, batch: Batch, raw_logits: Tensor, features: Features = NO_FEATURES
    ) -> Tensor | None:
        total = None
        for part in self.parts:
            term = part.penalty(ctx, batch, raw_logits, features)
            if term is not None:
                total = term if total is None else total + term
        return total

    def penalty_grad(self, ctx: TaskContext) -> None:
        for part in self.parts:
            part.penalty_grad(ctx)

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        for part in self.parts:
            part.after_step(ctx, batch)

    def auxiliary(self, ctx: TaskContext) -> Auxiliary | None:
        defined: list[tuple[str, Auxiliary | None]] = [
            (p.name, aux) for p in self.parts if (aux := p.auxiliary(ctx)) is not None
        ]
        return self._at_most_one("an auxiliary model", defined, None)

    def eval_model(self, ctx: TaskContext, task_index: int) -> nn.Module:
        defined = [(p.name, m) for p in self.parts if (m := p.eval_model(ctx, task_index)) is not ctx.model]
        return self._at_most_one("the evaluation model", defined, ctx.model)

    def _at_most_one(self, what: str, defined: list[tuple[str, _T]], default: _T) -> _T:
        if len(defined) > 1:
            names = " and ".join(name for name, _ in defined)
            raise ConfigError(f"strategy {self.name!r}: {names} each define {what}; at most one component may")
        return defined[0][1] if defined else default

    def after_task(self, ctx: TaskContext) -> None:
        for part in sorted(self.parts, key=lambda part: part.after_task_order):  # stable: otherwise in order
            part.after_task(ctx)

    def variants(self, ctx: TaskContext) -> Iterator[tuple[dict[str, Any], dict[str, Tensor]]]:
        defined: list[tuple[str, Strategy | None]] = [
            (p.name, p) for p in self.parts if type(p).variants is not Strategy.variants]
        part = self._at_most_one("free variants of the final model", defined, None)
        return part.variants(ctx) if part is not None else iter(())

    def stats(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for part in self.parts:
            merged.update(part.stats())
        return merged

    def state_dict(self) -> dict[str, Tensor | float | int]:
        return {f"{part.name}.{key}": value for part in self.parts for key, value in part.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        for part in self.parts:
            prefix = f"{part.name}."
            part.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})


def parse_strategy(spec: str) -> tuple[str, ...]:
    """``"ewc+replay"`` -> ``("ewc", "replay")``, refusing unknown, repeated or meaningless combinations."""
    names = tuple(part.strip() for part in spec.split("+"))
    for name in names:
        if name not in STRATEGIES:
            raise ConfigError(f"strategy {name!r} is unknown; allowed: {', '.join(STRATEGIES)} (combine with '+')"
                              f"{did_you_mean(name, STRATEGIES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"strategy {spec!r} names a component twice")
    if len(names) > 1:
        for name in STANDALONE:
            if name in names:
                raise ConfigError(f"strategy {spec!r}: {name!r} is a reference and cannot be combined")
    if "adapter" in names:
        for name in ADAPTER_BLIND:
            if name in names:
                raise ConfigError(f"strategy {spec!r}: {name!r} penalises the model's own parameters, which 'adapter' "
                                  "freezes from task 2 on (the adapters sit outside them), so it would do nothing; "
                                  "'adapter+ewc' is the regulariser that acts through adapters")
    return names


# penalties on model.named_parameters() alone: with adapters they see a frozen base and never the adapters
ADAPTER_BLIND = ("si", "mas", "l2sp")


def check_settings(names: Sequence[str], adapter_mode: str, early_stop_patience: int,
                   labels: Mapping[str, str] | None = None) -> None:
    """Refuse settings that silently break a component of ``names``; ``labels`` says how each value was given
    (e.g. ``params.adapter_mode``), named in the message after the value."""
    def given(name: str) -> str:
        return f" ({labels[name]})" if labels and name in labels else ""

    spec = "+".join(names)
    if "adapter" in names and "ewc" in names and adapter_mode == "per-task":
        raise ConfigError(f"strategy {spec!r} with adapter_mode 'per-task'{given('adapter_mode')}: EWC would pull "
                          "each task's fresh adapter toward the previous task's, which protects nothing (each task "
                          "is evaluated with its own adapter); allowed with ewc: adapter_mode 'merge'")
    if "adapter" in names and early_stop_patience > 0:
        raise ConfigError(f"strategy {spec!r} with early_stop_patience {early_stop_patience}"
                          f"{given('early_stop_patience')}: early stopping restores the model's state_dict, which "
                          "holds no adapter, so the restored model would mix epochs; allowed with adapter: "
                          "early_stop_patience 0")


def strategy_params(spec: str) -> tuple[str, ...]:
    """TrainConfig fields a (composite) strategy reads (its components' blocks in sweep.strategies.specs);
    the trainer's own knobs are not listed."""
    return tuple(p for name in parse_strategy(spec) for p in strategy_fields(name))


def strategy_components(config: TrainConfig) -> tuple[str, ...]:
    """The components ``build_strategy`` builds: the named ones, plus freeze when layers are frozen."""
    names = parse_strategy(config.strategy)
    check_settings(names, config.adapter_mode, config.early_stop_patience)
    if config.frozen_layers > 0 and "freeze" not in names:
        if "joint" in names:
            raise ConfigError("strategy 'joint' is a reference and cannot freeze layers (frozen_layers must be 0)")
        names = (*names, "freeze")  # frozen-layer count is a knob of every strategy
    return names


def check_frozen_layers(frozen_layers: int, num_layers: int, where: str = "frozen_layers") -> None:
    """Refuse freezing every layer of a ``num_layers``-layer model (nothing would learn from task 2 on);
    ``where`` names the value: the config field, or a search space's key."""
    if frozen_layers >= num_layers:
        raise ConfigError(f"{where}={frozen_layers} would freeze every layer of a {num_layers}-layer model; "
                          f"allowed: 0 to {num_layers - 1}")


def build_strategy(config: TrainConfig, num_layers: int) -> Strategy:
    """The strategy for ``config``; ``num_layers`` bounds ``frozen_layers``."""
    check_frozen_layers(config.frozen_layers, num_layers)
    parts = [STRATEGIES[name].from_config(config) for name in strategy_components(config)]
    return parts[0] if len(parts) == 1 else Composite(parts)
