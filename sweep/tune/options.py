"""What a sweep is asked to do: its options, checked before anything starts, and every trial's fixed config."""

from __future__ import annotations

import math
import os
import re
import unicodedata
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sweep.config import TrainConfig
from sweep.errors import ConfigError, did_you_mean
from sweep.hparams import BY_NAME, DEFAULTS, HYPERPARAMETER, MAX_SEED
from sweep.reading import check_regular
from sweep.strategies.registry import parse_strategy
from sweep.tune.ray_session import MAX_NICENESS, address_host_port, cluster_address
from sweep.tune.search_space import SearchSpace, check_active, check_space_settings
from sweep.tune.trackers import trackers

SAMPLERS = ("tpe", "nsga2", "random")  # sweep.tune.searcher.build_sampler builds each
OBJECTIVE_MODES = ("pareto", "constrained")
# when hyperparameters are selected (Lee et al. 2024): end: on the whole sequence's validation data;
# first-tasks K: on the first K tasks' only, what a practitioner has when task K+1 arrives
PROTOCOLS = ("end", "first-tasks")
MAX_SEEDS = 1000  # every trial trains once per seed; a thousand is already weeks of compute
MAX_TRIALS = 1_000_000
MIN_RESOURCE = 1e-4  # Ray counts CPUs and GPUs in steps of 0.0001: less is no share at all
MAX_ETA = 100.0  # at eta 100 only the front of a rung goes on
MAX_GRACE = 100_000  # epochs
MAX_NOISE = 10.0  # stds over seeds: beyond a few, nothing at a rung is ever stopped
MAX_MIN_SHARE = 0.5  # of a rung's hypervolume: a front trial adding half of it is half the front
MAX_STUDY_NAME = 128  # characters; a folder name may hold 255 bytes on most filesystems


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
    # the selection protocol: "end", or "first-tasks" with protocol_tasks = K (2 <= K < the sequence's tasks):
    # every trial of the study then trains and is judged on the first K tasks only
    protocol: str = "end"
    protocol_tasks: int | None = None
    # stop trials dominated at a rung (sweep.tune.pruning): the top 1/prune_eta of the trials at a rung go on,
    # none is stopped before prune_grace epochs past task 1; its values count prune_noise stds over seeds better
    # when it is judged on the rung's front; with the naive reference, a trial retaining no more than naive
    # does at the end stops, and a front trial goes on by the front only if it adds prune_min_share of the
    # rung's hypervolume
    prune: bool = False
    prune_eta: float = 3.0
    prune_grace: int = 1
    prune_noise: float = 0.5
    prune_min_share: float = 0.005
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractional: 0.25 puts four trials on one GPU
    max_concurrent: int | None = None  # None: as many as the resources allow
    address: str | None = None  # an existing Ray cluster; None: $RAY_ADDRESS, else start one locally
    resume: bool = False
    references: bool = True  # run naive and joint on the same seeds
    dashboard: bool = False  # Ray's dashboard, on 127.0.0.1 only
    # a local Ray's trial workers run at this niceness above the driver's (Ray's own default is 15); 0: the
    # priority of the command that started the sweep. A joined cluster (--address) keeps its own
    trial_niceness: int = 0
    quiet: bool = False
    prefix_cache: bool = True  # share the state after task 1 between trials that agree on it
    # a shared POSIX folder every node reaches, for the task-prefix cache and Tune's storage (None: the study folder)
    storage: str | None = None
    # experiment trackers that also get every trial's metrics after each task, in <study>/trackers/ (mlflow, wandb,
    # tensorboard; sweep.tune.trackers); not part of the study: a resume may log to others
    log: tuple[str, ...] = ()
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
    """Every option checked before anything starts: nothing is read but the checkpoints' file types, nothing
    written, no Ray started. Each problem is a one-line ConfigError naming the flag."""
    _check_int("--trials", o.trials, 1, MAX_TRIALS)
    _check_int("--seeds", o.seeds, 1, MAX_SEEDS)
    _check_int("--sampler-seed", o.sampler_seed, 0, MAX_SEED)  # numpy's RandomState, which Optuna seeds
    if o.max_concurrent is not None:
        _check_int("--max-concurrent", o.max_concurrent, 1, None)
    if o.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {o.sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}"
                          f"{did_you_mean(o.sampler, SAMPLERS)}")
    if o.objective not in OBJECTIVE_MODES:
        raise ConfigError(f"--objective {o.objective!r} is unknown; allowed: {', '.join(OBJECTIVE_MODES)}"
                          f"{did_you_mean(o.objective, OBJECTIVE_MODES)}")
    check_protocol(o.protocol, o.protocol_tasks)
    if not _number(o.prune_eta) or not 1.0 < o.prune_eta <= MAX_ETA:
        raise ConfigError(f"--prune-eta must be a number in (1, {MAX_ETA:g}] (the top 1/eta of a rung go on), "
                          f"got {o.prune_eta!r}")
    _check_int("--prune-grace", o.prune_grace, 1, MAX_GRACE)
    if not _number(o.prune_noise) or not 0.0 <= o.prune_noise <= MAX_NOISE:
        raise ConfigError(f"--prune-noise must be a number of stds over seeds in [0, {MAX_NOISE:g}], "
                          f"got {o.prune_noise!r}")
    if not _number(o.prune_min_share) or not 0.0 <= o.prune_min_share <= MAX_MIN_SHARE:
        raise ConfigError(f"--prune-min-share must be a share of a rung's hypervolume in [0, {MAX_MIN_SHARE:g}], "
                          f"got {o.prune_min_share!r}")
    if not o.prune and (o.prune_eta != SweepOptions.prune_eta or o.prune_grace != SweepOptions.prune_grace
                        or o.prune_noise != SweepOptions.prune_noise
                        or o.prune_min_share != SweepOptions.prune_min_share):
        raise ConfigError("--prune-eta, --prune-grace, --prune-noise and --prune-min-share set how --prune stops "
                          "trials; pass --prune as well")
    if not _number(o.min_plasticity) or not 0.0 < o.min_plasticity <= 1.0:
        raise ConfigError(f"--min-plasticity must be in (0, 1], got {o.min_plasticity}")
    _check_resource("--cpus-per-trial", o.cpus_per_trial, zero=False)
    _check_resource("--gpus-per-trial", o.gpus_per_trial, zero=True)
    _check_int("--trial-niceness", o.trial_niceness, 0, MAX_NICENESS)
    local_cpus = os.cpu_count()
    if cluster_address(o.address) is None and local_cpus and o.cpus_per_trial > local_cpus:
        raise ConfigError(f"--cpus-per-trial {o.cpus_per_trial:g} but this machine has {local_cpus} CPUs "
                          "(a local sweep starts Ray with every one)")
    run_level_config(o)  # --epochs 0, --scenario online, --hidden 0: named as the flag
    study_name(o)
    trackers(o.log)  # --log mlfow; a tracker whose package is missing: named with its pip command
    if o.address:
        address_host_port(o.address)  # its form now; whether it answers once the study is locked
    if o.storage is not None:
        check_storage(o.storage)
    for key in ("pretrained", "init_weights"):  # a device or a pipe would be read (hashed) forever
        path = getattr(o, key) or o.extra.get(key)
        if isinstance(path, (str, os.PathLike)) and str(path).strip():
            check_regular(Path(path).expanduser(), f"{BY_NAME[key].flag} file", "checkpoint", ConfigError)


