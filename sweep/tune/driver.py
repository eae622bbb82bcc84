"""``sweep run``: Ray Tune + Optuna over a search space, every trial into the study's Parquet files.

Resume does not depend on Tune's experiment snapshot: the Parquet files are the record of
what finished and the Optuna study lives in a journal file beside them. A resumed sweep
runs only the trials still missing, after telling Optuna how every trial the killed driver
left "running" really ended, so the two never disagree and no trial is recorded twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.errors import ConfigError, SweepError
from sweep.hparams import DEFAULTS
from sweep.results.schema import DERIVED_COLUMN, STATUSES, STUDY_FILE
from sweep.results.store import (
    TRACKERS_FOLDER,
    StudyStore,
    acquire_study_lock,
    check_study_folder,
    locked_message,
    release_study_lock,
    study_lock_holder,
    temporary_leftovers,
)
from sweep.strategies.registry import check_frozen_layers
from sweep.tune.interrupts import deferred
from sweep.tune.options import (
    SweepOptions,
    base_config,
    check_protocol,
    protocol_meta,
    study_name,
    validate_options,
)
from sweep.tune.prefix_cache import WEIGHT_FILES, file_digest
from sweep.tune.pruning import DEFAULT_MIN_SHARE, DEFAULT_NOISE, SuccessiveHalving, tune_scheduler
from sweep.tune.ray_session import check_resources, init_ray, starts_own_ray, without_callback_census
from sweep.tune.search_space import SearchSpace, load_space, space_path
from sweep.tune.searcher import optuna_searcher
from sweep.tune.sink import ResultSink, package_versions
from sweep.tune.staging import experiment_name, staged_experiment
from sweep.tune.study import (
    check_resume,
    check_writable,
    new_study_writes,
    prepare_storage,
    record_in_study,
    storage_folder,
    write_json,
)
from sweep.tune.trackers import prepare_folders, tracker_callbacks, trackers

if TYPE_CHECKING:
    from sweep.data.tasks import Benchmark


@dataclass
class SweepSummary:
    study_dir: Path
    counts: dict[str, int]
    target: int

    @property
    def complete(self) -> bool:
        return sum(v for k, v in self.counts.items()) >= self.target


def run_sweep(o: SweepOptions) -> SweepSummary:
    """Run (or resume) a study; returns what finished. Bad input raises before anything is written."""
    _set_ray_environment()
    validate_options(o)
    space = load_space(Path(o.space_file).expanduser() if o.space_file else space_path(o.strategy))
    if space.strategy != o.strategy:
        raise ConfigError(f"{space.path} searches strategy {space.strategy!r}, not {o.strategy!r}")
    base = base_config(o, space)
    study = study_name(o)  # --study, else <strategy>-<benchmark>-<scenario>; one plain, printable folder name
    results_dir = Path(o.results_dir).expanduser().resolve()
    study_dir = results_dir / study
    meta = _study_meta(o, space, base, study)
    exists = _check_study_dir(o, study_dir, meta)
    check_writable(results_dir)
    benchmark = _check_inputs(o, space, base)
    return _start(o, space, base, study, study_dir, meta, exists, benchmark, first_tasks(benchmark, o))


def first_tasks(benchmark: Benchmark, o: SweepOptions) -> int:
    """How many tasks the study's trials run: all of them, or the first K with ``--protocol first-tasks K``.
    The trials get the whole benchmark and cut it themselves, after ``class_shuffle`` has dealt each seed's
    classes over all the tasks."""
    if o.protocol == "end":
        return benchmark.num_tasks
    check_protocol(o.protocol, o.protocol_tasks, benchmark.num_tasks)
    assert o.protocol_tasks is not None
    return o.protocol_tasks


def _set_ray_environment() -> None:
    """Ray's and Tune's settings for a sweep, unless the caller set them."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our Parquet sink is the record
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C must stop the whole sweep: Tune's handler would end only the current fit(), which
    # returns as if done, and the next phase (the search after the references) would start
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


def _study_meta(o: SweepOptions, space: SearchSpace, base: dict[str, Any], study: str) -> dict[str, Any]:
    """The study file's content: what a resumed sweep must agree on."""
    return {"study": study, "strategy": o.strategy, "space": space.path,
            "space_sha256": hashlib.sha256(Path(space.path).read_bytes()).hexdigest(),
            "base_config": base, "seeds": list(range(o.seeds)), "objective": o.objective,
            "min_plasticity": o.min_plasticity, "sampler": o.sampler,
            # references: whether the scheduler has naive's stability as its floor (a resume must agree)
            "prune": {"eta": o.prune_eta, "grace": o.prune_grace, "noise": o.prune_noise,
                      "min_share": o.prune_min_share, "references": o.references} if o.prune else None,
            "protocol": protocol_meta(o),  # first-tasks K: the trials ran on the first K tasks only
            # the checkpoints' contents, not only their paths: a file replaced since is refused on --resume
            "weights_sha256": {key: file_digest(base[key]) for key in WEIGHT_FILES if base.get(key)},
            # the table's defaults when the study started: what a field the base config and a trial's
            # columns leave out meant then (a hp_ column added later reads as null in this study's files)
            "defaults": DEFAULTS,
            # where it writes besides its results (cache, Tune's storage): what `sweep clean` removes
            **new_study_writes(o.storage, study, trackers=bool(o.log))}


