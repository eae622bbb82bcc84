"""The study folder: its ``study.json``, the checks of a resume, and whether results can be written."""

from __future__ import annotations

import json
import secrets
import tempfile
from pathlib import Path
from typing import Any

from sweep.atomic import atomic_write
from sweep.errors import ConfigError
from sweep.hparams import BY_NAME
from sweep.reading import read_regular
from sweep.results.cleaning import make_storage_folder, read_json_record, study_writes
from sweep.results.schema import STUDY_FILE
from sweep.results.store import STUDY_FOLDERS, TRACKERS_FOLDER
from sweep.strategies.specs import LEGACY_VALUES


def check_resume(study_dir: Path, meta: dict[str, Any]) -> None:
    try:
        # a regular file within the JSON cap: a device or a pipe named study.json is never read
        old = json.loads(read_regular(study_dir / STUDY_FILE, "study file", "json", ConfigError))
    except (OSError, ValueError, RecursionError):  # ValueError: not JSON, not UTF-8, not a regular file (SweepError)
        old = None
    if not isinstance(old, dict):
        raise ConfigError(f"{study_dir / STUDY_FILE} is unreadable; cannot resume this study")
    # the sampler too, when the study recorded one: else the trials to come are another sampler's than it says
    # and pruning: the trials to come stop where the study's did (a study from before it recorded none)
    optional = tuple(key for key in ("sampler", "prune") if key in old and key in meta)
    if isinstance(old.get("prune"), dict) and "noise" not in old["prune"]:  # pruned before --prune-noise: 0
        old["prune"] = {**old["prune"], "noise": 0.0}
    if isinstance(old.get("prune"), dict) and "min_share" not in old["prune"]:  # before --prune-min-share: 0
        old["prune"] = {**old["prune"], "min_share": 0.0}
    if isinstance(old.get("prune"), dict) and isinstance(meta.get("prune"), dict) and "references" not in old["prune"]:
        old["prune"] = {**old["prune"], "references": meta["prune"].get("references")}  # not recorded before the floor
    _legacy_values(old)
    # the protocol: a study from before it recorded none selected at the end of the sequence (None, as "end")
    for key in ("strategy", "base_config", "seeds", "objective", "space_sha256", "protocol", *optional):
        now = json.loads(json.dumps(meta.get(key)))  # get: a meta without a protocol is "end"
        if old.get(key) != now:
            raise ConfigError(f"--resume: {resume_difference(key, old.get(key), now)}; "
                              "resume with the same settings or start another --study")
    recorded = old.get("weights_sha256", {})  # absent in studies made before it was recorded
    if not isinstance(recorded, dict):
        raise ConfigError(f"{study_dir / STUDY_FILE}: weights_sha256 is not a mapping; cannot resume this study")
    for name, digest in recorded.items():
        if meta["weights_sha256"].get(name) != digest:
            raise ConfigError(f"--resume: the {name} file {meta['base_config'].get(name)} has changed since the "
                              "study started (its sha256 differs); restore it or start another --study")
    _resume_writes(study_dir, old, meta)


def _legacy_values(old: dict[str, Any]) -> None:
    """A study made before a field of :data:`LEGACY_VALUES` existed ran its trials with the field's legacy value,
    not today's default: its base config reads as having fixed it, so a resume must fix it too (the message
    names it) and its new trials mean what its old ones did."""
    base, defaults = old.get("base_config"), old.get("defaults")
    if not isinstance(base, dict):
        return
    components = set(str(old.get("strategy", "")).split("+"))
    for name, value in LEGACY_VALUES.items():
        if name not in (defaults if isinstance(defaults, dict) else {}) and name not in base \
                and BY_NAME[name].owner in components:
            old["base_config"] = base = {**base, name: value}


