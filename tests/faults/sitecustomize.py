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
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import math
import os
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
VARIABLES = (PID_DIR_ENV, RAISE_AT_LR_ENV, PAUSE_IN_WRITE_ENV, PAUSE_AFTER_WRITE_ENV)


def check_lr(params: dict[str, Any], raise_at_lr: float | None) -> None:
    lr = params.get("lr")
    if raise_at_lr is not None and isinstance(lr, float) and math.isclose(lr, raise_at_lr):
        raise RuntimeError(f"injected fault: trial with lr={lr:g} raised")


def patch_trainable(module: ModuleType) -> None:
    original = module.tune_trainable
    pid_dir = os.environ.get(PID_DIR_ENV) or None
    raise_at_lr = float(os.environ[RAISE_AT_LR_ENV]) if os.environ.get(RAISE_AT_LR_ENV) else None

    @functools.wraps(original)  # module and qualified name of the original: pickled by reference
    def tune_trainable(params: dict[str, Any], payload: Any = None, setup: Any = None) -> None:
        if pid_dir:  # one file per trial start, named by the process
            from ray import tune

            Path(pid_dir, f"{os.getpid()}-{time.time_ns()}").write_text(tune.get_context().get_trial_id())
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


PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "sweep.tune.trainable": patch_trainable,
    "sweep.results.store": patch_store,
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
        sys.meta_path.insert(0, _PatchOnImport())


if __name__ == "sitecustomize":  # at start-up; imported as tests.faults.sitecustomize it only lends its names
    install()
