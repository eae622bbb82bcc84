"""The study's Parquet files, written atomically as trials finish.

``trials.parquet`` is the commit record: ``accuracy.parquet`` is written first, then
``trials.parquet``, each through a temporary file and ``os.replace``. A kill at any point
leaves both files readable; accuracy rows of a trial that never reached ``trials.parquet``
are dropped on the next load, and a trial already recorded is never recorded twice.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import socket
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sweep.atomic import atomic_write, file_kind, temporary_target
from sweep.errors import ResultsError, SweepError
from sweep.hparams import BY_NAME
from sweep.reading import check_regular
from sweep.results.schema import (
    ACCURACY_COLUMNS,
    ACCURACY_FILE,
    COMPUTE_COLUMNS,
    DERIVED_COLUMN,
    HYPERPARAMETERS,
    IMPORTANCE_COLUMNS,
    METRICS,
    OPTIONAL_COLUMNS,
    PRUNED_COLUMNS,
    RUNGS_COLUMNS,
    RUNGS_FILE,
    SCHEMA_VERSION,
    SPLITS,
    STUDY_FILE,
    TRIALS_COLUMNS,
    TRIALS_FILE,
    metric_column,
)

LOCK_FILE = ".lock"
JOURNAL_FILE = "optuna.journal"  # the Optuna study (a journal Optuna appends to)
WRITES_FILE = "writes.json"  # every node and folder outside the study a sweep wrote to (sweep clean's list)

_ARROW_TYPES = {int: pa.int64(), float: pa.float64(), str: pa.string()}
_HP_TYPES = {name: _ARROW_TYPES[BY_NAME[name].type] for name in HYPERPARAMETERS}  # every hyperparameter is a scalar

_TRIALS_TYPES: dict[str, pa.DataType] = {
    "study": pa.string(), "trial_id": pa.string(), "status": pa.string(), "reason": pa.string(),
    "role": pa.string(), DERIVED_COLUMN: pa.string(), "strategy": pa.string(), "benchmark": pa.string(),
    "scenario": pa.string(),
    "model": pa.string(), "num_tasks": pa.int64(),
    **{f"hp_{k}": v for k, v in _HP_TYPES.items()},
    "n_seeds": pa.int64(), "seeds": pa.string(), "config": pa.string(),
    **{metric_column(s, m, stat): pa.float64() for s in SPLITS for m in METRICS for stat in ("mean", "std")},
    "pruned_task": pa.int64(), "pruned_epoch": pa.int64(),
    **{name: pa.float64() for name in PRUNED_COLUMNS if name.startswith("partial_")},
    **{name: pa.int64() for name in COMPUTE_COLUMNS},
    "fisher_mean": pa.float64(), "fisher_trace": pa.float64(), **{name: pa.float64() for name in IMPORTANCE_COLUMNS},
    "trainable_params": pa.float64(),
    "duration_s": pa.float64(), "node": pa.string(),
    "finished_at": pa.string(), "code_version": pa.string(), "torch_version": pa.string(),
    "ray_version": pa.string(), "optuna_version": pa.string(), "schema_version": pa.int64(),
}
TRIALS_SCHEMA = pa.schema([(name, _TRIALS_TYPES[name]) for name in TRIALS_COLUMNS])
ACCURACY_SCHEMA = pa.schema([
    ("study", pa.string()), ("trial_id", pa.string()), ("seed", pa.int64()), ("split", pa.string()),
    ("after_task", pa.int64()), ("eval_task", pa.int64()), ("accuracy", pa.float64()),
])
assert tuple(ACCURACY_SCHEMA.names) == ACCURACY_COLUMNS
RUNGS_SCHEMA = pa.schema([
    ("study", pa.string()), ("trial_id", pa.string()), ("task", pa.int64()), ("epoch", pa.int64()),
    *((name, pa.float64()) for name in RUNGS_COLUMNS if name.startswith("val_")),
    ("compute_samples", pa.int64()), ("optimizer_steps", pa.int64()), ("decides", pa.bool_()), ("stopped", pa.bool_()),
])
assert tuple(RUNGS_SCHEMA.names) == RUNGS_COLUMNS


def atomic_write_table(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that a reader sees the old file or the new one, never a torn one."""
    atomic_write(path, lambda handle: pq.write_table(table, handle))
    _fsync_dir(path.parent)  # the rename itself survives a power cut, not only a killed process


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


# --- the study folder's own names: never links
# files the tool writes in a study folder, and folders it writes there (old studies: always these two)
STUDY_FILES = (LOCK_FILE, TRIALS_FILE, ACCURACY_FILE, RUNGS_FILE, STUDY_FILE, JOURNAL_FILE, WRITES_FILE)
STUDY_FOLDERS = ("cache", "ray")
# `sweep run --log`'s trackers write here; study.json records it (its writes) before a sweep writes it
TRACKERS_FOLDER = "trackers"


