"""``sweep`` command line: one subcommand per module, imported only when used.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. A
:class:`~sweep.errors.SweepError` anywhere becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from sweep.errors import SweepError, did_you_mean

# explicit registry: name -> (module, one-line help); modules are imported lazily so that
# `sweep train` does not pay for importing Ray
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("sweep.commands.train", "train one model on a task sequence and print its accuracy matrix"),
    "pretrain": ("sweep.commands.pretrain", "train task 1 (the source) once and save its weights for --pretrained"),
    "run": ("sweep.commands.run", "run a hyperparameter sweep (Ray Tune + Optuna) into results/<study>"),
    "choose": ("sweep.commands.choose", "choose the production setting from a study under a constraint"),
    "report": ("sweep.commands.report", "write a self-contained HTML report of a study"),
    "reproduce": ("sweep.commands.reproduce", "rerun a published table (hsu2018, vandeven2019): each row's "
                  "hyperparameters chosen on validation by a sweep, then run on fresh seeds"),
    "clean": ("sweep.commands.clean", "remove the caches and Tune folders a study recorded, keep its Parquet results"),
}


_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<value>[^']*)' \(choose from (?P<choices>.*)\)")


class _Parser(argparse.ArgumentParser):
    """argparse exits with status 2 on usage errors already; keep its message to one line, name the
    subcommand, and suggest the closest name for a misspelt choice."""

    def error(self, message: str) -> NoReturn:
        bad = _INVALID_CHOICE.search(message)
        if bad is not None:
            message += did_you_mean(bad["value"], re.findall(r"'([^']*)'", bad["choices"]))
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (all of them when None)."""
    parser = _Parser(prog="sweep", description="Sweep forgetting mitigations and choose a setting with evidence.",
                     epilog="`sweep COMMAND --help` lists a command's flags, each with what it means and allows.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_module=module, _parser=sub_parser)
    return parser


def unrecognized(parser: argparse.ArgumentParser, extra: Sequence[str]) -> str:
    """The message for arguments a command does not take, with the closest flag it does take."""
    flags = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    notes = [f"{arg.split('=', 1)[0]}{hint}" for arg in extra if arg.startswith("-")
             if (hint := did_you_mean(arg.split("=", 1)[0], flags))]
    return f"unrecognized arguments: {' '.join(extra)}" + (f"; {', '.join(notes)}" if notes else "")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command they were given to, with the flag that was probably meant
        args._parser.error(unrecognized(args._parser, extra))
    args.argv = argv  # as given: what `sweep run` repeats in its resume hint
    try:
        return int(args._module.run(args) or 0)
    except SweepError as err:
        print(f"sweep {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sweep {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
