"""Fault injection for tests/test_faults.py, kept out of the package.

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that holds one.
The fault tests put this folder first on the ``PYTHONPATH`` of a ``sweep run`` subprocess
(:func:`tests.faults.fault_env`), so this runs in the driver and in every process Ray starts for it:
they inherit the driver's environment. Without one of the variables below set it does nothing;
with one, it patches a module of the package right after that module is first imported, in
whichever process imports it:

``SWEEP_TEST_PID_DIR``
    every trial start (a retry is a new one) writes ``<pid>-<ns>`` there, holding its Tune trial id;
``SWEEP_TEST_RAISE_AT_LR``
    a trial whose ``lr`` is this value raises ``RuntimeError("injected fault: ...")``;
    both wrap ``sweep.tune.trainable.tune_trainable``, the name the driver hands to Tune. The wrapper
    keeps the original's module and name, so Ray pickles it by reference and each worker unpickles
    its own patched copy (this file runs there too).
``SWEEP_TEST_PAUSE_IN_WRITE``
    seconds to sleep once a study table's temporary file is complete, before the rename over the
    table (a torn-write window): wraps the ``atomic_write`` that ``sweep.results.store`` calls;
``SWEEP_TEST_PAUSE_AFTER_WRITE``
    seconds to sleep after a trial is committed to the Parquet files, before Optuna is told
    (between trials): wraps ``sweep.results.store.StudyStore.add``.
``SWEEP_TEST_TRIAL_INFO_DIR``
    every trial start writes ``<pid>.json`` there: its Tune trial id, the cluster's GCS address and its
    niceness (``os.nice(0)``);
``SWEEP_TEST_HOLD_FILE``
    with the above: the trial then waits (at most 10 minutes) while this file exists, so a test can act
    while a trial is surely running, and let it finish by removing the file.
``SWEEP_TEST_SIGNAL_AT``
    the driver sends itself SIGTERM once, at this start-up phase boundary (:data:`PHASES`): after the
    options are validated, after the study lock is taken, after ray.init, inside ``optuna.create_study``
    while it holds the journal's lock file, after the searcher is built, just before the first
    ``Tuner.fit`` (the references', when there are any), or when the first trial starts. Only in the
    driver: the process whose id is in ``SWEEP_TEST_DRIVER_PID``, which this file sets there (Ray's
    processes inherit it from the driver).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

PID_DIR_ENV = "SWEEP_TEST_PID_DIR"
RAISE_AT_LR_ENV = "SWEEP_TEST_RAISE_AT_LR"
PAUSE_IN_WRITE_ENV = "SWEEP_TEST_PAUSE_IN_WRITE"
PAUSE_AFTER_WRITE_ENV = "SWEEP_TEST_PAUSE_AFTER_WRITE"
TRIAL_INFO_DIR_ENV = "SWEEP_TEST_TRIAL_INFO_DIR"
HOLD_FILE_ENV = "SWEEP_TEST_HOLD_FILE"
SIGNAL_AT_ENV = "SWEEP_TEST_SIGNAL_AT"
DRIVER_PID_ENV = "SWEEP_TEST_DRIVER_PID"
VARIABLES = (PID_DIR_ENV, RAISE_AT_LR_ENV, PAUSE_IN_WRITE_ENV, PAUSE_AFTER_WRITE_ENV, TRIAL_INFO_DIR_ENV,
             HOLD_FILE_ENV, SIGNAL_AT_ENV)
# SWEEP_TEST_SIGNAL_AT's phases, in the order a sweep meets them
PHASES = ("validated", "locked", "ray_started", "in_create_study", "searcher_built", "before_fit", "trial_running")


def check_lr(params: dict[str, Any], raise_at_lr: float | None) -> None:
    lr = params.get("lr")
    if raise_at_lr is not None and isinstance(lr, float) and math.isclose(lr, raise_at_lr):
        raise RuntimeError(f"injected fault: trial with lr={lr:g} raised")


def trial_info(info_dir: str, hold_file: str | None) -> None:
    """In a trial: write what a test checks of it, then wait while ``hold_file`` exists."""
    import ray
    from ray import tune

    info = {"pid": os.getpid(), "trial_id": tune.get_context().get_trial_id(), "nice": os.nice(0),
            "gcs_address": ray.get_runtime_context().gcs_address}
    tmp = Path(info_dir, f".{os.getpid()}.json.tmp")
    tmp.write_text(json.dumps(info))
    tmp.rename(Path(info_dir, f"{os.getpid()}.json"))  # a reader sees all of it or nothing
    deadline = time.monotonic() + 600
    while hold_file and Path(hold_file).exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def patch_trainable(module: ModuleType) -> None:
    original = module.tune_trainable
    pid_dir = os.environ.get(PID_DIR_ENV) or None
    raise_at_lr = float(os.environ[RAISE_AT_LR_ENV]) if os.environ.get(RAISE_AT_LR_ENV) else None
    info_dir = os.environ.get(TRIAL_INFO_DIR_ENV) or None
    hold_file = os.environ.get(HOLD_FILE_ENV) or None

    @functools.wraps(original)  # module and qualified name of the original: pickled by reference
    def tune_trainable(params: dict[str, Any], payload: Any = None, setup: Any = None) -> None:
        if pid_dir:  # one file per trial start, named by the process
            from ray import tune

            Path(pid_dir, f"{os.getpid()}-{time.time_ns()}").write_text(tune.get_context().get_trial_id())
        if info_dir:
            trial_info(info_dir, hold_file)
        check_lr(params, raise_at_lr)
        original(params, payload=payload, setup=setup)

    module.tune_trainable = tune_trainable


def patch_store(module: ModuleType) -> None:
    in_write = float(os.environ.get(PAUSE_IN_WRITE_ENV) or 0)
    after_write = float(os.environ.get(PAUSE_AFTER_WRITE_ENV) or 0)
    if in_write:
        atomic_write = module.atomic_write  # looked up by atomic_write_table at call time

        @functools.wraps(atomic_write)
        def paused_write(path: Any, write: Callable[[Any], None], *args: Any, **kwargs: Any) -> Any:
            def write_then_pause(handle: Any) -> None:
                write(handle)
                handle.flush()  # the whole table is in the temporary file; the rename has not happened
                time.sleep(in_write)

            return atomic_write(path, write_then_pause, *args, **kwargs)

        module.atomic_write = paused_write
    if after_write:
        add = module.StudyStore.add

        @functools.wraps(add)
        def add_then_pause(self: Any, *args: Any, **kwargs: Any) -> bool:
            added = add(self, *args, **kwargs)
            if added:
                time.sleep(after_write)
            return added

        module.StudyStore.add = add_then_pause


# --- SWEEP_TEST_SIGNAL_AT: SIGTERM to the driver itself, once, at one phase boundary
_signalled: list[str] = []


def signal_here(phase: str) -> None:
    """SIGTERM to this process if it is the driver, ``phase`` is the one asked for, and it was not sent yet."""
    if (os.environ.get(SIGNAL_AT_ENV) == phase and not _signalled
            and os.environ.get(DRIVER_PID_ENV) == str(os.getpid())):
        _signalled.append(phase)
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs in the main thread, at once: here


def then_signal(function: Callable[..., Any], phase: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        signal_here(phase)
        return result

    return wrapper


def patch_driver(module: ModuleType) -> None:
    """The driver's own names for the functions that end each of its first phases."""
    module.validate_options = then_signal(module.validate_options, "validated")
    module.acquire_study_lock = then_signal(module.acquire_study_lock, "locked")
    module.init_ray = then_signal(module.init_ray, "ray_started")
    module.optuna_searcher = then_signal(module.optuna_searcher, "searcher_built")


