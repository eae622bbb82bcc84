"""``sweep run``: Ray Tune + Optuna over a search space, every trial into the study's Parquet files.

Resume does not depend on Tune's experiment snapshot: the Parquet files are the record of
what finished and the Optuna study lives in a journal file beside them. A resumed sweep
runs only the trials still missing, after telling Optuna how every trial the killed driver
left "running" really ended, so the two never disagree and no trial is recorded twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep.atomic import atomic_write
from sweep.config import TrainConfig
from sweep.errors import ConfigError, SweepError
from sweep.prefix_cache import WEIGHT_FILES, file_digest
from sweep.results import (
    StudyStore,
    acquire_study_lock,
    locked_message,
    release_study_lock,
    study_lock_holder,
)
from sweep.schema import HYPERPARAMETERS, MACHINE_FIELDS, METRICS, SPLITS, STUDY_FILE, metric_column
from sweep.search_space import GENERAL_PARAMS, SearchSpace, load_space, space_path
from sweep.strategies import strategy_params
from sweep.trainable import OBJECTIVES

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
    benchmark: str = "split-digits"
    scenario: str = "task"  # the trade-off of EWC, LwF and L2-SP shows in task-incremental form
    num_tasks: int | None = None
    data_root: str | None = None
    model: str = "mlp"  # mlp, cnn, resnet18/34/50, or a user's module:function
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
    extra: dict[str, Any] = field(default_factory=dict)  # more fixed TrainConfig fields (tests, API)


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
    if o.epochs is not None and o.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {o.epochs}")
    if o.study is not None and (not o.study or "/" in o.study or o.study.startswith(".")):
        raise ConfigError(f"--study {o.study!r} must be a plain folder name")
    if o.address:
        _address_host_port(o.address)  # its form now; whether it answers once the study is locked


def base_config(o: SweepOptions, space: SearchSpace) -> dict[str, Any]:
    """The fixed part of every trial's config, validated once here rather than in every trial."""
    values: dict[str, Any] = {
        "benchmark": o.benchmark, "scenario": o.scenario, "num_tasks": o.num_tasks, "model": o.model,
        "data_root": str(Path(o.data_root).resolve()) if o.data_root else None,  # trials run elsewhere
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


def _code_version() -> str:
    from sweep import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def _versions() -> dict[str, str]:
    import optuna
    import ray
    import torch

    return {"code_version": _code_version(), "torch_version": torch.__version__, "ray_version": ray.__version__,
            "optuna_version": optuna.__version__}


class ResultSink:
    """Tune callback, on the driver: each trial's final result becomes Parquet rows, once."""

    def __init__(self, store: StudyStore, study: str, versions: dict[str, str], setup: dict[str, Any],
                 quiet: bool) -> None:
        from ray.tune import Callback

        self.store, self.study, self.versions, self.setup, self.quiet = store, study, versions, setup, quiet
        self.printed_header = False
        sink = self

        class _Callback(Callback):
            def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
                if result.get("final"):
                    sink.record(trial.trial_id, trial.config, result)

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                sink.record_error(trial)

        self.callback = _Callback()

    def _row(self, trial_id: str, params: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
        role = params.get("role", "search")
        values = {**self.setup["base_config"], **{k: v for k, v in params.items() if k != "role"}}
        if role != "search":
            values["strategy"], values["frozen_layers"] = role, 0
        config = TrainConfig.from_mapping(values, source="trial config")
        relevant = set(GENERAL_PARAMS) | set(strategy_params(config.strategy))
        seeds = self.setup["seeds"]
        row = {
            "study": self.study, "trial_id": trial_id, "status": status, "reason": reason, "role": role,
            "strategy": config.strategy, "benchmark": config.benchmark, "scenario": config.scenario,
            "model": config.model, "num_tasks": self.setup["num_tasks"],
            **{f"hp_{k}": (getattr(config, k) if k in relevant else None) for k in HYPERPARAMETERS},
            "n_seeds": len(seeds), "seeds": ",".join(map(str, seeds)),
            # settings and the strategy's own hyperparameters; not the other strategies' defaults
            "config": json.dumps({k: v for k, v in config.to_dict().items() if k not in MACHINE_FIELDS
                                  and v is not None and (k not in HYPERPARAMETERS or k in relevant)}),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            **self.versions,
        }
        return row

    def record(self, trial_id: str, params: dict[str, Any], result: dict[str, Any]) -> None:
        if self.store.has(trial_id):
            return
        status = result.get("status", "finished")
        row = self._row(trial_id, params, status, result.get("reason", ""))
        if status == "finished":
            row.update({metric_column(s, m, st): result.get(metric_column(s, m, st)) for s in SPLITS
                        for m in METRICS for st in ("mean", "std")})
        row.update({"fisher_mean": result.get("fisher_mean"), "fisher_trace": result.get("fisher_trace"),
                    "duration_s": result.get("duration_s"), "node": result.get("node")})
        accuracy = []
        for seed, matrices in (result.get("accuracy") or {}).items():
            for split in SPLITS:
                if not matrices.get(split):
                    continue
                for i, acc in enumerate(matrices[f"initial_{split}"]):
                    accuracy.append({"study": self.study, "trial_id": trial_id, "seed": int(seed), "split": split,
                                     "after_task": 0, "eval_task": i + 1, "accuracy": acc})
                for t, row_values in enumerate(matrices[split]):
                    for i, acc in enumerate(row_values):
                        if acc >= 0:  # -1 marks rows never reached (a diverged run)
                            accuracy.append({"study": self.study, "trial_id": trial_id, "seed": int(seed),
                                             "split": split, "after_task": t + 1, "eval_task": i + 1,
                                             "accuracy": acc})
        self.store.add(row, accuracy)
        self._print(row)

    def record_error(self, trial: Any) -> None:
        if self.store.has(trial.trial_id):
            return
        reason = "trial raised an error"
        try:
            error_file = trial.error_file
            if error_file and Path(error_file).exists():
                lines = [ln for ln in Path(error_file).read_text().strip().splitlines() if ln.strip()]
                reason = lines[-1][:300] if lines else reason
        except Exception:  # the reason is a courtesy; the status is what matters
            pass
        row = self._row(trial.trial_id, trial.config, "error", reason)
        self.store.add(row, [])
        self._print(row)

    def _print(self, row: dict[str, Any]) -> None:
        if self.quiet:
            return
        params = self.setup["searched"]
        if not self.printed_header:
            print(f"{'trial':<14}{'role':<8}" + "".join(f"{p:>21}" for p in params)
                  + f"{'stability %':>16}{'plasticity %':>16}  status", flush=True)
            self.printed_header = True
        values = "".join(f"{_fmt(row.get('hp_' + p)) if row['role'] == 'search' else '-':>21}" for p in params)
        stab = _pm(row.get("val_stability_mean"), row.get("val_stability_std"))
        plas = _pm(row.get("val_plasticity_mean"), row.get("val_plasticity_std"))
        note = row["status"] + (f" ({row['reason'][:60]})" if row["reason"] else "")
        print(f"{row['trial_id']:<14}{row['role']:<8}{values}{stab:>16}{plas:>16}  {note}", flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}±{100 * (std or 0):.1f}"


def _reconcile_optuna(study: Any, store: StudyStore) -> int:
    """Close every trial a killed driver left running, from what the Parquet files recorded."""
    import optuna

    closed = 0
    rows = {row["trial_id"]: row for row in store.trials}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        row = rows.get(trial.user_attrs.get("tune_trial_id"))
        if row is not None and row["status"] in ("finished", "diverged"):
            values = [row.get(f"val_{k}_mean") or 0.0 for k in OBJECTIVES]
            study.tell(trial.number, values if len(study.directions) > 1 else values[0])
        else:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        closed += 1
    return closed


def _optuna_searcher(o: SweepOptions, space: SearchSpace, study_dir: Path) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray.tune.search.optuna import OptunaSearch

    class RecordingOptunaSearch(OptunaSearch):
        """Tags each Optuna trial with its Tune trial id, so a resume can reconcile them."""

        def suggest(self, trial_id: str) -> dict | None:
            params = super().suggest(trial_id)
            if trial_id in self._ot_trials:
                self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
            return params

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal")))
    multi = o.objective == "pareto"
    if o.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=o.sampler_seed, population_size=max(4, min(50, o.trials // 2)))
    else:
        sampler = optuna.samplers.TPESampler(seed=o.sampler_seed, n_startup_trials=max(2, min(10, o.trials // 3)))
    name = study_dir.name
    directions = ["maximize", "maximize"] if multi else ["maximize"]
    existing = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
    closed = _reconcile_optuna(existing, StudyStore(study_dir))
    if closed and not o.quiet:
        print(f"resume: closed {closed} Optuna trial(s) left running by an interrupted driver", flush=True)
    if multi:
        # multi-objective: metric and mode go on the searcher, never on TuneConfig
        return RecordingOptunaSearch(space=space.optuna_space(), metric=list(OBJECTIVES), mode=["max", "max"],
                                     sampler=sampler, storage=storage, study_name=name)
    return RecordingOptunaSearch(space=space.optuna_space(), metric="objective", mode="max", sampler=sampler,
                                 storage=storage, study_name=name)


@dataclass
class SweepSummary:
    study_dir: Path
    counts: dict[str, int]
    target: int
    front: list[dict[str, Any]]

    @property
    def complete(self) -> bool:
        return sum(v for k, v in self.counts.items()) >= self.target


def _init_ray(o: SweepOptions) -> bool:
    """Join ``--address``/``$RAY_ADDRESS`` or start a local Ray; True if we started it."""
    import ray

    address = o.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": o.dashboard, "log_to_driver": False,
                              "configure_logging": True, "logging_level": "ERROR"}
    if o.dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"  # never listen beyond this machine
    if address:
        _check_reachable(address)
        try:
            _keep_sigterm_handler(ray.init, address=address, **kwargs)
        except Exception as err:  # ConnectionError, RuntimeError, ValueError across Ray versions
            raise SweepError(f"cannot reach a Ray cluster at --address {address!r}: "
                             f"{str(err).splitlines()[0][:160] if str(err) else type(err).__name__}") from None
        return False
    if ray.is_initialized():
        return False
    _keep_sigterm_handler(ray.init, num_cpus=os.cpu_count(), **kwargs)
    return True


def _keep_sigterm_handler(init: Any, **kwargs: Any) -> None:
    """``init(**kwargs)``, keeping a SIGTERM handler of the caller's (``sweep run``'s), which ray.init replaces."""
    handler = signal.getsignal(signal.SIGTERM)
    init(**kwargs)
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _address_host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``--address``; None for auto/local."""
    if address in ("auto", "local"):
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} must be host:port (or ray://host:port, or auto)")
    return host, int(port)


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes: ray.init retries an unreachable GCS for a long time."""
    host_port = _address_host_port(address)
    if host_port is None:
        return
    host, port = host_port
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as err:
        raise SweepError(f"cannot reach a Ray cluster at --address {address!r}: {err.strerror or err}") from None


def run_sweep(o: SweepOptions) -> SweepSummary:
    """Run (or resume) a study; returns what finished. Bad input raises before anything is written."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our Parquet sink is the record
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C must stop the whole sweep: Tune's handler would end only the current fit(), which
    # returns as if done, and the next phase (the search after the references) would start
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    validate_options(o)
    space = load_space(o.space_file or space_path(o.strategy))
    if space.strategy != o.strategy:
        raise ConfigError(f"{space.path} searches strategy {space.strategy!r}, not {o.strategy!r}")
    base = base_config(o, space)
    # a module:function benchmark would put ':' and '.' into a folder name
    study = o.study or re.sub(r"[^A-Za-z0-9_+-]+", "_", f"{o.strategy}-{o.benchmark}-{o.scenario}")
    results_dir = Path(o.results_dir).resolve()
    study_dir = results_dir / study
    meta = {"study": study, "strategy": o.strategy, "space": space.path,
            "space_sha256": hashlib.sha256(Path(space.path).read_bytes()).hexdigest(),
            "base_config": base, "seeds": list(range(o.seeds)), "objective": o.objective,
            "min_plasticity": o.min_plasticity, "sampler": o.sampler,
            # the checkpoints' contents, not only their paths: a file replaced since is refused on --resume
            "weights_sha256": {key: file_digest(base[key]) for key in WEIGHT_FILES if base.get(key)}}
    holder = study_lock_holder(study_dir)
    if holder is not None:
        raise SweepError(locked_message(study_dir, holder))
    exists = (study_dir / STUDY_FILE).exists()
    if exists and not o.resume:
        raise ConfigError(f"study {study_dir} already exists; pass --resume to continue it or choose another --study")
    if exists:
        _check_resume(study_dir, meta)
        StudyStore(study_dir)  # a torn or foreign Parquet file is refused now, before Ray starts
    elif o.resume and study_dir.exists() and any(study_dir.iterdir()):
        raise ConfigError(f"{study_dir} holds files but no {STUDY_FILE}; it is not a study this tool can resume")
    _check_writable(results_dir)

    # the data is read once, on the driver: a missing file fails here, before Ray starts
    from sweep.benchmarks import build_benchmark
    from sweep.models import build_model, load_weights
    from sweep.trainable import benchmark_to_arrays

    config0 = TrainConfig.from_mapping(base, source=space.path)
    benchmark = build_benchmark(config0.benchmark, config0.scenario, config0.num_tasks, config0.class_order,
                                config0.data_root, config0.val_fraction)
    model0 = build_model(config0.model, benchmark.input_shape, benchmark.num_classes, config0.hidden)
    n_layers = len(model0.layers())
    for key in ("pretrained", "init_weights"):  # a checkpoint that does not fit fails here, before Ray starts
        if getattr(config0, key) is not None:
            load_weights(model0, getattr(config0, key), strict=key == "pretrained", what=key)
    frozen = {"fixed.frozen_layers": base.get("frozen_layers", 0)}
    for p in space.params:
        if p.name == "frozen_layers":
            frozen.update({"params.frozen_layers.high": p.high} if p.high is not None else
                          {"params.frozen_layers.choices": max(p.choices)})
    for where, value in frozen.items():
        if value is not None and int(value) >= n_layers:
            raise ConfigError(f"{space.path}: {where}={value} would freeze all {n_layers} layers "
                              f"of {config0.model}; allowed up to {n_layers - 1}")

    created = False  # True while the folder is ours and not yet a study: removed again on failure
    started_ray = False
    lock: int | None = None
    try:
        try:
            study_dir.mkdir(parents=True)
            created = True
        except FileExistsError:
            pass
        lock = acquire_study_lock(study_dir)
        for leftover in study_dir.glob(".*.parquet.*.tmp"):  # temporary files of a write a kill interrupted
            leftover.unlink(missing_ok=True)
        started_ray = _init_ray(o)
        _check_resources(o)
        if not exists:
            _write_json(study_dir / STUDY_FILE, meta)
        created = False  # from here on the folder is a real study and is kept
        return _run(o, space, base, study, study_dir, benchmark_to_arrays(benchmark), benchmark.num_tasks)
    finally:
        if created and lock is not None:  # never another driver's folder: it would hold the lock
            shutil.rmtree(study_dir, ignore_errors=True)  # nothing half-made is left behind
        if lock is not None:
            release_study_lock(study_dir, lock)
        if started_ray:
            import ray

            ray.shutdown()


# test-only fault injection (tests/test_faults.py), read on the driver and passed to trials in ``setup``
PID_DIR_ENV = "SWEEP_TEST_PID_DIR"  # every trial start writes <pid>-<ns> there, holding its trial id
RAISE_AT_LR_ENV = "SWEEP_TEST_RAISE_AT_LR"  # a search trial with this lr raises RuntimeError


def _test_faults() -> dict[str, Any]:
    faults: dict[str, Any] = {}
    if os.environ.get(PID_DIR_ENV):
        faults["pid_dir"] = os.environ[PID_DIR_ENV]
    if os.environ.get(RAISE_AT_LR_ENV):
        faults["raise_at_lr"] = float(os.environ[RAISE_AT_LR_ENV])
    return faults


def _faulty_trainable(params: dict[str, Any], payload: dict[str, Any] | None = None,
                      setup: dict[str, Any] | None = None) -> None:
    """``tune_trainable`` behind the faults of ``setup["test_faults"]``."""
    from sweep.trainable import tune_trainable

    faults = (setup or {}).get("test_faults", {})
    if faults.get("pid_dir"):  # one file per trial start (a retry is a new one), named by the process
        from ray import tune

        Path(faults["pid_dir"], f"{os.getpid()}-{time.time_ns()}").write_text(tune.get_context().get_trial_id())
    lr = params.get("lr")
    if "raise_at_lr" in faults and isinstance(lr, float) and math.isclose(lr, faults["raise_at_lr"]):
        raise RuntimeError(f"injected fault: trial with lr={lr:g} raised")
    tune_trainable(params, payload=payload, setup=setup)


def _run(o: SweepOptions, space: SearchSpace, base: dict[str, Any], study: str, study_dir: Path,
         payload: dict[str, Any], num_tasks: int) -> SweepSummary:
    import ray
    from ray import tune

    store = StudyStore(study_dir)
    seeds = list(range(o.seeds))
    from sweep.entry_points import import_paths

    setup: dict[str, Any] = {"base_config": base, "seeds": seeds, "cpus_per_trial": o.cpus_per_trial,
                             "num_tasks": num_tasks, "searched": [p.name for p in space.params],
                             "prefix_dir": str(study_dir / "cache") if o.prefix_cache else None,
                             # folders of module:function entry points, for the trials' imports
                             "import_paths": import_paths(base.get("model", ""), base.get("benchmark", ""))}
    faults = _test_faults()
    if faults:
        setup["test_faults"] = faults
    versions = _versions()
    payload_ref = ray.put(payload)  # once into the object store; every trial reads the same copy
    resources = {"cpu": o.cpus_per_trial, "gpu": o.gpus_per_trial}

    sink = ResultSink(store, study, versions, setup, o.quiet)  # one sink: one table, one header

    def tuner_for(name: str, setup_: dict[str, Any], **tune_kwargs: Any) -> Any:
        from sweep.trainable import tune_trainable

        function = _faulty_trainable if faults else tune_trainable
        trainable = tune.with_resources(tune.with_parameters(function, payload=payload_ref, setup=setup_), resources)
        run_config = tune.RunConfig(
            name=f"{name}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S-%f')}",
            storage_path=str(study_dir / "ray"), callbacks=[sink.callback], verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),  # a killed worker is retried once
        )
        return tune.Tuner(trainable, run_config=run_config, **tune_kwargs)

    # 1. the references, on the same seeds, once per study
    missing_refs = [r for r in ("naive", "joint") if o.references and not any(
        row["role"] == r for row in store.trials)]
    if missing_refs:
        tuner_for("references", setup, param_space={"role": tune.grid_search(missing_refs)},
                  tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=o.max_concurrent)).fit()
    if o.objective == "constrained":
        naive = next((row for row in store.trials if row["role"] == "naive" and row["status"] == "finished"), None)
        if naive is None:
            raise SweepError("the constrained objective needs the naive reference, which did not finish")
        setup = {**setup, "objective": {"min_plasticity": o.min_plasticity * naive["val_plasticity_mean"]}}

    # 2. the search: only the trials still missing
    remaining = o.trials - store.count("search")
    if remaining > 0:
        searcher = _optuna_searcher(o, space, study_dir)
        tuner_for("search", setup, tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=remaining, reuse_actors=True,
            max_concurrent_trials=o.max_concurrent)).fit()
    return summarize_study(study_dir, o.trials + len(("naive", "joint")) * o.references)


def summarize_study(study_dir: Path, target: int) -> SweepSummary:
    import pandas as pd

    from sweep.analysis.pareto import pareto_front

    store = StudyStore(study_dir)
    counts = {s: sum(1 for r in store.trials if r["status"] == s) for s in ("finished", "error", "diverged")}
    trials = pd.DataFrame(store.trials)
    front: list[dict[str, Any]] = []
    if not trials.empty:  # the same front the report and `sweep choose` use
        on_front = pareto_front(trials).to_numpy()
        front = sorted((row for row, keep in zip(store.trials, on_front) if keep),
                       key=lambda r: -r["val_stability_mean"])
    return SweepSummary(study_dir, counts, target, front)


def _check_resume(study_dir: Path, meta: dict[str, Any]) -> None:
    try:
        old = json.loads((study_dir / STUDY_FILE).read_text())
    except (OSError, ValueError, RecursionError):  # ValueError: not JSON, not UTF-8
        old = None
    if not isinstance(old, dict):
        raise ConfigError(f"{study_dir / STUDY_FILE} is unreadable; cannot resume this study")
    for key in ("strategy", "base_config", "seeds", "objective", "space_sha256"):
        if old.get(key) != json.loads(json.dumps(meta[key])):
            raise ConfigError(f"--resume: {key} differs from the study's ({old.get(key)!r}); "
                              "resume with the same settings or start another --study")
    recorded = old.get("weights_sha256", {})  # absent in studies made before it was recorded
    if not isinstance(recorded, dict):
        raise ConfigError(f"{study_dir / STUDY_FILE}: weights_sha256 is not a mapping; cannot resume this study")
    for name, digest in recorded.items():
        if meta["weights_sha256"].get(name) != digest:
            raise ConfigError(f"--resume: the {name} file {meta['base_config'].get(name)} has changed since the "
                              "study started (its sha256 differs); restore it or start another --study")


def _check_writable(results_dir: Path) -> None:
    probe_dir = results_dir
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise ConfigError(f"results folder {results_dir} is not writable: {probe_dir} is a file")
    try:  # os.access says yes to root everywhere; a real write is the only honest probe
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as err:
        raise ConfigError(f"results folder {results_dir} is not writable ({err.strerror})") from None


def _check_resources(o: SweepOptions) -> None:
    import ray

    total = ray.cluster_resources()
    if o.gpus_per_trial > total.get("GPU", 0.0):
        raise ConfigError(f"--gpus-per-trial {o.gpus_per_trial} but the Ray cluster has {total.get('GPU', 0.0):g} GPUs")
    if o.cpus_per_trial > total.get("CPU", 0.0):
        raise ConfigError(f"--cpus-per-trial {o.cpus_per_trial} but the Ray cluster has {total.get('CPU', 0.0):g} CPUs")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, default=str).encode()
    atomic_write(path, lambda handle: handle.write(text))


def print_summary(summary: SweepSummary, file: Any = sys.stdout) -> None:
    c = summary.counts
    print(f"\ntrials: {c['finished']} finished, {c['error']} errored, {c['diverged']} diverged "
          f"(of {summary.target}, references included)", file=file)
    if summary.front:
        print("Pareto-optimal trials (validation):", file=file)
        for row in summary.front:
            params = {k[3:]: row[k] for k in row if k.startswith("hp_") and row[k] is not None}
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
            print(f"  {row['trial_id']}: stability {_pm(row['val_stability_mean'], row['val_stability_std'])}%, "
                  f"plasticity {_pm(row['val_plasticity_mean'], row['val_plasticity_std'])}%  [{shown}]", file=file)
    d = summary.study_dir
    print(f"results: {d / 'trials.parquet'} and {d / 'accuracy.parquet'}", file=file)
    print(f"Pareto front: sweep report {d}  (or the notebook analysis/study.ipynb)", file=file)