def _check_study_dir(o: SweepOptions, study_dir: Path, meta: dict[str, Any]) -> bool:
    """Refuse a locked study, an existing one without ``--resume`` and one ``--resume`` cannot continue;
    return whether the study exists."""
    if study_dir.exists() and not study_dir.is_dir():
        raise ConfigError(f"--study {study_dir.name!r}: {study_dir} is a file, not a study folder; "
                          "choose another --study")
    check_study_folder(study_dir)  # its lock, results and temporary names are never links
    holder = study_lock_holder(study_dir)
    if holder is not None:
        raise SweepError(locked_message(study_dir, holder))
    exists = (study_dir / STUDY_FILE).exists()
    if exists and not o.resume:
        raise ConfigError(f"study {study_dir} already exists; pass --resume to continue it or choose another --study")
    if exists:
        check_resume(study_dir, meta)
        StudyStore(study_dir)  # a torn or foreign Parquet file is refused now, before Ray starts
    elif o.resume and study_dir.exists() and any(study_dir.iterdir()):
        raise ConfigError(f"{study_dir} holds files but no {STUDY_FILE}; it is not a study this tool can resume")
    return exists


def _check_inputs(o: SweepOptions, space: SearchSpace, base: dict[str, Any]) -> Benchmark:
    """Read the data and build the model once, on the driver: a missing file, a checkpoint that does not
    fit or frozen layers the model lacks fail here, before Ray starts. Returns the benchmark."""
    from sweep.data.benchmarks import build_benchmark
    from sweep.models import build_model, load_weights
    from sweep.models.builtin import DROPOUT_MODELS
    from sweep.train.trainer import check_class_shuffle, seed_benchmark
    from sweep.tune.trial import trial_config

    config0 = trial_config(base, {})
    check_class_shuffle(config0)
    benchmark = build_benchmark(config0.benchmark, config0.scenario, config0.num_tasks, config0.class_order,
                                config0.data_root, config0.val_fraction)
    seed_benchmark(config0, benchmark)  # class_shuffle per-seed: each trial deals its seeds' own tasks
    model0 = build_model(config0.model, benchmark.input_shape, benchmark.num_classes, config0.hidden,
                         config0.dropout)
    n_layers = len(model0.layers())
    for key in ("pretrained", "init_weights"):
        if getattr(config0, key) is not None:
            load_weights(model0, getattr(config0, key), strict=key == "pretrained", what=key)
    frozen = {"--frozen-layers" if "frozen_layers" in o.extra else "fixed.frozen_layers": base.get("frozen_layers", 0)}
    for p in space.params:
        if p.name == "dropout" and config0.model not in DROPOUT_MODELS:  # else every trial would fail the same way
            raise ConfigError(f"{space.path}: params.dropout is searched, but model {config0.model} has no dropout of "
                              f"its own (the built-in {' and '.join(DROPOUT_MODELS)} have); stop searching dropout")
        if p.name == "frozen_layers":
            frozen.update({"params.frozen_layers.high": p.high} if p.high is not None else
                          {"params.frozen_layers.choices": max(p.choices)})
    for where, value in frozen.items():
        if value is not None:
            check_frozen_layers(int(value), n_layers, f"{space.path}: {where}")
    return benchmark


