"""``sweep report results/<study> [--output FILE] [--maximize M --constraint EXPR ...]``.

Writes one self-contained HTML file (default ``<study>/report.html``); with ``--maximize``,
``--minimize`` or ``--constraint`` it includes the production choice, as ``sweep choose`` makes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sweep.atomic import check_regular_target
from sweep.commands.choose import add_objective_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", type=Path, help="the study folder, results/<study>")
    parser.add_argument(
        "--output", type=Path, default=None, help="HTML file to write (default: <study>/report.html)"
    )
    add_objective_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from sweep.analysis.choose import check_metric, parse_constraint
    from sweep.analysis.io import load_study
    from sweep.analysis.report import headline, write_report

    metric = args.minimize if args.minimize is not None else args.maximize
    if metric is not None:
        check_metric(metric)
    constraints = [parse_constraint(text).text for text in args.constraint]  # fail before reading anything
    if args.output is not None:  # a device or a link is refused, never replaced (the default: when written)
        check_regular_target(args.output)
    study = load_study(args.study)
    output = write_report(
        study,
        args.output,
        objective=metric,
        maximize=args.minimize is None,
        constraints=constraints,
        split=args.split,
    )
    print(headline(study, objective=metric, maximize=args.minimize is None, constraints=constraints, split=args.split))
    print(f"wrote {output}")
    return 0
