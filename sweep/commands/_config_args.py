"""TrainConfig <-> argparse: one ``--flag`` per config field, layered over an optional ``--config`` file."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from sweep.config import TrainConfig
from sweep.errors import ConfigError

# fields whose flags take a comma-separated list of ints
_LIST_FIELDS = ("hidden", "class_order")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and one flag per TrainConfig field (``ewc_lambda`` -> ``--ewc-lambda``)."""
    parser.add_argument("--config", metavar="FILE", help="YAML config (e.g. chosen.yaml from `sweep choose`)")
    for f in dataclasses.fields(TrainConfig):
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=f.name.upper() if f.name not in _LIST_FIELDS else "N,N,...",
            help=f"default: {shown}",
        )


def _parse_flag(name: str, text: str) -> Any:
    """Turn a flag's text into the value TrainConfig checks; the type check itself is TrainConfig's."""
    if name in _LIST_FIELDS:
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ConfigError(f"--{name.replace('_', '-')} must be comma-separated integers, got {text!r}") from None
    hint = {f.name: f.type for f in dataclasses.fields(TrainConfig)}[name]
    hint = str(hint)
    if text.lower() in ("none", "null") and "None" in hint:
        return None
    for kind in (int, float):
        if kind.__name__ in hint:
            try:
                return kind(text)
            except ValueError:
                if kind is int and "float" not in hint:
                    raise ConfigError(f"--{name.replace('_', '-')} must be an integer, got {text!r}") from None
    if "float" in hint:
        raise ConfigError(f"--{name.replace('_', '-')} must be a number, got {text!r}")
    return text


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """Defaults, then ``--config FILE``, then explicit flags: later wins."""
    config = TrainConfig.from_yaml(args.config) if getattr(args, "config", None) else (base or TrainConfig())
    overrides = {
        name: _parse_flag(name, getattr(args, name))
        for name in TrainConfig.field_names()
        if getattr(args, name, None) is not None
    }
    if not overrides:
        return config
    return TrainConfig.from_mapping({**config.to_dict(), **overrides}, source="command line")
