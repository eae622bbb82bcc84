"""The sweep's Ray: join ``--address``/``$RAY_ADDRESS`` or start a local one, and check its resources."""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

from sweep.errors import ConfigError, SweepError


def init_ray(address: str | None, dashboard: bool) -> bool:
    """Join ``--address``/``$RAY_ADDRESS`` or start a local Ray; True if we started it."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": dashboard, "log_to_driver": False,
                              "configure_logging": True, "logging_level": "ERROR"}
    if dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"  # never listen beyond this machine
    if address:
        check_reachable(address)
        try:
            keep_sigterm_handler(ray.init, address=address, **kwargs)
        except Exception as err:  # ConnectionError, RuntimeError, ValueError across Ray versions
            raise SweepError(f"cannot reach a Ray cluster at --address {address!r}: "
                             f"{str(err).splitlines()[0][:160] if str(err) else type(err).__name__}") from None
        return False
    if ray.is_initialized():
        return False
    keep_sigterm_handler(ray.init, num_cpus=os.cpu_count(), **kwargs)
    return True


def keep_sigterm_handler(init: Any, **kwargs: Any) -> None:
    """``init(**kwargs)``, keeping a SIGTERM handler of the caller's (``sweep run``'s), which ray.init replaces."""
    handler = signal.getsignal(signal.SIGTERM)
    init(**kwargs)
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def address_host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``--address``; None for auto/local."""
    if address in ("auto", "local"):
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} must be host:port (or ray://host:port, or auto)")
    return host, int(port)


def check_reachable(address: str) -> None:
    """Fail in seconds, not minutes: ray.init retries an unreachable GCS for a long time."""
    host_port = address_host_port(address)
    if host_port is None:
        return
    host, port = host_port
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as err:
        raise SweepError(f"cannot reach a Ray cluster at --address {address!r}: {err.strerror or err}") from None


def check_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    import ray

    total = ray.cluster_resources()
    if gpus_per_trial > total.get("GPU", 0.0):
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial} but the Ray cluster has {total.get('GPU', 0.0):g} GPUs")
    if cpus_per_trial > total.get("CPU", 0.0):
        raise ConfigError(f"--cpus-per-trial {cpus_per_trial} but the Ray cluster has {total.get('CPU', 0.0):g} CPUs")
