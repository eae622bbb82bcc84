"""TrainConfig <-> argparse: one ``--flag`` per row of the hyperparameter table, its help the row's why.

``sweep train`` and ``sweep pretrain`` layer the flags over an optional ``--config`` file; ``sweep
run`` takes them as values every trial of the sweep shares. A flag's text is parsed to the row's
type here; the value itself is checked by the row (through TrainConfig or the sweep's options).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection
from typing import Any, Protocol

from sweep.config import TrainConfig
from sweep.errors import ConfigError
from sweep.hparams import ROWS, HParam
from sweep.strategies.specs import STRATEGY_ROWS


def expanded_path(text: str) -> str:
    """argparse ``type`` of a path option: ``~/data`` is the home folder's, as a shell would read it."""
    return os.path.expanduser(text)


# what `sweep pretrain` never reads: it trains task 1 alone, naive, from scratch (or --init-weights), so no
# strategy's knob, nothing that acts from task 2 on, and no --pretrained
SOURCE_TASK_SKIP = (*(row.name for row in ROWS if row.owner in STRATEGY_ROWS or row.first_task >= 2),
                    "strategy", "pretrained")


def add_config_arguments(parser: argparse.ArgumentParser, skip: Collection[str] = ()) -> None:
    """Add ``--config FILE`` and one flag per TrainConfig field (``ewc_lambda`` -> ``--ewc-lambda``) not in
    ``skip`` (fields the command never reads: a flag that does nothing is not offered)."""
    parser.add_argument("--config", metavar="FILE", type=expanded_path,
                        help="YAML config (e.g. chosen.yaml from `sweep choose`)")
    add_field_flags(parser, skip=skip)


class FlagTarget(Protocol):
    """Where flags go: an ``argparse.ArgumentParser`` or one of its argument groups."""

    def add_argument(self, *name_or_flags: str, **kwargs: Any) -> argparse.Action: ...


def add_field_flags(parser: FlagTarget, skip: Collection[str] = (),
                    default_text: Callable[[HParam], str | None] = lambda row: None) -> None:
    """One flag per row not in ``skip``, default None (not given); ``default_text(row)`` replaces the help's
    default (``sweep run``: the space's value, else the row's)."""
    for row in ROWS:
        if row.name in skip:
            continue
        parser.add_argument(
            row.flag,
            dest=row.name,
            default=None,
            metavar="N,N,..." if row.type is tuple else row.name.upper(),
            help=row.help(default_text(row)).replace("%", "%%"),  # argparse formats help with %
        )


def parse_flag(row: HParam, text: str) -> Any:
    """Turn a flag's text into a value of the row's type; the range check itself is the row's."""
    if row.nullable and text.lower() in ("none", "null"):
        return None
    if row.type is tuple:
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ConfigError(f"{row.flag} must be comma-separated integers, got {text!r}") from None
    if row.type in (int, float):
        try:
            return row.type(text)
        except ValueError:
            kind = "an integer" if row.type is int else "a number"
            raise ConfigError(f"{row.flag} must be {kind}, got {text!r}") from None
    return os.path.expanduser(text) if row.path else text


def given_fields(args: argparse.Namespace, skip: Collection[str] = ()) -> dict[str, Any]:
    """The TrainConfig fields given as flags (parsed), by name; ``skip``: fields with no such flag."""
    return {row.name: parse_flag(row, getattr(args, row.name)) for row in ROWS
            if row.name not in skip and getattr(args, row.name, None) is not None}


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """Defaults, then ``--config FILE``, then explicit flags: later wins."""
    config = TrainConfig.from_yaml(args.config) if getattr(args, "config", None) else (base or TrainConfig())
    overrides = given_fields(args)
    if not overrides:
        return config
    return TrainConfig.from_mapping({**config.to_dict(), **overrides}, source="command line")
