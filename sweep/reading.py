"""Reading a file the user names: regular files only, each kind bounded by size, every failure one line.

A path on the command line or in a config (a YAML file, a checkpoint, an IDX or CIFAR data file,
``study.json``, a Parquet file) is opened without blocking (opening a named pipe would wait for a
writer), checked to be a regular file (a device such as ``/dev/zero`` never ends) and no larger
than its kind's cap, then read at most up to that cap (a file that grows while it is read is
refused too). Each failure is the caller's typed :class:`~sweep.errors.SweepError`, naming the file
and what was wrong with it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from sweep.errors import SweepError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# the most bytes a file of each kind may hold: far above any real one, far below a machine's memory
LIMITS: dict[str, int] = {
    "yaml": 4 * MiB,  # a config, chosen.yaml or search space is a few hundred bytes
    "json": 64 * MiB,  # study.json: a study's settings
    "checkpoint": 4 * GiB,  # a state_dict; ResNet-50's is 100 MB
    "idx": 1 * GiB,  # an IDX data file, and what a .gz one expands to; MNIST's largest is 47 MB
    "cifar": 256 * MiB,  # one CIFAR-10 python batch is 31 MB
    "parquet": 4 * GiB,  # a study's trials.parquet / accuracy.parquet
}

# how a message names each kind
KIND_NAMES = {"yaml": "YAML", "json": "JSON", "checkpoint": "checkpoint", "idx": "IDX", "cifar": "CIFAR-10 batch",
              "parquet": "Parquet"}

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def size_text(n: int) -> str:
    """``1.5 GB``, ``4 MB``, ``300 bytes``: a size as a message shows it."""
    for unit, name in ((GiB, "GB"), (MiB, "MB"), (KiB, "kB")):
        if n >= unit:
            return f"{n / unit:.3g} {name}"
    return f"{n} bytes"


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike[str], what: str, kind: str,
                 error: type[SweepError] = SweepError) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file within ``LIMITS[kind]``; the caller closes it.

    Args:
        path: The file.
        what: Names it in messages (``"pretrained file"``, ``"search space"``).
        kind: A key of :data:`LIMITS`.
        error: The typed error raised.

    Raises:
        SweepError (``error``): missing, unreadable, not a regular file, or larger than the cap.
    """
    file = Path(path)
    try:  # O_NONBLOCK: a named pipe opens at once instead of waiting for a writer, and is refused below
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"cannot read {what} {file}: it does not exist") from None
    except OSError as err:
        raise error(f"cannot read {what} {file}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {file} is {file_kind(info.st_mode)}, not a regular file")
        check_size(info.st_size, file, what, kind, error)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_size(size: int, file: str | os.PathLike[str], what: str, kind: str,
               error: type[SweepError] = SweepError) -> None:
    """Refuse ``size`` bytes of a ``kind`` file above its cap."""
    limit = LIMITS[kind]
    if size > limit:
        raise error(f"{what} {file} holds {size:,} bytes; {KIND_NAMES[kind]} files are read up to "
                    f"{size_text(limit)}")


def check_regular(path: str | os.PathLike[str], what: str, kind: str, error: type[SweepError] = SweepError) -> None:
    """Check, without reading it, that ``path`` is a regular file within its kind's cap."""
    open_regular(path, what, kind, error).close()


def read_regular(path: str | os.PathLike[str], what: str, kind: str, error: type[SweepError] = SweepError) -> bytes:
    """The bytes of ``path``, a regular file within ``LIMITS[kind]`` (see :func:`open_regular`)."""
    limit = LIMITS[kind]
    with open_regular(path, what, kind, error) as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as err:
            raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    check_size(len(data), path, what, kind, error)  # it grew while being read
    return data


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (psutil when installed, else sysconf); None: unknown."""
    try:
        import psutil  # type: ignore[import-untyped]  # comes with Ray; optional here

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - not installed, or no /proc: fall back
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str, error: type[SweepError] = SweepError) -> None:
    """Refuse, before allocating, ``needed`` bytes that this machine does not have available."""
    available = available_memory()
    if available is not None and needed > available:
        raise error(f"{what} would need about {size_text(needed)} of memory; this machine has "
                    f"{size_text(available)} available")
