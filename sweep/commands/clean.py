"""``sweep clean results/<study>``: delete Ray's experiment folders, checkpoints and caches; keep the results.

A reused machine then holds no model weights or cached state from the run; the Parquet
files, the Optuna journal, study.json and any report or chosen.yaml stay.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from sweep.errors import ResultsError
from sweep.results.store import acquire_study_lock, release_study_lock

REMOVABLE = ("ray", "cache", "checkpoints")  # folders inside a study that hold no results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_dir", help="the study folder, e.g. results/ewc-split-digits-task")


def clean_study(study_dir: str | Path) -> list[Path]:
    study = Path(study_dir)
    if not (study / "trials.parquet").exists() and not (study / "study.json").exists():
        raise ResultsError(f"no study at {study}: expected {study / 'trials.parquet'}")
    lock = acquire_study_lock(study)  # a running sweep's Tune folder and temporary files are not leftovers
    try:
        removed = []
        for name in REMOVABLE:
            target = study / name
            if target.is_symlink() or target.is_file():  # a link is removed, never what it points to
                target.unlink()
                removed.append(target)
            elif target.exists():
                shutil.rmtree(target)
                removed.append(target)
        for tmp in study.glob(".*.tmp"):  # leftovers of writes a kill interrupted
            tmp.unlink()
            removed.append(tmp)
    except OSError as err:
        raise ResultsError(f"cannot clean {study}: {err.strerror or err} ({err.filename})") from None
    finally:
        release_study_lock(study, lock)
    return removed


def run(args: argparse.Namespace) -> int:
    removed = clean_study(args.study_dir)
    kept = sorted(p.name for p in Path(args.study_dir).iterdir())
    print(f"removed {len(removed)}: {', '.join(str(p) for p in removed) or 'nothing to remove'}")
    print(f"kept: {', '.join(kept)}")
    return 0
