"""What a study wrote besides its results, and removing exactly that: ``sweep clean``'s files side.

A study records, when it starts, the folders it will write (``study.json``'s ``writes``: its
task-prefix cache and Tune's storage, inside the study folder or in a ``--storage`` folder of its own;
with ``--log``, its ``trackers/`` folder, recorded too by a resume that adds ``--log``), and, as it
runs, every node and folder outside them that Ray Tune wrote for it (``writes.json``: each
experiment's folder in a node's Ray session, which holds Tune's experiment state, the searcher's
state, the trials' working folders and, on a node other than the driver's, the node's own task-prefix
cache). Cleaning first checks that the folder is a study this tool wrote (its ``study.json`` and
Parquet files have the tool's schema), then removes only what those records name, plus the tool's own
temporary files by their exact pattern. A study written before the records existed cleans its two
default folders, ``cache/`` and ``ray/``.

Nothing here imports Ray: visiting other nodes is :mod:`sweep.tune.cleaning`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sweep.atomic import atomic_write, create_new, file_kind
from sweep.errors import ResultsError
from sweep.results.schema import ACCURACY_COLUMNS, ACCURACY_FILE, STUDY_FILE, TRIALS_FILE
from sweep.results.store import STUDY_FOLDERS, TRACKERS_FOLDER, WRITES_FILE, temporary_leftovers

MAX_RECORD_BYTES = 4 << 20  # study.json, writes.json and a storage marker are a few kB
STORAGE_MARKER = ".sweep-study"  # in a --storage folder: the uid of the study it belongs to
# the keys every study.json this tool writes has, with their types
STUDY_KEYS: dict[str, type] = {"study": str, "strategy": str, "space_sha256": str, "base_config": dict,
                               "seeds": list, "objective": str}
TRIALS_CORE = ("study", "trial_id", "status", "role", "strategy", "schema_version")  # every version's
# names the tool gives Tune experiments (sweep.tune.driver) and Tune gives their session folders
EXPERIMENT = re.compile(r"(references|search)-\d{8}-\d{6}-\d{6}")
SESSION_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}(?:[._]\d+)?")


@dataclass(frozen=True)
class NodeFolder:
    """One folder a study's sweep wrote on one node: ``<root>/<timestamp>/<experiment>`` (Ray Tune's
    per-session folder of one experiment; root is ``<node's Ray session>/artifacts``)."""

    node: str  # Ray node id
    host: str  # its host name
    ip: str  # its address
    root: str
    experiment: str

    def describe(self) -> str:
        return f"{self.host} ({self.ip}, node {self.node[:12]})"


@dataclass(frozen=True)
class StudyWrites:
    """What ``study.json`` says the study writes: folders inside it, and its own folder in ``--storage``."""

    in_study: tuple[str, ...]
    storage: Path | None
    uid: str | None


