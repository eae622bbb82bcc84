"""The sweep's Ray: join ``--address``/``$RAY_ADDRESS`` or start a local one, and check its resources.

A sweep told no address starts its own local Ray (``ray.init(address="local")``): it never joins a
cluster it was not told to join, whatever another Ray on the machine or a stale
``<ray temp dir>/ray_current_cluster`` file says. That local Ray keeps Ray's token authentication on
(``RAY_AUTH_MODE=token``; Ray creates ``~/.ray/auth_token`` on first use, which this user's processes
read): every port it listens on refuses a client without the token. Its trial workers run at the
niceness the sweep asks for (``--trial-niceness``, default 0: the priority of the command that started
the sweep, not Ray's default of 15). A joined cluster keeps its own authentication and niceness.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sweep.errors import ConfigError, SweepError

AUTH_MODE = "RAY_AUTH_MODE"  # Ray reads it in every process it starts: they inherit the driver's environment
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"  # another file holding the token; default ~/.ray/auth_token
MAX_NICENESS = 19  # Linux's lowest priority; 0 is the priority of the command that started the sweep


def cluster_address(address: str | None) -> str | None:
    """The cluster a sweep joins: ``--address``, else ``$RAY_ADDRESS`` (Ray Jobs set it); None or "local":
    none, the sweep starts its own."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def starts_own_ray(address: str | None) -> bool:
    """Whether :func:`init_ray` with this address starts a local Ray (which the caller then stops)."""
    import ray

    return cluster_address(address) is None and not ray.is_initialized()


def init_ray(address: str | None, dashboard: bool, niceness: int = 0) -> bool:
    """Join ``--address``/``$RAY_ADDRESS`` or start a local Ray; True if we started it.

    Args:
        address: ``--address``; None: ``$RAY_ADDRESS``, else a local Ray of this sweep's own.
        dashboard: start Ray's dashboard, on 127.0.0.1 only.
        niceness: the trial workers' niceness in a local Ray (added to the driver's own).
    """
    import ray

    address = cluster_address(address)
    kwargs: dict[str, Any] = {"include_dashboard": dashboard, "log_to_driver": False,
                              "configure_logging": True, "logging_level": "ERROR"}
    if dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"  # never listen beyond this machine
    if address:
        check_reachable(address)
        try:
            keep_sigterm_handler(ray.init, address=address, **kwargs)
        except Exception as err:  # ConnectionError, RuntimeError, ValueError across Ray versions
            first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            # its port answered (check_reachable): a refusal is often its token authentication
            hint = (f" (if it uses token authentication: set {AUTH_MODE}=token and give its token in "
                    f"~/.ray/auth_token, ${TOKEN_PATH} or $RAY_AUTH_TOKEN)")
            raise SweepError(f"cannot reach a Ray cluster at --address {address!r}: {first}{hint}") from None
        return False
    if ray.is_initialized():  # the caller's own Ray (the Python API): used as it is
        return False
    if os.environ.get(AUTH_MODE, "token").lower() != "token":
        # whatever the environment says, no unauthenticated cluster on the network: unset, ray.init turns
        # token authentication on for a new local cluster (and reloads its own config, which read the variable)
        del os.environ[AUTH_MODE]
    try:
        keep_sigterm_handler(ray.init, address="local", num_cpus=os.cpu_count(),
                             _system_config={"worker_niceness": int(niceness)}, **kwargs)
    except BaseException:  # an interrupt or a failure half-way: none of what it started is left running
        ray.shutdown()
        raise
    _private_token()
    return True


def _private_token() -> None:
    """Ray writes ``~/.ray/auth_token`` with the umask's mode (often readable by every user): make it the
    owner's only, as a password file is."""
    path = Path(os.environ.get(TOKEN_PATH) or Path.home() / ".ray" / "auth_token")
    try:
        info = path.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077:
            path.chmod(0o600)
    except OSError:  # not there (the token came from $RAY_AUTH_TOKEN), or not ours to change
        pass


def keep_sigterm_handler(init: Callable[..., Any], **kwargs: Any) -> None:
    """``init(**kwargs)``, keeping a SIGTERM handler of the caller's (``sweep run``'s), which ray.init replaces
    with one that calls ``sys.exit(15)``: a SIGTERM during ``init`` goes to the caller's handler too."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    try:
        init(**kwargs)
    except SystemExit as exit_:
        if exit_.code == signal.SIGTERM and callable(handler):
            handler(signal.SIGTERM, None)  # sweep run's: records it and raises KeyboardInterrupt
            raise KeyboardInterrupt from None
        raise
    finally:
        if callable(handler) and main:
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


@contextlib.contextmanager
def without_callback_census() -> Iterator[None]:
    """Run ``Tuner.fit`` without Ray Tune's census of the callbacks it is given.

    The census only feeds Ray's usage statistics (a tag counting callbacks by class), and to name the classes it
    imports every tracker integration Ray knows (MLflow, W&B, Comet, Aim): with MLflow and W&B installed (the
    ``--log`` extras), 4.5 s of every sweep's start on one core, for a tag. The sweep sends no such tag instead. If
    Ray moves the function, nothing is skipped and nothing breaks."""
    try:
        from ray.air._internal import usage

        census = usage.tag_callbacks
    except (ImportError, AttributeError):  # Ray moved it: nothing to skip
        yield
        return
    usage.tag_callbacks = lambda callbacks: False
    try:
        yield
    finally:
        usage.tag_callbacks = census