# --- where a study writes besides its results: recorded in study.json when it starts (sweep clean's list)
def new_study_writes(storage: str | None, study: str, trackers: bool = False) -> dict[str, Any]:
    """``study.json``'s ``uid`` and ``writes`` for a new study: its task-prefix cache and Tune's storage, in the
    study folder, or with ``--storage`` in a folder of its own there, ``<storage>/<study>-<uid>``; with
    ``trackers`` (``--log``), its ``trackers`` folder, always in the study folder."""
    uid = secrets.token_hex(16)
    logs = [TRACKERS_FOLDER] if trackers else []
    if storage is None:
        return {"uid": uid, "writes": {"in_study": [*STUDY_FOLDERS, *logs], "storage": None}}
    folder = Path(storage).expanduser().resolve() / f"{study}-{uid[:12]}"
    return {"uid": uid, "writes": {"in_study": logs, "storage": str(folder)}}


def _resume_writes(study_dir: Path, old: dict[str, Any], meta: dict[str, Any]) -> None:
    """A resume writes where the study did (its uid and folders become ``meta``'s); another ``--storage`` is
    refused. A study from before the record wrote its default folders, and takes no ``--storage``."""
    recorded = study_writes(old, study_dir)  # ResultsError for a record that is not the tool's
    given = meta["writes"]["storage"]
    before = recorded.storage.parent if recorded.storage is not None else None
    if (Path(given).parent if given else None) != before:
        raise ConfigError(f"--resume: --storage {Path(given).parent if given else '(none)'} differs from the "
                          f"study's ({before or 'none: its folder'}); resume with the same --storage")
    meta["uid"] = old.get("uid")
    meta["writes"] = {"in_study": list(recorded.in_study),
                      "storage": str(recorded.storage) if recorded.storage is not None else None}


def record_in_study(study_dir: Path, name: str) -> None:
    """Add the folder ``name`` to what ``study.json`` records the study writes inside it (``--log``'s trackers
    folder, when a resume adds ``--log``), before anything is written there: `sweep clean` removes what the
    record names. The caller holds the study's lock."""
    path = study_dir / STUDY_FILE
    meta = read_json_record(path)
    writes = study_writes(meta, study_dir)  # a study from before the record: its default folders
    if name in writes.in_study:
        return
    meta["writes"] = {"in_study": [*writes.in_study, name],
                      "storage": str(writes.storage) if writes.storage is not None else None}
    write_json(path, meta)


def storage_folder(study_dir: Path) -> Path:
    """Where the study's task-prefix cache and Tune's storage go, from its ``study.json``."""
    return study_writes(read_json_record(study_dir / STUDY_FILE), study_dir).storage or study_dir


def prepare_storage(meta: dict[str, Any]) -> None:
    """Create the study's ``--storage`` folder (marked with its uid), once its ``study.json`` records it."""
    storage = meta["writes"]["storage"]
    if storage is not None:
        try:
            make_storage_folder(Path(storage), meta["uid"])
        except OSError as err:
            raise ConfigError(f"--storage: cannot create {storage}: {err.strerror or err}") from None


def resume_difference(key: str, study: Any, now: Any) -> str:
    """What differs between the study's recorded ``key`` and this run's, naming only the entries that differ
    (``base_config``: ``epochs is 5 here, 1 in the study``), never the whole mapping."""
    if isinstance(study, dict) and isinstance(now, dict):
        changed = [name for name in sorted({*study, *now}, key=str) if study.get(name) != now.get(name)]
        shown = "; ".join(f"{name} is {_shown(now, name)} here, {_shown(study, name)} in the study"
                          for name in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        return f"{key} differs from the study's: {shown}{more}"
    return f"{key} differs from the study's: {now!r} here, {study!r} in the study"


def _shown(mapping: dict[str, Any], name: str) -> str:
    return repr(mapping[name]) if name in mapping else "unset"


def check_writable(results_dir: Path) -> None:
    probe_dir = results_dir
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise ConfigError(f"results folder {results_dir} is not writable: {probe_dir} is a file")
    try:  # os.access says yes to root everywhere; a real write is the only honest probe
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as err:
        raise ConfigError(f"results folder {results_dir} is not writable ({err.strerror})") from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, default=str).encode()
    atomic_write(path, lambda handle: handle.write(text))