def patch_journal(module: ModuleType) -> None:
    """Inside the journal's lock: Optuna's ``get_lock_file`` has acquired it, nothing is written yet."""
    for name in ("JournalFileSymlinkLock", "JournalFileOpenLock"):
        cls = getattr(module, name)
        cls.acquire = then_signal(cls.acquire, "in_create_study")


def patch_tuner(module: ModuleType) -> None:
    fit = module.Tuner.fit

    @functools.wraps(fit)
    def signal_then_fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        signal_here("before_fit")
        return fit(self, *args, **kwargs)

    module.Tuner.fit = signal_then_fit


def patch_callback(module: ModuleType) -> None:
    """Tune calls every callback's ``on_trial_start`` (the sweep's sink inherits this one) when a trial starts."""
    start = module.Callback.on_trial_start

    @functools.wraps(start)
    def on_trial_start(self: Any, *args: Any, **kwargs: Any) -> Any:
        signal_here("trial_running")
        return start(self, *args, **kwargs)

    module.Callback.on_trial_start = on_trial_start


PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "sweep.tune.trainable": patch_trainable,
    "sweep.results.store": patch_store,
    "sweep.tune.driver": patch_driver,
    "optuna.storages.journal._file": patch_journal,
    "ray.tune.tuner": patch_tuner,
    "ray.tune.callback": patch_callback,
}


class _PatchAfterExec(importlib.abc.Loader):
    """The module's own loader, then the patch."""

    def __init__(self, loader: importlib.abc.Loader, patch: Callable[[ModuleType], None]) -> None:
        self.loader = loader
        self.patch = patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source (tracebacks), get_filename, ...
        return getattr(self.loader, name)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds the patched modules with the finders after it, and wraps their loaders."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        patch = PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchAfterExec(spec.loader, patch)
                return spec
        return None


def install() -> None:
    if any(os.environ.get(name) for name in VARIABLES):
        if os.environ.get(SIGNAL_AT_ENV):
            if os.environ.get(SIGNAL_AT_ENV) not in PHASES:
                raise ValueError(f"{SIGNAL_AT_ENV}: no phase {os.environ[SIGNAL_AT_ENV]!r}; phases: {PHASES}")
            os.environ.setdefault(DRIVER_PID_ENV, str(os.getpid()))  # the first process: the driver
        sys.meta_path.insert(0, _PatchOnImport())


if __name__ == "sitecustomize":  # at start-up; imported as tests.faults.sitecustomize it only lends its names
    install()