# --- reading the records: bounded, regular files only, never through a link
def read_json_record(path: Path) -> Any:
    """A small JSON file the tool wrote; ResultsError (one line) for a link, a non-file, a huge or broken one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ResultsError(f"cannot read {path}: {err.strerror or err}"
                           + (" (a symbolic link)" if os.path.islink(path) else "")) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ResultsError(f"{path} is {file_kind(info.st_mode)}, not a file this tool wrote")
        if info.st_size > MAX_RECORD_BYTES:
            raise ResultsError(f"{path} is {info.st_size} bytes; the tool writes at most {MAX_RECORD_BYTES}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(MAX_RECORD_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # not UTF-8, not JSON
        raise ResultsError(f"{path} is not JSON; not a file this tool wrote") from None


def _check_parquet(path: Path, columns: tuple[str, ...]) -> None:
    try:
        names = set(pq.read_schema(path).names)
    except (pa.ArrowException, OSError):
        raise ResultsError(f"{path} is not a Parquet file; {path.parent} is not a study this tool wrote") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise ResultsError(f"{path} lacks the column(s) {', '.join(missing)}; {path.parent} is not a study "
                           "this tool wrote")


def check_is_study(study_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Refuse, in one line, a folder that is not a study this tool wrote; return its ``study.json`` (None when a
    study has only Parquet files, as :class:`~sweep.results.store.StudyStore` alone writes them). Reads only."""
    study = Path(study_dir)
    if not study.is_dir():
        raise ResultsError(f"no study at {study}: not a folder")
    meta_path, trials, accuracy = study / STUDY_FILE, study / TRIALS_FILE, study / ACCURACY_FILE
    present = {p.name for p in (meta_path, trials, accuracy) if os.path.lexists(p)}
    if not present & {STUDY_FILE, TRIALS_FILE}:
        raise ResultsError(f"no study at {study}: expected {meta_path} or {trials}")
    meta = None
    if STUDY_FILE in present:
        meta = read_json_record(meta_path)
        if not isinstance(meta, dict):
            raise ResultsError(f"{meta_path} is not a mapping; {study} is not a study this tool wrote")
        wrong = [key for key, kind in STUDY_KEYS.items() if not isinstance(meta.get(key), kind)]
        if wrong:
            raise ResultsError(f"{meta_path} lacks the key(s) {', '.join(wrong)} of the tool's study.json; "
                               f"{study} is not a study this tool wrote")
    for name, path, columns in ((TRIALS_FILE, trials, TRIALS_CORE), (ACCURACY_FILE, accuracy, ACCURACY_COLUMNS)):
        if name in present:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise ResultsError(f"{path} is {file_kind(os.lstat(path).st_mode)}, not a file this tool wrote")
            _check_parquet(path, columns)
    return meta


def study_writes(meta: dict[str, Any] | None, study_dir: Path) -> StudyWrites:
    """The folders ``study.json`` records; a study from before the record: its default ``cache/`` and ``ray/``."""
    if meta is None or "writes" not in meta:
        return StudyWrites(STUDY_FOLDERS, None, None)
    where = study_dir / STUDY_FILE
    writes = meta["writes"]
    if not isinstance(writes, dict) or not isinstance(writes.get("in_study"), list):
        raise ResultsError(f"{where}: writes is not the tool's record (a mapping with in_study)")
    unknown = [name for name in writes["in_study"] if name not in (*STUDY_FOLDERS, TRACKERS_FOLDER)]
    if unknown:  # never a results file, never a path: only the folders the tool writes in a study
        raise ResultsError(f"{where}: writes names {unknown[0]!r}; the tool writes only "
                           f"{', '.join((*STUDY_FOLDERS, TRACKERS_FOLDER))} in a study folder")
    storage = writes.get("storage")
    uid = meta.get("uid")
    if storage is not None and (not isinstance(storage, str) or not os.path.isabs(storage)
                                or not isinstance(uid, str) or not re.fullmatch(r"[0-9a-f]{32}", uid)):
        raise ResultsError(f"{where}: writes.storage must be an absolute path, with the study's uid")
    return StudyWrites(tuple(writes["in_study"]), Path(storage) if storage else None, uid)


# --- a study's own folder in --storage, marked with its uid so that only that folder is ever removed
def make_storage_folder(folder: Path, uid: str) -> None:
    """Create (or, on resume, check) ``folder`` and its marker holding ``uid``; ResultsError if another study's."""
    folder.mkdir(exist_ok=True)
    marker = folder / STORAGE_MARKER
    try:
        fd = create_new(marker)
    except FileExistsError:
        if not storage_folder_is(folder, uid):
            raise ResultsError(f"{folder} belongs to another study (its {STORAGE_MARKER} differs)") from None
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(uid)