def _start(o: SweepOptions, space: SearchSpace, base: dict[str, Any], study: str, study_dir: Path,
           meta: dict[str, Any], exists: bool, benchmark: Benchmark, num_tasks: int) -> SweepSummary:
    """Take the study's lock, start Ray, write the study file and run; a folder made here and left no
    study (a failure before the study file) is removed again."""
    from sweep.tune.trial import benchmark_to_arrays

    created = False  # True while the folder is ours and not yet a study: removed again on failure
    # decided before ray.init: an interrupt inside it or just after it still stops what it started
    started_ray = starts_own_ray(o.address)
    lock: int | None = None
    try:
        try:
            study_dir.mkdir(parents=True)
            created = True
        except FileExistsError:
            pass
        with deferred():  # an interrupt waits until the lock is ours, and so is released on the way out
            lock = acquire_study_lock(study_dir)
        for leftover in temporary_leftovers(study_dir):  # temporary files of a write a kill interrupted
            leftover.unlink(missing_ok=True)
        init_ray(o.address, o.dashboard, o.trial_niceness)
        check_resources(o.cpus_per_trial, o.gpus_per_trial)
        if not o.quiet:  # after the checks Ray answers: a refused sweep prints its one error line only
            print(f"study {study_dir}: {'resuming' if exists else 'starting'} on Ray"
                  f"{' at ' + o.address if o.address else ' (local)'}", flush=True)
        if not exists:
            write_json(study_dir / STUDY_FILE, meta)
        created = False  # from here on the folder is a real study and is kept
        prepare_storage(meta)  # recorded in study.json first: `sweep clean` finds it whatever happens next
        if o.log:  # the same for --log's folder: a resume that adds --log records it now
            record_in_study(study_dir, TRACKERS_FOLDER)
            prepare_folders(study_dir, trackers(o.log))
        return _run(o, space, base, study, study_dir, benchmark_to_arrays(benchmark), num_tasks)
    except OSError as err:  # a full disk or a read-only mount on the way: one line, never a traceback
        resumable = not created and (study_dir / STUDY_FILE).exists()
        raise SweepError(f"cannot write the study {study_dir}: {err.strerror or err}"
                         + (f" ({err.filename})" if err.filename else "")
                         + ("; finished trials are saved: resume with --resume once it is writable"
                            if resumable else "")) from None
    finally:  # each step runs whatever the one before it raised (after an interrupt, anything may)
        try:
            if created and lock is not None:  # never another driver's folder: it would hold the lock
                shutil.rmtree(study_dir, ignore_errors=True)  # nothing half-made is left behind
            elif created:  # the lock was never ours (a full disk): the folder made here goes if still empty
                with contextlib.suppress(OSError):
                    study_dir.rmdir()
        finally:
            try:
                if lock is not None:
                    release_study_lock(study_dir, lock)
            finally:
                if started_ray:
                    import ray

                    ray.shutdown()


def count_trials(study_dir: Path, target: int) -> SweepSummary:
    """How the study's trials ended, from its Parquet record."""
    store = StudyStore(study_dir)
    trained = [r for r in store.trials if not r.get(DERIVED_COLUMN)]  # not the free variants of one
    counts = {s: sum(1 for r in trained if r["status"] == s) for s in STATUSES}
    return SweepSummary(study_dir, counts, target)


