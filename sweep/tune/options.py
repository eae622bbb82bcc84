"""What a sweep is asked to do: its options, checked before anything starts, and every trial's fixed config."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sweep.config import TrainConfig
from sweep.errors import ConfigError
from sweep.hparams import BY_NAME, DEFAULTS, HYPERPARAMETER
from sweep.tune.ray_session import address_host_port
from sweep.tune.search_space import SearchSpace

SAMPLERS = ("tpe", "nsga2")
OBJECTIVE_MODES = ("pareto", "constrained")


@dataclass(frozen=True)
class SweepOptions:
    strategy: str = "ewc"
    study: str | None = None  # default: <strategy>-<benchmark>-<scenario>
    results_dir: str = "results"
    space_file: str | None = None  # default: search_spaces/<strategy>.yaml
    trials: int = 16  # search trials, not counting the naive and joint references
    seeds: int = 3  # every trial is the mean over these seeds (0..seeds-1)
    # TrainConfig fields set for the whole sweep (the table's rows say what each allows)
    benchmark: str = DEFAULTS["benchmark"]
    scenario: str = DEFAULTS["scenario"]  # task: the trade-off of EWC, LwF and L2-SP shows in this form
    num_tasks: int | None = None
    data_root: str | None = None
    model: str = DEFAULTS["model"]  # mlp, cnn, resnet18/34/50, or a user's module:function
    pretrained: str | None = None  # state_dict after the source task: task 1 is evaluated from it, not trained
    init_weights: str | None = None  # state_dict every trial starts task 1 from
    epochs: int | None = None  # overrides the space's fixed epochs
    sampler: str = "tpe"
    objective: str = "pareto"  # pareto: (stability, plasticity); constrained: max stability s.t. plasticity
    min_plasticity: float = 0.95  # constrained mode: plasticity >= this fraction of naive's
    sampler_seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractional: 0.25 puts four trials on one GPU
    max_concurrent: int | None = None  # None: as many as the resources allow
    address: str | None = None  # an existing Ray cluster; None: $RAY_ADDRESS, else start one locally
    resume: bool = False
    references: bool = True  # run naive and joint on the same seeds
    dashboard: bool = False  # Ray's dashboard, on 127.0.0.1 only
    quiet: bool = False
    prefix_cache: bool = True  # share the state after task 1 between trials that agree on it
    # more TrainConfig fields every trial shares (`sweep run --hidden 400,400`, the API); like ``epochs``,
    # they override the space's fixed values
    extra: dict[str, Any] = field(default_factory=dict)


# SweepOptions' fields that are TrainConfig fields too (strategy is the space's, checked against it)
CONFIG_OPTIONS = tuple(f.name for f in fields(SweepOptions) if f.name in BY_NAME and f.name != "strategy")
SET_ELSEWHERE = {"seed": "--seeds", "strategy": "--strategy"}  # never a run-level config value


def run_level_config(o: SweepOptions) -> dict[str, Any]:
    """The TrainConfig values given for the whole sweep (None: not given), each checked against its row."""
    values = {name: getattr(o, name) for name in CONFIG_OPTIONS if getattr(o, name) is not None}
    for name, value in o.extra.items():
        if name not in BY_NAME:
            raise ConfigError(f"{name!r} is not a config key; allowed: {', '.join(BY_NAME)}")
        if name in SET_ELSEWHERE:
            raise ConfigError(f"{name} is set by {SET_ELSEWHERE[name]}, not as a fixed config value")
        values[name] = value
    return {name: BY_NAME[name].check(os.fspath(value) if isinstance(value, os.PathLike) else value,
                                      BY_NAME[name].flag) for name, value in values.items()}


def validate_options(o: SweepOptions) -> None:
    if o.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {o.trials}")
    if o.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {o.seeds}")
    if o.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {o.sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
    if o.objective not in OBJECTIVE_MODES:
        raise ConfigError(f"--objective {o.objective!r} is unknown; allowed: {', '.join(OBJECTIVE_MODES)}")
    if not 0.0 < o.min_plasticity <= 1.0:
        raise ConfigError(f"--min-plasticity must be in (0, 1], got {o.min_plasticity}")
    if o.cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial must be > 0, got {o.cpus_per_trial}")
    if o.gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial must be >= 0, got {o.gpus_per_trial}")
    if o.max_concurrent is not None and o.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {o.max_concurrent}")
    run_level_config(o)  # --epochs 0, --scenario online, --hidden 0: named as the flag
    if o.study is not None and (not o.study or "/" in o.study or o.study.startswith(".")):
        raise ConfigError(f"--study {o.study!r} must be a plain folder name")
    if o.address:
        address_host_port(o.address)  # its form now; whether it answers once the study is locked


def base_config(o: SweepOptions, space: SearchSpace) -> dict[str, Any]:
    """The fixed part of every trial's config, validated once here rather than in every trial.

    The space's fixed values, then the run's own (``--epochs``, ``--hidden``, ...): the run's win.
    """
    searched = {p.name for p in space.params}
    for name in {*o.extra, *(["epochs"] if o.epochs is not None else [])}:
        row = BY_NAME.get(name)
        if row is None or row.per_sweep:
            continue  # an unknown key is named by TrainConfig below; settings of the sweep are its own
        if name in searched:
            raise ConfigError(f"{row.flag} fixes {name}, which {space.path} searches; pass one or the other")
        if row.kind == HYPERPARAMETER and name not in space.allowed_params():
            raise ConfigError(f"{row.flag}: {name} is not a parameter of strategy {space.strategy!r}; "
                              f"allowed: {', '.join(space.allowed_params())}")
    values: dict[str, Any] = {
        "benchmark": o.benchmark, "scenario": o.scenario, "num_tasks": o.num_tasks, "model": o.model,
        # absolute: trials run elsewhere
        "data_root": str(Path(o.data_root).expanduser().resolve()) if o.data_root else None,
        "strategy": space.strategy, **space.fixed, **o.extra,
    }
    if o.epochs is not None:
        values["epochs"] = o.epochs
    for key in ("pretrained", "init_weights"):  # absolute: trials run in folders of their own
        path = getattr(o, key) or values.get(key)
        if path:
            values[key] = str(Path(path).expanduser().resolve())
    TrainConfig.from_mapping(values, source=space.path)
    return values
