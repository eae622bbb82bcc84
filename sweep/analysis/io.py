"""Read a study's Parquet results, refusing anything that is not the current schema.

The analysis side reads only ``results/<study>/trials.parquet`` and ``accuracy.parquet``, with
pyarrow (nothing is unpickled), and checks columns, ``schema_version``, statuses, roles and
trial ids before any number is used: a file from another version of the sweep, or a truncated
one, is refused with a one-line :class:`~sweep.errors.ResultsError` rather than misread. A
hyperparameter column added since a file was written reads as null (the default of its time).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sweep.atomic import atomic_write, check_regular_target
from sweep.errors import ResultsError
from sweep.hparams import BY_NAME
from sweep.reading import check_regular
from sweep.results import schema
from sweep.results.schema import ACCURACY_FILE, TRIALS_FILE

# how a hyperparameter column reads when a file lacks it: as pandas reads a column of nulls of its type
_HP_DTYPES = {f"hp_{name}": "object" if BY_NAME[name].type is str else "float64" for name in schema.HYPERPARAMETERS}
# columns that hold numbers in both files: every metric, the Fisher, durations, counts, accuracy rows' indices
_NUMERIC = frozenset({
    *(schema.metric_column(s, m, stat) for s in schema.SPLITS for m in schema.METRICS for stat in ("mean", "std")),
    "fisher_mean", "fisher_trace", *schema.IMPORTANCE_COLUMNS, "duration_s", "n_seeds", "num_tasks", "schema_version",
    *(column for column, dtype in _HP_DTYPES.items() if dtype == "float64"),
    "seed", "after_task", "eval_task", "accuracy",
    schema.TRAINABLE_COLUMN,  # the adapter strategy's count of trained parameters
})


@dataclass(frozen=True, eq=False)
class Study:
    """One study's results, as read from its folder.

    Attributes:
        name: The study's name (its folder name; made unique by :func:`load_studies`).
        path: The study folder.
        trials: One row per trial, columns :data:`sweep.schema.TRIALS_COLUMNS` (and maybe more).
        accuracy: Long-format accuracy rows, columns :data:`sweep.schema.ACCURACY_COLUMNS`; empty
            when the study has no ``accuracy.parquet`` yet (the trials table alone has every metric).
    """

    name: str
    path: Path
    trials: pd.DataFrame
    accuracy: pd.DataFrame

    def finished(self, role: str | None = "search") -> pd.DataFrame:
        """Finished trials of one role (``None``: every role)."""
        rows = self.trials[self.trials["status"] == "finished"]
        return rows if role is None else rows[rows["role"] == role]

    def reference(self, role: str) -> pd.Series | None:
        """The finished ``naive`` or ``joint`` reference row, or ``None`` if the study has none.

        A study runs each reference once; should a rerun have left two, the latest finished wins.
        """
        rows = self.finished(role)
        if rows.empty:
            return None
        return rows.sort_values("finished_at", kind="stable").iloc[-1]

    def searched_params(self) -> list[str]:
        """Hyperparameters (no ``hp_`` prefix) that take more than one value among finished search trials."""
        rows = self.finished("search")
        return [name for name in schema.HYPERPARAMETERS if rows[f"hp_{name}"].dropna().nunique() > 1]

    def setting(self, column: str) -> str:
        """A setting column's value (strategy, benchmark, ...) over search trials; ", "-joined if mixed."""
        rows = self.trials[self.trials["role"] == "search"]
        if rows.empty:
            rows = self.trials
        values = sorted({str(value) for value in rows[column].dropna()})
        return ", ".join(values) if values else "?"


def load_study(path: str | os.PathLike[str]) -> Study:
    """Read and check one study folder.

    Args:
        path: ``results/<study>`` (or the ``trials.parquet`` inside it).

    Returns:
        The :class:`Study`.

    Raises:
        ResultsError: no study there; a Parquet file truncated or unreadable; a required column
            missing; another ``schema_version``; an unknown status or role; a duplicated trial id.
    """
    folder = Path(path)
    if folder.name == TRIALS_FILE and not folder.is_dir():
        folder = folder.parent
    trials_file = folder / TRIALS_FILE
    if not (trials_file.exists() or trials_file.is_symlink()):  # a device or a pipe there is named as such below
        raise ResultsError(f"no study at {folder}: expected {trials_file}")
    trials = _read_checked(trials_file, schema.TRIALS_COLUMNS)
    _check_values(trials_file, trials)
    accuracy_file = folder / ACCURACY_FILE
    if accuracy_file.exists() or accuracy_file.is_symlink():
        accuracy = _read_checked(accuracy_file, schema.ACCURACY_COLUMNS)
        # the sweep writes accuracy rows before their trial's row; a kill in between leaves rows
        # of a trial that was never recorded, which are not part of the study
        accuracy = accuracy[accuracy["trial_id"].isin(trials["trial_id"])].reset_index(drop=True)
    else:
        accuracy = pd.DataFrame({column: pd.Series(dtype=object) for column in schema.ACCURACY_COLUMNS})
    return Study(name=folder.resolve().name, path=folder, trials=trials, accuracy=accuracy)