def _run(o: SweepOptions, space: SearchSpace, base: dict[str, Any], study: str, study_dir: Path,
         payload: dict[str, Any], num_tasks: int) -> SweepSummary:
    import ray
    from ray import tune

    store = StudyStore(study_dir)
    seeds = list(range(o.seeds))
    from sweep.data.entry_points import import_paths

    storage = storage_folder(study_dir)  # the study folder, or its own folder in --storage

    setup: dict[str, Any] = {"base_config": base, "seeds": seeds, "cpus_per_trial": o.cpus_per_trial,
                             "num_tasks": num_tasks, "searched": [p.name for p in space.params],
                             "prefix_dir": str(storage / "cache") if o.prefix_cache else None,
                             # --storage reaches every node; else only the driver's node has the study folder
                             "prefix_shared": storage != study_dir,
                             "driver_node": ray.get_runtime_context().get_node_id(),
                             # folders of module:function entry points, for the trials' imports
                             "import_paths": import_paths(base.get("model", ""), base.get("benchmark", "")),
                             # every trial reports at the rungs (sweep.tune.pruning), pruned or not: an
                             # unpruned study's rung records show what --prune would have done
                             "rungs": {"eta": o.prune_eta, "grace": o.prune_grace}}
    versions = package_versions()
    payload_ref = ray.put(payload)  # once into the object store; every trial reads the same copy
    resources = {"cpu": o.cpus_per_trial, "gpu": o.gpus_per_trial}

    # one sink: one table, one header, one status line over every trial the study is to hold
    sink = ResultSink(store, study, versions, setup, o.quiet, total=o.trials + len(("naive", "joint")) * o.references)

    def tuner_for(name: str, setup_: dict[str, Any], **tune_kwargs: Any) -> Any:
        from sweep.tune.trainable import tune_trainable

        trainable = tune.with_resources(tune.with_parameters(tune_trainable, payload=payload_ref, setup=setup_),
                                        resources)
        run_config = tune.RunConfig(
            name=name, storage_path=str(storage / "ray"), verbose=0,
            # --log: Ray Tune's own logger callbacks, each writing in <study>/trackers/<tracker>
            callbacks=[sink.callback, *tracker_callbacks(trackers(o.log), study_dir, study)],
            failure_config=tune.FailureConfig(max_failures=1),  # a killed worker is retried once
        )
        return tune.Tuner(trainable, run_config=run_config, **tune_kwargs)

    def fit(phase: str, setup_: dict[str, Any], **tune_kwargs: Any) -> None:
        name = experiment_name(phase)
        try:
            # staged: recorded before it runs, removed from this node after
            with staged_experiment(study_dir, name), without_callback_census():
                tuner_for(name, setup_, **tune_kwargs).fit()
        except Exception:
            if sink.failure is not None:  # a trial that could not be written: its one line, not Tune's traceback
                raise sink.failure from None
            raise

    # 1. the references, on the same seeds, once per study
    missing_refs = [r for r in ("naive", "joint") if o.references and not any(
        row["role"] == r for row in store.trials)]
    if missing_refs:
        fit("references", setup, param_space={"role": tune.grid_search(missing_refs)},
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=o.max_concurrent))
    if o.objective == "constrained":
        naive = finished_naive(store)
        if naive is None:
            raise SweepError("the constrained objective needs the naive reference, which did not finish")
        setup = {**setup, "objective": {"min_plasticity": o.min_plasticity * naive["val_plasticity_mean"]}}

    # 2. the search: only the trials still missing
    remaining = o.trials - store.count("search")
    if remaining > 0:
        searcher = optuna_searcher(o, space, study_dir, setup.get("objective"))
        scheduler: dict[str, Any] = {}
        if o.prune:  # only the search's trials: the references always finish
            _warn_without_rungs(o, base, num_tasks)
            sink.halving = resumed_halving(store, o.prune_eta, o.prune_noise, o.prune_min_share, num_tasks)
            if sink.halving.reference is None and o.prune_min_share > 0 and not o.quiet:
                print("sweep run: --prune has no naive reference to measure against (--no-references, or it did "
                      "not finish): in the last task, trials on a rung's front all go on, as with "
                      "--prune-min-share 0", file=sys.stderr, flush=True)
            scheduler = {"scheduler": tune_scheduler(sink.halving)}
        fit("search", setup, tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=remaining, reuse_actors=True,
            max_concurrent_trials=o.max_concurrent, **scheduler))
    return count_trials(study_dir, o.trials + len(("naive", "joint")) * o.references)


def finished_naive(store: StudyStore) -> dict[str, Any] | None:
    """The study's finished naive reference row, if it has one."""
    return next((row for row in store.trials if row["role"] == "naive" and row["status"] == "finished"), None)


def resumed_halving(store: StudyStore, eta: float, noise: float = DEFAULT_NOISE,
                    min_share: float = DEFAULT_MIN_SHARE, num_tasks: int | None = None) -> SuccessiveHalving:
    """The scheduler of a --prune search, holding what the study's recorded search trials reported at each
    rung: a resumed sweep judges its new trials against them as the killed one would have. Its reference is
    the naive reference's final validation stability, the hypervolume's floor at the rungs of the trials'
    last task, ``num_tasks`` (none without references)."""
    naive = finished_naive(store)
    reference = None if naive is None else naive.get("val_stability_mean")
    # a NaN is turned into no floor by SuccessiveHalving itself
    halving = SuccessiveHalving(eta, noise, float(reference) if isinstance(reference, (int, float)) else None,
                                num_tasks, min_share)
    search = {row["trial_id"] for row in store.trials if row["role"] == "search"}
    for row in store.rungs:
        if row["trial_id"] in search and row["val_stability_mean"] is not None:
            halving.record(row["trial_id"], row["task"], row["epoch"],
                           (row["val_stability_mean"], row["val_plasticity_mean"]))
    return halving


def _warn_without_rungs(o: SweepOptions, base: dict[str, Any], num_tasks: int) -> None:
    """Say so when ``--prune`` can stop nothing: no rung past the grace period (two tasks of one epoch, say)."""
    from sweep.tune.pruning import RungPlan

    epochs = base.get("epochs", DEFAULTS["epochs"])
    if not isinstance(epochs, int) or o.quiet:
        return  # epochs searched: each trial has its own rungs
    plan = RungPlan(num_tasks, epochs, o.prune_eta, o.prune_grace)
    if not any(plan.decides(task, epoch) for task, epoch in plan.rungs()):
        print(f"sweep run: --prune has no rung to stop a trial at here ({num_tasks} tasks of {epochs} epoch(s), "
              f"grace {o.prune_grace}): rungs are the ends of tasks 2..{num_tasks - 1} and epochs "
              f"grace*eta^k inside a task; every trial runs to the end", file=sys.stderr, flush=True)