def check_study_folder(study_dir: str | os.PathLike[str]) -> None:
    """Refuse, in one line, a study folder whose lock, results, cache, Tune or trackers folder or temporary files
    are links (or of the wrong kind): the tool would write through them. A missing folder passes."""
    study = Path(study_dir)
    try:
        entries = os.listdir(study)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise SweepError(f"{study} is not writable: a part of its path is a file, not a folder") from None
    except OSError as err:
        raise SweepError(f"cannot read the study folder {study}: {err.strerror or err}") from None
    for entry in entries:
        wanted = (stat.S_ISREG if entry in STUDY_FILES or entry.endswith(".tmp") else
                  stat.S_ISDIR if entry in STUDY_FOLDERS or entry == TRACKERS_FOLDER else None)
        if wanted is None:
            continue
        try:
            mode = os.lstat(study / entry).st_mode
        except FileNotFoundError:  # removed since the listing
            continue
        if not wanted(mode):
            raise SweepError(f"{study / entry} is {file_kind(mode)}; refusing to use the study folder {study} "
                             f"(the tool never makes it one: remove it)")


def temporary_leftovers(study_dir: str | os.PathLike[str]) -> list[Path]:
    """Temporary files of the tool's atomic writes of the study's own files (a kill left them), by their exact
    pattern; the caller holds the study's lock, so no write of them is under way."""
    study = Path(study_dir)
    found = []
    for entry in os.listdir(study):
        try:
            if temporary_target(entry) in STUDY_FILES and stat.S_ISREG(os.lstat(study / entry).st_mode):
                found.append(study / entry)
        except FileNotFoundError:  # removed since the listing
            continue
    return sorted(found)


