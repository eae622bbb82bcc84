"""The study folder: its ``study.json``, the checks of a resume, and whether results can be written."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from sweep.atomic import atomic_write
from sweep.errors import ConfigError
from sweep.results.schema import STUDY_FILE


def check_resume(study_dir: Path, meta: dict[str, Any]) -> None:
    try:
        old = json.loads((study_dir / STUDY_FILE).read_text())
    except (OSError, ValueError, RecursionError):  # ValueError: not JSON, not UTF-8
        old = None
    if not isinstance(old, dict):
        raise ConfigError(f"{study_dir / STUDY_FILE} is unreadable; cannot resume this study")
    for key in ("strategy", "base_config", "seeds", "objective", "space_sha256"):
        if old.get(key) != json.loads(json.dumps(meta[key])):
            raise ConfigError(f"--resume: {key} differs from the study's ({old.get(key)!r}); "
                              "resume with the same settings or start another --study")
    recorded = old.get("weights_sha256", {})  # absent in studies made before it was recorded
    if not isinstance(recorded, dict):
        raise ConfigError(f"{study_dir / STUDY_FILE}: weights_sha256 is not a mapping; cannot resume this study")
    for name, digest in recorded.items():
        if meta["weights_sha256"].get(name) != digest:
            raise ConfigError(f"--resume: the {name} file {meta['base_config'].get(name)} has changed since the "
                              "study started (its sha256 differs); restore it or start another --study")


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
