"""``sweep clean results/<study> [--address HOST:PORT]``: delete what a study wrote besides its results.

Only a study this tool wrote is cleaned, and only what its own records name: its task-prefix cache and
Tune's folders (in the study or its ``--storage`` folder), the trackers' files of ``sweep run --log``,
the folders its trials wrote in Ray's session on every node (through Ray, on the cluster ``--address``
names), and the tool's temporary files. The Parquet files, the Optuna journal, study.json and any
report or chosen.yaml stay.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_dir", help="the study folder, e.g. results/ewc-split-digits-task")
    parser.add_argument("--address", default=None,
                        help="the Ray cluster the sweep ran on, to clean its other nodes too (default: $RAY_ADDRESS)")


def run(args: argparse.Namespace) -> int:
    from sweep.tune.cleaning import clean_study

    report = clean_study(args.study_dir, args.address)
    kept = sorted(p.name for p in Path(args.study_dir).iterdir())
    print(f"removed {len(report.removed)}: {', '.join(report.removed) or 'nothing to remove'}")
    print(f"kept: {', '.join(kept)}")
    if report.left:
        print(f"sweep clean: {report.left_line()}", file=sys.stderr)
        return 1
    return 0
