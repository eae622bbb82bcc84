"""Shared fixtures: one Ray for the whole session, and the real-data root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

# tiny models on a 2-core machine: more threads only fight each other (and other processes)
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """``make test`` runs the suite in several processes (pytest-xdist), each of which may start a Ray at the
    same moment. On a machine with no ``~/.ray/auth_token`` yet, each Ray would write a token of its own and one
    cluster's processes could read the other's: the controlling process writes it first, as Ray would."""
    if hasattr(config, "workerinput") or os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    if not (Path.home() / ".ray" / "auth_token").exists():
        from ray._private.authentication.authentication_token_setup import generate_and_save_token

        generate_and_save_token()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Real MNIST / Fashion-MNIST: $SWEEP_DATA_ROOT (CI sets it), else ../shared/data."""
    root = Path(os.environ.get("SWEEP_DATA_ROOT") or SHARED_DATA)
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data not found at {root}; set SWEEP_DATA_ROOT")
    return root


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (init costs seconds; idle Ray ~650 MB)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=True,
             logging_level="ERROR")
    yield ray
    ray.shutdown()
