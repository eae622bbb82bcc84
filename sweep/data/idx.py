"""Reader for IDX files (the MNIST format), plain or gzipped, with one-line errors.

Layout: two zero bytes, a dtype code, the number of dimensions, one big-endian uint32 size per
dimension, then the data in C order (big-endian). A file that breaks any of this raises a
:class:`~sweep.errors.DataError` naming the file, never a numpy or gzip traceback; so does one that
is not a regular file, or declares more data than an IDX file may hold or the machine has memory for.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from pathlib import Path
from typing import IO, cast

import numpy as np

from sweep.errors import DataError
from sweep.reading import LIMITS, check_memory, open_regular, size_text

# IDX dtype code -> numpy dtype as stored (big-endian)
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


MAX_DIMS = 8  # IDX files hold images (3 dimensions) or labels (1); numpy itself stops at 64


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, decompressing it on the fly when its name ends in ``.gz``.

    Parsed arrays are cached in-process, keyed on the resolved path, modification time and size,
    so building a benchmark twice does not decompress the files twice; a replaced file is read
    again. The returned array is read-only because it is shared through that cache.

    Only a regular file is read, and never more than :data:`sweep.reading.LIMITS` ``["idx"]``
    bytes, compressed or not: the header's shape is checked against that cap and the memory
    available before the data is read (a small gzip file may expand to gigabytes).

    Args:
        path: the IDX file, e.g. ``<root>/MNIST/raw/train-images-idx3-ubyte.gz``.

    Returns:
        An array of the declared shape and dtype (multi-byte dtypes in native byte order).

    Raises:
        DataError: the file cannot be read, is not a regular file or too large, is not gzip although
            named ``.gz``, or is not a well-formed IDX file (magic number, dtype code, dimensions, length).
    """
    resolved = Path(path).expanduser().resolve()
    with open_regular(resolved, "IDX file", "idx", DataError) as handle:
        stat = os.fstat(handle.fileno())
    return _read_idx_cached(str(resolved), stat.st_mtime_ns, stat.st_size)


def clear_idx_cache() -> None:
    """Drop the cached arrays (about 110 MB once MNIST and Fashion-MNIST have been read)."""
    _read_idx_cached.cache_clear()


@functools.lru_cache(maxsize=16)  # MNIST + Fashion-MNIST are 8 files; room for a few more roots
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    del mtime_ns, size  # part of the cache key only
    with open_regular(path, "IDX file", "idx", DataError) as raw:
        if not path.endswith(".gz"):
            return _read_stream(raw, path, os.fstat(raw.fileno()).st_size)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _read_stream(cast(IO[bytes], stream), path, None)
        except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; EOFError = cut short
            raise DataError(f"{path}: corrupt or truncated gzip file ({err})") from None


def _read_stream(stream: IO[bytes], name: str, size: int | None) -> np.ndarray:
    """Read an IDX file from ``stream`` (``size``: its length when known, None for a gzip stream): the
    header first, then only as many bytes as its shape declares, once they are known to fit."""
    head = stream.read(4)
    ndim = _check_magic(head, name)
    dims = stream.read(4 * ndim)
    header = 4 + 4 * ndim
    if len(dims) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header ({4 + len(dims)} bytes; {ndim} dimensions need {header})")
    shape = tuple(int(s) for s in np.frombuffer(dims, dtype=">u4"))
    dtype = IDX_DTYPES[head[2]]
    expected = math.prod(shape) * dtype.itemsize
    limit = LIMITS["idx"]
    if expected > limit:
        raise DataError(f"{name}: the header declares shape {shape} ({expected:,} bytes of data); IDX files "
                        f"are read up to {size_text(limit)}")
    check_memory(expected, f"{name}: shape {shape}", DataError)
    data = stream.read(expected + 1)
    if len(data) < expected:
        raise DataError(
            f"{name}: truncated: the header declares shape {shape} ({expected} data bytes) "
            f"but the file holds {len(data)}"
        )
    if len(data) > expected:
        extra = size - header - expected if size is not None else None
        raise DataError(f"{name}: {extra if extra is not None else 'some'} unexpected bytes after the declared "
                        f"shape {shape}")
    return _array(data, shape, dtype, 0)


def _check_magic(head: bytes, name: str) -> int:
    """The number of dimensions the 4-byte magic number declares, once it is a valid one."""
    if len(head) < 4:
        raise DataError(f"{name}: not an IDX file (only {len(head)} bytes; the header alone needs 4)")
    magic = head[:4].hex()
    if head[0] != 0 or head[1] != 0:
        raise DataError(f"{name}: not an IDX file (magic number 0x{magic}; IDX files start with 0x0000)")
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
        raise DataError(
            f"{name}: unknown IDX dtype code 0x{code:02x} (magic number 0x{magic}; allowed: {allowed})"
        )
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions (magic number 0x{magic})")
    if ndim > MAX_DIMS:
        raise DataError(f"{name}: IDX header declares {ndim} dimensions (magic number 0x{magic}); at most "
                        f"{MAX_DIMS} are read")
    return ndim


def _array(data: bytes, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> np.ndarray:
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))  # torch cannot wrap big-endian arrays
    array.flags.writeable = False  # shared through the cache: nobody may change it in place
    return array


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file; ``name`` is used in error messages."""
    ndim = _check_magic(data[:4], name)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes; {ndim} dimensions need {header})")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[data[2]]
    expected, actual = math.prod(shape) * dtype.itemsize, len(data) - header
    if actual < expected:
        raise DataError(
            f"{name}: truncated: the header declares shape {shape} ({expected} data bytes) "
            f"but the file holds {actual}"
        )
    if actual > expected:
        raise DataError(f"{name}: {actual - expected} unexpected bytes after the declared shape {shape}")
    return _array(data, shape, dtype, header)
