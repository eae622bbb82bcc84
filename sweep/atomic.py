"""One way to replace a file: write a temporary file beside it, fsync, rename over it.

A reader (or a process killed at any instant) sees the old file or the new one, never half
of one. Every writer of results, caches, checkpoints and study metadata goes through here.

Nothing is written through a link: the temporary file is created new (``O_CREAT | O_EXCL |
O_NOFOLLOW``), under a random name of one fixed pattern (:func:`is_temporary_name`), and a
destination that exists but is not a regular file (a symbolic link, a device, a fifo, a socket, a
directory) is refused with one line, never replaced.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from sweep.errors import SweepError

_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket"))
# ".<name>.<16 hex>.tmp" (this version); ".<name>.<8 of [a-z0-9_]>.tmp" (mkstemp's, before it)
_TEMPORARY = re.compile(r"\.(?P<name>[^/]+)\.(?:[0-9a-f]{16}|[a-z0-9_]{8})\.tmp")
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class NotARegularFile(SweepError):
    """A path the tool would write is a link, a device, a fifo, a socket or a directory."""


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words: "a symbolic link", "a character device", ... or "a regular file"."""
    fallback = "a regular file" if stat.S_ISREG(mode) else "a special file"
    return next((kind for test, kind in _KINDS if test(mode)), fallback)


def check_regular_target(path: str | os.PathLike[str]) -> None:
    """Refuse, with one line naming it, a ``path`` that exists and is not a regular file (links are not followed)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise NotARegularFile(f"cannot write {os.fspath(path)}: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"{os.fspath(path)} is {file_kind(mode)}, not a regular file; refusing to replace it "
                              "(give the path of a regular file, or of none)")


def temporary_name(name: str) -> str:
    """The name of a temporary file that will become ``name``: ``.<name>.<16 random hex>.tmp``."""
    return f".{name}.{secrets.token_hex(8)}.tmp"


def temporary_target(entry: str) -> str | None:
    """The file a temporary file named ``entry`` was to become, if ``entry`` has this module's pattern; else None."""
    match = _TEMPORARY.fullmatch(entry)
    return match.group("name") if match else None


def create_new(path: str | os.PathLike[str], mode: int = 0o666) -> int:
    """Create ``path`` as a new file for writing, never through a link; returns its descriptor.

    ``FileExistsError`` when anything (a link included) is already there; the mode is ``mode`` less the umask.
    """
    return os.open(path, _CREATE_NEW, mode)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file in ``path``'s folder, then rename it over ``path``.

    Args:
        path: the destination; its folder must exist. If it exists it must be a regular file.
        write: writes the whole content to the binary handle it is given.

    Returns:
        The destination path.

    Raises:
        NotARegularFile: ``path`` is a link, a device, a fifo, a socket or a directory (it is left as it is).
    """
    path = Path(path)
    check_regular_target(path)  # before any work: a device or a link is refused, never replaced
    while True:
        tmp = path.parent / temporary_name(path.name)
        try:
            fd = create_new(tmp)  # the mode a plain open() would give: 0666 less the umask
            break
        except FileExistsError:  # 2**64 names: only someone who planted this one
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        check_regular_target(path)  # again, just before the rename: the window is the rename itself
        os.replace(tmp, path)  # a rename replaces the name; it never writes through what the name was
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