def load_studies(paths: Iterable[str | os.PathLike[str]]) -> list[Study]:
    """Read several studies for a comparison; names are made unique with their parent folder.

    Raises:
        ResultsError: no path given, or any study fails :func:`load_study`.
    """
    studies = [load_study(path) for path in paths]
    if not studies:
        raise ResultsError("no study given: pass at least one results/<study> folder")
    names = [study.name for study in studies]
    unique: list[Study] = []
    for study in studies:
        name = study.name
        if names.count(name) > 1:
            # results_a/ewc and results_b/ewc must stay apart in a combined table
            name = f"{study.path.resolve().parent.name}/{name}"
        unique.append(Study(name=name, path=study.path, trials=study.trials, accuracy=study.accuracy))
    if len({study.name for study in unique}) < len(unique):
        raise ResultsError(f"the same study is given twice: {', '.join(names)}")
    return unique


def _read_checked(file: Path, required: tuple[str, ...]) -> pd.DataFrame:
    # a regular file within the Parquet cap: a device or a pipe named trials.parquet is refused unread (read
    # by its path then: Arrow reading from a Python buffer can abort the interpreter at exit)
    check_regular(file, "results file", "parquet", ResultsError)
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as err:
        raise ResultsError(f"cannot read {file} (truncated or not Parquet?): {err}") from err
    columns = set(table.column_names)
    if "schema_version" in columns:
        versions = sorted({v for v in table.column("schema_version").to_pylist()}, key=str)
        if versions and versions != [schema.SCHEMA_VERSION]:
            found = ", ".join(str(v) for v in versions)
            raise ResultsError(
                f"{file} has schema_version {found}; this sweep reads version {schema.SCHEMA_VERSION}:"
                " analyse it with the sweep version that wrote it, or re-run the study"
            )
    _check_numeric(file, table)
    missing = [column for column in required if column not in columns]
    # a hyperparameter column the file lacks was added after it was written: null, the default of its time
    # (so are the pruning and compute columns: a study from before them pruned nothing and counted nothing);
    # any other column missing, and the file is of another schema (every missing column is named)
    absent = [column for column in missing if column in schema.OPTIONAL_COLUMNS]
    other = [column for column in missing if column not in schema.OPTIONAL_COLUMNS]
    if other:  # named first; then the optional ones it lacks (a file of this schema may lack those)
        shown = ", ".join(other[:8]) + (f" and {len(other) - 8} more" if len(other) > 8 else "")
        optional = (f" (and optional ones: {', '.join(absent[:5])}" + (
            f" and {len(absent) - 5} more)" if len(absent) > 5 else ")")) if absent else ""
        raise ResultsError(f"{file} lacks column(s) {shown} of schema version {schema.SCHEMA_VERSION}{optional}")
    try:
        frame = table.to_pandas()
    except (pa.ArrowException, ValueError, TypeError) as err:
        raise ResultsError(f"cannot convert {file} to a table: {err}") from err
    for column in absent:
        dtype = _HP_DTYPES.get(column, "object" if column == schema.DERIVED_COLUMN else "float64")
        frame[column] = pd.Series([None] * len(frame), index=frame.index, dtype=dtype)
    return frame


def _check_numeric(file: Path, table: pa.Table) -> None:
    """Refuse a column of numbers that holds something else (strings: "0.93" is not a metric)."""
    for name in table.column_names:
        if name not in _NUMERIC:
            continue
        kind = table.schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
            raise ResultsError(f"{file}: column {name} holds {kind} values; it must hold numbers "
                               "(a file this sweep did not write?)")


def _check_values(file: Path, trials: pd.DataFrame) -> None:
    for column, allowed in (("status", schema.STATUSES), ("role", schema.ROLES)):
        bad = sorted({str(v) for v in trials[column]} - set(allowed))
        if bad:
            raise ResultsError(f"{file}: unknown {column} {', '.join(bad)} (allowed: {', '.join(allowed)})")
    duplicated = trials["trial_id"][trials["trial_id"].duplicated()]
    if not duplicated.empty:
        ids = ", ".join(sorted({str(v) for v in duplicated})[:5])
        raise ResultsError(f"{file}: trial id(s) {ids} appear more than once; each trial must be one row")


def _write_via_tmp(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Create ``path``'s folder and write it atomically; OSError -> one-line ResultsError. Only a regular file is
    ever replaced: a directory, a link, a device, a fifo at ``path`` is refused in one line (NotARegularFile)."""
    check_regular_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, write)
    except OSError as err:
        raise ResultsError(f"cannot write {path}: {err.strerror or err}") from err


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write a file so that a crash leaves either the old file or the new one, never half of one.

    Args:
        path: The destination; its folder is created if missing.
        data: The content (``str`` is written as UTF-8).

    Returns:
        The destination path.

    Raises:
        NotARegularFile: the destination exists and is not a regular file (a directory, a link, a device...).
        ResultsError: the destination cannot be written.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data

    return _write_via_tmp(Path(path), lambda handle: handle.write(payload))


def write_parquet_atomic(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a DataFrame to Parquet through a temporary file and a rename (see :func:`write_atomic`)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)

    return _write_via_tmp(Path(path), lambda handle: pq.write_table(table, handle))