def storage_folder_is(folder: Path, uid: str) -> bool:
    """Whether ``folder`` is a real folder (not a link) whose marker holds ``uid``."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return False
        fd = os.open(folder / STORAGE_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, 64).decode("ascii", "replace").strip() == uid
    finally:
        os.close(fd)


# --- writes.json: every node and folder of Ray sessions a sweep wrote to
def _node_folder(item: Any, where: Path) -> NodeFolder:
    fields = NodeFolder.__dataclass_fields__
    if not isinstance(item, dict) or set(item) != set(fields) or not all(isinstance(v, str) for v in item.values()):
        raise ResultsError(f"{where}: an entry is not the tool's record ({', '.join(fields)})")
    entry = NodeFolder(**item)
    if not valid_node_folder(entry):
        raise ResultsError(f"{where}: {entry.root}/*/{entry.experiment} is not a folder this tool writes")
    return entry


def valid_node_folder(entry: NodeFolder) -> bool:
    """Whether an entry names a folder of the form the tool records: ``<abs>/artifacts`` and an experiment name."""
    root = Path(entry.root)
    return (root.is_absolute() and root.name == "artifacts" and ".." not in root.parts
            and EXPERIMENT.fullmatch(entry.experiment) is not None)


def read_node_folders(study_dir: Path) -> list[NodeFolder]:
    path = study_dir / WRITES_FILE
    if not os.path.lexists(path):
        return []
    data = read_json_record(path)
    if not isinstance(data, dict) or not isinstance(data.get("folders"), list):
        raise ResultsError(f"{path} is not the tool's record (a mapping with folders)")
    return [_node_folder(item, path) for item in data["folders"]]


def write_node_folders(study_dir: Path, entries: list[NodeFolder]) -> None:
    """Replace ``writes.json`` with ``entries`` (removed when there are none); the caller holds the lock."""
    path = study_dir / WRITES_FILE
    if not entries:
        if os.path.lexists(path):
            path.unlink()
        return
    text = json.dumps({"folders": [asdict(e) for e in entries]}, indent=1).encode()
    atomic_write(path, lambda handle: handle.write(text))


def add_node_folders(study_dir: Path, new: list[NodeFolder]) -> None:
    """Add entries to ``writes.json`` (each once); the caller holds the study's lock."""
    entries = read_node_folders(study_dir)
    added = [e for e in dict.fromkeys(new) if e not in entries]
    if added:
        write_node_folders(study_dir, entries + added)


def remove_node_folder(entry: NodeFolder) -> tuple[list[str], list[str]]:
    """Remove ``<root>/<timestamp>/<experiment>`` for every session timestamp, on this machine. Returns (what was
    removed, what could not be); a timestamp folder left empty goes too."""
    if not valid_node_folder(entry):
        return [], [f"{entry.root}/*/{entry.experiment}: not a folder this tool writes"]
    root = Path(entry.root)
    try:
        stamps = sorted(s for s in os.listdir(root) if SESSION_TIMESTAMP.fullmatch(s))
    except FileNotFoundError:
        return [], []
    except OSError as err:
        return [], [f"{root}: {err.strerror or err}"]
    removed, left = [], []
    for stamp in stamps:
        folder = root / stamp / entry.experiment
        try:
            if remove_path(folder):
                removed.append(str(folder))
        except OSError as err:
            left.append(f"{folder}: {err.strerror or err}")
            continue
        with contextlib.suppress(OSError):  # only when empty: another experiment's folder may share the timestamp
            (root / stamp).rmdir()
    return removed, left


def remove_path(path: Path) -> bool:
    """Remove a file or a folder tree, never following a link (a link is removed itself); False if absent."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)  # fd-based: a link inside is removed, never followed
    else:
        path.unlink()
    return True


def local_host() -> str:
    return socket.gethostname()


def clean_study_files(study_dir: Path, meta: dict[str, Any] | None) -> list[Path]:
    """Remove what ``study.json`` records the study wrote (its default folders for an old study) and the tool's
    temporary files; the caller has checked the study and holds its lock. Returns what was removed."""
    writes = study_writes(meta, study_dir)
    removed = []
    for name in writes.in_study:
        if remove_path(study_dir / name):
            removed.append(study_dir / name)
    if writes.storage is not None and writes.uid is not None and os.path.lexists(writes.storage):
        if not storage_folder_is(writes.storage, writes.uid):  # never a folder another study or no study marked
            raise ResultsError(f"{writes.storage} is not this study's storage folder (its {STORAGE_MARKER} "
                               "is missing or differs); left as it is")
        remove_path(writes.storage)
        removed.append(writes.storage)
    for tmp in temporary_leftovers(study_dir):  # leftovers of writes a kill interrupted
        tmp.unlink()
        removed.append(tmp)
    return removed