def check_protocol(protocol: str, tasks: int | None, num_tasks: int | None = None) -> None:
    """``--protocol end`` or ``--protocol first-tasks K``: K an integer from 2 (stability needs an old task)
    to the sequence's tasks minus 1 (``num_tasks``, once the benchmark is known)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r} is unknown; allowed: end, or first-tasks K"
                          f"{did_you_mean(protocol, PROTOCOLS)}")
    if protocol == "end":
        if tasks is not None:
            raise ConfigError(f"--protocol end takes no number of tasks, got {tasks!r}")
        return
    if not isinstance(tasks, int) or isinstance(tasks, bool) or tasks < 2:
        raise ConfigError(f"--protocol first-tasks K: K must be an integer >= 2 (stability needs an old task), "
                          f"got {tasks!r}")
    if num_tasks is not None and tasks >= num_tasks:
        raise ConfigError(f"--protocol first-tasks {tasks}: K must be below the sequence's {num_tasks} tasks "
                          f"(K = {num_tasks} is --protocol end)")


def protocol_meta(o: SweepOptions) -> dict[str, Any] | None:
    """What study.json records of the protocol: None for end (what a study from before it recorded means)."""
    return None if o.protocol == "end" else {"name": o.protocol, "tasks": o.protocol_tasks}


def check_storage(storage: str) -> None:
    """``--storage``: an existing folder (a shared mount every node reaches); an object-store URI is refused."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", storage):
        raise ConfigError(f"--storage {storage!r}: object-store URIs (s3://, gs://, ...) are not supported: they "
                          "cannot be tested offline and hold no lock; give a shared folder every node reaches")
    path = Path(storage).expanduser()
    if not storage.strip() or not path.is_dir():
        raise ConfigError(f"--storage {storage!r} is not an existing folder; give a shared folder every node "
                          "reaches (it is not created: a mount that is missing must not become a local folder)")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(flag: str, value: object, low: int, high: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{flag} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ConfigError(f"{flag} must be {allowed}, got {value}")


def _check_resource(flag: str, value: object, zero: bool) -> None:
    """A share of CPUs or GPUs: a finite number, at least Ray's step of 0.0001 (or 0 where ``zero``)."""
    if not _number(value):
        raise ConfigError(f"{flag} must be a finite number, got {value!r}")
    assert isinstance(value, (int, float))
    if value < 0 or (value < MIN_RESOURCE and not (zero and value == 0)):
        least = f"0 or at least {MIN_RESOURCE:g}" if zero else f"at least {MIN_RESOURCE:g}"
        raise ConfigError(f"{flag} must be {least} (Ray counts resources in steps of {MIN_RESOURCE:g}), got {value:g}")


def study_name(o: SweepOptions) -> str:
    """The study's folder name: ``--study``, else ``<strategy>-<benchmark>-<scenario>``; checked to be one
    plain, printable folder name of at most :data:`MAX_STUDY_NAME` characters."""
    if o.study is None:  # a module:function benchmark would put ':' and '.' into a folder name
        name = re.sub(r"[^A-Za-z0-9_+-]+", "_", f"{o.strategy}-{o.benchmark}-{o.scenario}")
        shown = "the study name"
    else:
        name, shown = o.study, "--study"
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{shown} {name!r} must be a plain folder name")
    control = next((c for c in name if unicodedata.category(c)[0] == "C"), None)
    if control is not None:
        raise ConfigError(f"{shown} {name[:40]!r}{'...' if len(name) > 40 else ''} holds the control character "
                          f"{control!r}; a study name is printable text")
    if len(name) > MAX_STUDY_NAME or len(name.encode()) > 255:
        raise ConfigError(f"{shown} {name[:40]}... is {len(name)} characters long; at most {MAX_STUDY_NAME} "
                          "(it names a folder)")
    return name


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
    overridden = {**o.extra, **({"epochs": o.epochs} if o.epochs is not None else {})}
    flags = {name: BY_NAME[name].flag for name in overridden if name in BY_NAME}
    check_active(space.params, {**space.fixed, **overridden}, space.path, flags)
    # settings that break a component (adapter+ewc per-task), from the space or from a flag of this run
    check_space_settings(parse_strategy(space.strategy), space.params, {**space.fixed, **overridden}, space.path,
                         flags)
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
