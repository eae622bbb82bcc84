"""``sweep choose results/<study> --maximize stability --constraint "plasticity >= naive - 0.01"``.

Exit status: 0 with a choice written to ``chosen.yaml``; 1 when no trial meets the constraints
(the closest one is named, nothing is written); 2 for bad input (via :mod:`sweep.cli`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweep.atomic import check_regular_target
from sweep.results import schema


def add_objective_arguments(parser: argparse.ArgumentParser) -> None:
    """The objective/constraint flags that ``sweep choose`` and ``sweep report`` share."""
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument(
        "--maximize",
        metavar="METRIC",
        default=None,
        help=f"metric to maximise (default: stability); one of {', '.join(schema.METRICS)}",
    )
    direction.add_argument(
        "--minimize", metavar="METRIC", default=None, help="metric to minimise instead, e.g. forgetting"
    )
    parser.add_argument(
        "--constraint",
        metavar="EXPR",
        action="append",
        default=[],
        help="'<metric> >=|<=|>|< <number|naive|joint>[ +|-|* <number>]', e.g."
        " 'plasticity >= naive - 0.01' or 'retention >= 0.95'; repeat for AND",
    )
    parser.add_argument(
        "--split",
        choices=schema.SPLITS,
        default="val",
        help="split to choose on (default: val; test is reported, not searched on)",
    )


def objective(args: argparse.Namespace) -> tuple[str, bool]:
    """(metric, maximize) from ``--maximize`` / ``--minimize``."""
    if args.minimize is not None:
        return args.minimize, False
    return args.maximize or "stability", True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", type=Path, help="the study folder, results/<study>")
    add_objective_arguments(parser)
    parser.add_argument(
        "--output", type=Path, default=None, help="where to write the choice (default: <study>/chosen.yaml)"
    )


def run(args: argparse.Namespace) -> int:
    from sweep.analysis.choose import check_metric, choose, format_choice, parse_constraint, write_choice
    from sweep.analysis.io import load_study

    metric, maximize = objective(args)
    check_metric(metric)
    constraints = [parse_constraint(text) for text in args.constraint]  # bad syntax fails before any reading
    if args.output is not None:  # a device or a link is refused, never replaced (the default: when written)
        check_regular_target(args.output)
    study = load_study(args.study)
    if args.split != "val":
        print(
            f"sweep choose: warning: choosing on {args.split}; its numbers are no longer a fair estimate",
            file=sys.stderr,
        )
    choice = choose(study, metric, constraints, split=args.split, maximize=maximize)
    print(format_choice(choice))
    if not choice.feasible:
        print("nothing written: relax a constraint or search further", file=sys.stderr)
        return 1
    output = args.output if args.output is not None else study.path / "chosen.yaml"
    write_choice(choice, output)
    print(f"wrote {output}")
    return 0
