"""Training configuration: one frozen dataclass with typed defaults, validated once at the edge.

A config comes from CLI flags, a YAML file (``chosen.yaml`` from ``sweep choose``) or a Ray
Tune trial; all three go through :meth:`TrainConfig.from_mapping`, so an unknown key, a wrong
type or an out-of-range value is refused the same way everywhere, with one line that names it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweep.errors import ConfigError

# class: one head, no task id at test time; task: logits restricted to the task's classes; domain: one
# label space shared by every task (see DESIGN.md)
SCENARIOS = ("class", "task", "domain")
FISHER_ESTIMATORS = ("exact", "sampled", "empirical", "batched")
EWC_MODES = ("separate", "online")
OPTIMIZERS = ("adam", "sgd")
MODELS = ("mlp", "cnn")
# torchvision architectures built with weights=None; frozen_layers counts stem, layer1..layer4, head
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50")
# "package.module:function": a user's builder, imported when the model or benchmark is built
ENTRY_POINT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
# knobs every strategy has: the trainer's own, not a strategy's
GENERAL_PARAMS = ("lr", "finetune_lr", "epochs", "batch_size", "optimizer", "weight_decay", "frozen_layers",
                  "lr_decay", "early_stop_patience")
MAX_SEED = 2**32 - 1  # as build_benchmark's split_seed; beyond 2**64 - 1 torch raises a bare ValueError
MAX_HIDDEN = 65536  # a sanity bound: far above any MNIST-scale MLP, far below an allocation failure


@dataclass(frozen=True)
class TrainConfig:
    # --- what is learned
    benchmark: str = "split-digits"  # offline default; split-mnist etc. need a data root
    scenario: str = "task"  # task-incremental: where EWC/LwF/L2-SP trade-offs are visible
    num_tasks: int | None = None  # None: the benchmark's default (2 for the split benchmarks)
    class_order: tuple[int, ...] | None = None  # None: classes in natural order
    data_root: str | None = None  # None: $SWEEP_DATA_ROOT, else ./data
    val_fraction: float = 0.1  # share of each task's training data held out; the search optimises on it
    # --- model
    model: str = "mlp"  # mlp: the classic Split-MNIST 784-256-256-10 network; cnn, resnet18, or module:function
    hidden: tuple[int, ...] = (256, 256)  # MLP hidden sizes
    init_weights: str | None = None  # state_dict to start task 1 from (e.g. ImageNet); mismatched shapes keep init
    pretrained: str | None = None  # state_dict after the source task: task 1 is then evaluated, not trained
    # --- optimisation (the trainer owns the step)
    optimizer: str = "adam"
    lr: float = 1e-3  # Adam 1e-3 is the standard Split-MNIST setting
    finetune_lr: float | None = None  # lr for tasks 2..T; None: lr. A lower one is itself a mitigation
    lr_decay: float = 1.0  # tasks 2..T: layer k of L learns at lr·decay^(L-1-k), early layers move less; 1: off
    early_stop_patience: int = 0  # tasks 2..T: stop after this many epochs without a better val accuracy; 0: off
    epochs: int = 1  # per task; 1 is enough to learn a Split-MNIST task to >95%
    batch_size: int = 64
    weight_decay: float = 0.0  # never applied to frozen layers (they leave the optimizer)
    seed: int = 0
    # --- mitigation
    strategy: str = "naive"  # "+"-joined components, e.g. "ewc+replay+freeze"
    ewc_lambda: float = 100.0  # only meaningful next to the Fisher's scale (reported with results)
    fisher: str = "exact"  # exact | sampled | empirical | batched
    fisher_samples: int | None = None  # None: every training sample of the task
    ewc_mode: str = "separate"  # separate: one (F, θ*) per past task; online: F <- γF + F_new
    ewc_gamma: float = 1.0  # online EWC decay; 1.0 keeps all past Fisher mass
    distill_temperature: float = 2.0  # LwF's usual T
    distill_alpha: float = 0.5  # weight of the new-task cross-entropy; 1 - α goes to distillation
    replay_size: int = 500  # M samples in the class-balanced buffer (memory only)
    replay_ratio: float = 0.5  # share of each training batch drawn from the buffer
    l2sp_lambda: float = 1.0
    frozen_layers: int = 0  # first k parametrised layers frozen from task 2 on (any strategy)

    def __post_init__(self) -> None:
        # types first (the Python API gets the same checks as YAML), then ranges
        for name, hint in _field_types().items():
            object.__setattr__(self, name, _coerce(name, getattr(self, name), hint))
        _validate(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a flat mapping, checking keys and types; ``source`` names the file in errors."""
        allowed = cls.field_names()
        for key in values:
            if key not in allowed:
                raise ConfigError(f"{source}: unknown key {key!r}; allowed: {', '.join(allowed)}")
        try:
            return cls(**dict(values))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a YAML file: either a flat mapping or ``sweep choose``'s ``{config: ..., evidence: ...}``."""
        path = Path(path)
        data = read_yaml(path, "config")
        if isinstance(data, dict) and "config" in data:
            data = data["config"]
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
        return cls.from_mapping(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def read_yaml(path: Path, what: str) -> Any:
    """``yaml.safe_load`` of a file, every failure a one-line ConfigError naming the file."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML file (not UTF-8 text)") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a {what} file (nested too deeply to read)") from None


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a value against its field's type; lists become tuples, ints are accepted as floats."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{key} may not be null")
    for option in options:
        base = typing.get_origin(option) or option
        if base is tuple and isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
            return tuple(int(v) for v in value)
        if base is float and (_is_int(value) or isinstance(value, float)):
            return float(value)
        if base is int and _is_int(value):
            return int(value)
        if base is str and isinstance(value, str):
            return value
    hint_name = " or ".join(
        "list of int" if (typing.get_origin(o) or o) is tuple else getattr(o, "__name__", str(o))
        for o in options
        if o is not type(None)
    )
    extra = " (YAML reads 1e-4 as a string: write 1.0e-4)" if isinstance(value, str) and _looks_numeric(value) else ""
    raise ConfigError(f"{key} must be {hint_name}, got {value!r}{extra}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate(c: TrainConfig) -> None:
    """Ranges that need no model or data; strategy composition is checked in sweep.strategies."""
    _check(c.scenario in SCENARIOS, f"scenario {c.scenario!r} is unknown; allowed: {', '.join(SCENARIOS)}")
    _check(
        c.model in MODELS or c.model in TORCHVISION_MODELS or ENTRY_POINT.match(c.model) is not None,
        f"model {c.model!r} is unknown; allowed: {', '.join(MODELS + TORCHVISION_MODELS)}, or module:function",
    )
    for name in ("init_weights", "pretrained"):
        path = getattr(c, name)
        _check(path is None or path.strip() != "", f"{name} must be a path to a state_dict file, got {path!r}")
    _check(
        c.init_weights is None or c.pretrained is None,
        "init_weights and pretrained both set: pretrained replaces every weight before task 1; pass one",
    )
    _check(c.optimizer in OPTIMIZERS, f"optimizer {c.optimizer!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
    _check(
        c.num_tasks is None or c.num_tasks >= 2,
        f"num_tasks must be >= 2 (forgetting needs two tasks), got {c.num_tasks}",
    )
    _check(0.0 < c.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {c.val_fraction}")
    _check(
        len(c.hidden) >= 1 and all(1 <= h <= MAX_HIDDEN for h in c.hidden),
        f"hidden sizes must be in 1..{MAX_HIDDEN}, got {list(c.hidden)}",  # beyond: torch's allocation traceback
    )
    _check(math.isfinite(c.lr) and c.lr > 0, f"lr must be > 0, got {c.lr}")
    _check(
        c.finetune_lr is None or (math.isfinite(c.finetune_lr) and c.finetune_lr > 0),
        f"finetune_lr must be > 0, got {c.finetune_lr}",
    )
    _check(math.isfinite(c.lr_decay) and 0 < c.lr_decay <= 1, f"lr_decay must be in (0, 1], got {c.lr_decay}")
    _check(c.early_stop_patience >= 0, f"early_stop_patience must be >= 0, got {c.early_stop_patience}")
    _check(c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}")
    _check(c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}")
    _check(math.isfinite(c.weight_decay) and c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}")
    _check(0 <= c.seed <= MAX_SEED, f"seed must be in 0..{MAX_SEED}, got {c.seed}")
    _check(math.isfinite(c.ewc_lambda) and c.ewc_lambda >= 0, f"ewc_lambda must be >= 0, got {c.ewc_lambda}")
    _check(c.fisher in FISHER_ESTIMATORS, f"fisher {c.fisher!r} is unknown; allowed: {', '.join(FISHER_ESTIMATORS)}")
    _check(c.fisher_samples is None or c.fisher_samples >= 1, f"fisher_samples must be >= 1, got {c.fisher_samples}")
    _check(c.ewc_mode in EWC_MODES, f"ewc_mode {c.ewc_mode!r} is unknown; allowed: {', '.join(EWC_MODES)}")
    _check(0.0 <= c.ewc_gamma <= 1.0, f"ewc_gamma must be in [0, 1], got {c.ewc_gamma}")
    _check(
        math.isfinite(c.distill_temperature) and c.distill_temperature > 0,
        f"distill_temperature must be > 0, got {c.distill_temperature}",
    )
    _check(0.0 <= c.distill_alpha <= 1.0, f"distill_alpha must be in [0, 1], got {c.distill_alpha}")
    _check(c.replay_size >= 0, f"replay_size must be >= 0, got {c.replay_size}")
    _check(0.0 <= c.replay_ratio < 1.0, f"replay_ratio must be in [0, 1), got {c.replay_ratio}")
    _check(math.isfinite(c.l2sp_lambda) and c.l2sp_lambda >= 0, f"l2sp_lambda must be >= 0, got {c.l2sp_lambda}")
    _check(c.frozen_layers >= 0, f"frozen_layers must be >= 0, got {c.frozen_layers}")
    if c.class_order is not None:
        _check(len(c.class_order) >= 2, f"class_order must list every class, got {list(c.class_order)}")
