"""Fault injection for the fault tests: the package itself has no test-only switch.

A ``sweep run`` subprocess gets its faults from :mod:`tests.faults.sitecustomize` (see there) through
:func:`fault_env`; a driver running inside the test process, on Ray workers started without that
file, gets them from a trainable patched in by the test (:func:`raising_at_lr`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.faults.sitecustomize import (
    HOLD_FILE_ENV,
    PAUSE_AFTER_WRITE_ENV,
    PAUSE_IN_WRITE_ENV,
    PHASES,
    PID_DIR_ENV,
    RAISE_AT_LR_ENV,
    SIGNAL_AT_ENV,
    TRIAL_INFO_DIR_ENV,
    VARIABLES,
)

FAULTS_DIR = Path(__file__).resolve().parent

__all__ = ["HOLD_FILE_ENV", "PAUSE_AFTER_WRITE_ENV", "PAUSE_IN_WRITE_ENV", "PHASES", "PID_DIR_ENV", "RAISE_AT_LR_ENV",
           "SIGNAL_AT_ENV", "TRIAL_INFO_DIR_ENV", "fault_env", "raising_at_lr"]


def fault_env(**variables: str) -> dict[str, str]:
    """Extra environment for a ``sweep run`` subprocess: this folder first on ``PYTHONPATH`` (so its
    ``sitecustomize`` runs in the driver and in Ray's workers) and the given ``SWEEP_TEST_*`` variables."""
    unknown = set(variables) - set(VARIABLES)
    assert not unknown, f"no such fault: {sorted(unknown)}"
    path = os.pathsep.join(filter(None, [str(FAULTS_DIR), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, **variables}


def raising_at_lr(lr: float) -> Callable[..., None]:
    """A stand-in for ``sweep.tune.trainable.tune_trainable`` that raises in a trial whose ``lr`` is ``lr``.

    For a driver in the test process: patch it over ``sweep.tune.trainable.tune_trainable`` there. Ray
    pickles this closure by value (it is not reachable by name), so it needs nothing in the worker;
    there it runs the package's own, unpatched trainable.
    """

    def tune_trainable(params: dict[str, Any], payload: Any = None, setup: Any = None) -> None:
        import math

        from sweep.tune import trainable

        value = params.get("lr")
        if isinstance(value, float) and math.isclose(value, lr):
            raise RuntimeError(f"injected fault: trial with lr={value:g} raised")
        trainable.tune_trainable(params, payload=payload, setup=setup)

    return tune_trainable