def _open_lock(lock: Path, flags: int) -> int:
    """Open the lock file without following a link, and only if it is a regular file with one name."""
    try:
        fd = os.open(lock, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SweepError(f"{lock} is a symbolic link; refusing to use the study folder {lock.parent} "
                             "(the tool never makes it one: remove it)") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:  # a hard link would truncate another file
        os.close(fd)
        what = file_kind(info.st_mode) if not stat.S_ISREG(info.st_mode) else f"a file with {info.st_nlink} names"
        raise SweepError(f"{lock} is {what}; refusing to use the study folder {lock.parent} (remove it)")
    return fd


# --- the study lock: one driver per study
def acquire_study_lock(study_dir: str | os.PathLike[str]) -> int:
    """Take ``<study>/.lock`` or refuse with a one-line :class:`SweepError` naming its holder.

    An exclusive ``flock``, not a pid file: the kernel drops it when its holder dies, so a lock
    left by a killed driver never blocks a resume, a reused pid never looks like a live driver,
    and two drivers racing for a stale lock cannot both win. Returns the descriptor to release.
    The lock is never opened through a link, and a study folder whose own names are links is refused.
    """
    check_study_folder(study_dir)
    lock = Path(study_dir) / LOCK_FILE
    for _ in range(10):
        try:
            mode = os.lstat(lock).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):  # never even open a device or a fifo
            raise SweepError(f"{lock} is {file_kind(mode)}; refusing to use the study folder {study_dir} (remove it)")
        try:
            fd = _open_lock(lock, os.O_CREAT | os.O_RDWR)
        except OSError as err:  # a read-only mount, a full disk: one line, not a traceback
            raise SweepError(f"cannot take the lock {lock}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: someone holds it
            holder = _holder(fd)
            os.close(fd)
            raise SweepError(locked_message(study_dir, holder)) from None
        try:
            current = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
            except OSError as err:  # a full disk: the lock is ours, so it goes, and nothing is left behind
                release_study_lock(study_dir, fd)
                raise SweepError(f"cannot take the lock {lock}: {err.strerror or err}") from None
            return fd
        os.close(fd)  # its holder removed the file between our open and our lock: take the new one
    raise SweepError(f"cannot take the lock {lock}: it keeps being replaced")


def study_lock_holder(study_dir: str | os.PathLike[str]) -> str | None:
    """Who holds the study's lock (``"process 123 on host"``), or None when no one does; takes nothing."""
    lock = Path(study_dir) / LOCK_FILE
    try:
        mode = os.lstat(lock).st_mode
    except OSError:  # no lock file (or no folder): no driver
        return None
    if not stat.S_ISREG(mode):
        raise SweepError(f"{lock} is {file_kind(mode)}; refusing to use the study folder {study_dir} (remove it)")
    try:
        fd = _open_lock(lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _holder(fd)
    finally:
        os.close(fd)  # also drops the shared lock, if we got it
    return None


def locked_message(study_dir: str | os.PathLike[str], holder: str) -> str:
    return (f"study {study_dir} is already being run by {holder}; wait for it to finish (or stop it), "
            "then resume with --resume")


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"


def release_study_lock(study_dir: str | os.PathLike[str], fd: int) -> None:
    (Path(study_dir) / LOCK_FILE).unlink(missing_ok=True)  # while still held: no one can lock a stale inode
    os.close(fd)


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    """Read a study file, refusing a truncated file or one of another schema with one line."""
    check_regular(path, "study file", "parquet", ResultsError)  # not a device or a pipe; within the cap
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ResultsError(f"{path} is not a readable Parquet file ({type(err).__name__}): "
                           "truncated or corrupt") from None
    if "schema_version" in schema.names and "schema_version" in table.column_names and table.num_rows:
        versions = set(table.column("schema_version").to_pylist())
        if versions != {SCHEMA_VERSION}:  # before the columns: an older study is named as such
            raise ResultsError(f"{path} has schema_version {sorted(versions)}; this version reads {SCHEMA_VERSION}")
    missing = [name for name in schema.names if name not in table.column_names]
    required = [name for name in missing if name not in OPTIONAL_COLUMNS]
    if required:  # the columns that make it another schema's file, named first; then the optional ones it lacks
        optional = [name for name in missing if name in OPTIONAL_COLUMNS]
        raise ResultsError(f"{path} is from another schema: missing columns {', '.join(required[:5])}"
                           + (f" and {len(required) - 5} more" if len(required) > 5 else "")
                           + (f" (and optional ones: {', '.join(optional[:5])}"
                              + (f" and {len(optional) - 5} more)" if len(optional) > 5 else ")") if optional else ""))
    for name in missing:  # written before these columns existed: null (a hyperparameter's: the default of its time)
        table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowException, ValueError) as err:
        raise ResultsError(f"{path} has columns of the wrong type ({str(err).splitlines()[0][:120]})") from None


def _clean(value: Any) -> Any:
    """Parquet nulls for NaN, None and missing; plain Python scalars otherwise."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class StudyStore:
    """Append-only, deduplicated view of one study's Parquet files (trials, accuracy, rungs)."""

    def __init__(self, study_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(study_dir)
        self.trials_path = self.dir / TRIALS_FILE
        self.accuracy_path = self.dir / ACCURACY_FILE
        self.rungs_path = self.dir / RUNGS_FILE
        self.trials: list[dict[str, Any]] = []
        self.accuracy: list[dict[str, Any]] = []
        self.rungs: list[dict[str, Any]] = []
        if self.trials_path.exists():
            self.trials = read_table(self.trials_path, TRIALS_SCHEMA).to_pylist()
        recorded = {row["trial_id"] for row in self.trials}
        if self.accuracy_path.exists():
            rows = read_table(self.accuracy_path, ACCURACY_SCHEMA).to_pylist()
            self.accuracy = [row for row in rows if row["trial_id"] in recorded]  # drop uncommitted rows
        if self.rungs_path.exists():
            rows = read_table(self.rungs_path, RUNGS_SCHEMA).to_pylist()
            self.rungs = [row for row in rows if row["trial_id"] in recorded]

    def trial_ids(self) -> set[str]:
        return {row["trial_id"] for row in self.trials}

    def has(self, trial_id: str) -> bool:
        return any(row["trial_id"] == trial_id for row in self.trials)

    def count(self, role: str | None = None) -> int:
        """Trials trained (a derived row is a variant of one, not a trial of its own)."""
        return sum(1 for row in self.trials if (role is None or row["role"] == role) and not row.get(DERIVED_COLUMN))

    def add(self, trial: Mapping[str, Any], accuracy: Iterable[Mapping[str, Any]],
            rungs: Iterable[Mapping[str, Any]] = (),
            derived: Iterable[tuple[Mapping[str, Any], Iterable[Mapping[str, Any]]]] = ()) -> bool:
        """Record one trial, with its ``derived`` rows (free variants: (trial row, accuracy rows) each), in one
        commit; False (and nothing written) if its trial_id is already recorded.

        Its rung and accuracy rows are written before the trial rows, which commit them: rows of a
        trial a kill left out of ``trials.parquet`` are dropped when the study is read.
        """
        if self.has(str(trial["trial_id"])):
            return False
        records = [(trial, accuracy), *derived]
        rows, acc_rows = [], []
        for record, record_accuracy in records:
            unknown = set(record) - set(TRIALS_COLUMNS)
            if unknown:
                raise ValueError(f"unknown trial columns: {sorted(unknown)}")
            row = {name: _clean(record.get(name)) for name in TRIALS_COLUMNS}
            rows.append({**row, "schema_version": SCHEMA_VERSION})
            acc_rows += [{name: _clean(r.get(name)) for name in ACCURACY_COLUMNS} for r in record_accuracy]
        rung_rows = [{name: _clean(r.get(name)) for name in RUNGS_COLUMNS} for r in rungs]
        new_accuracy = self.accuracy + acc_rows
        new_rungs = self.rungs + rung_rows
        new_trials = self.trials + rows
        self.dir.mkdir(parents=True, exist_ok=True)
        if rung_rows:
            atomic_write_table(pa.Table.from_pylist(new_rungs, schema=RUNGS_SCHEMA), self.rungs_path)
        atomic_write_table(pa.Table.from_pylist(new_accuracy, schema=ACCURACY_SCHEMA), self.accuracy_path)
        atomic_write_table(pa.Table.from_pylist(new_trials, schema=TRIALS_SCHEMA), self.trials_path)
        self.accuracy, self.rungs, self.trials = new_accuracy, new_rungs, new_trials
        return True
