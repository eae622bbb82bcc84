"""Search spaces: ``search_spaces/<strategy>.yaml`` -> Optuna distributions plus fixed settings.

File layout::

    strategy: ewc                  # the strategy this space searches ("ewc+replay" for a combination)
    description: one line for people
    fixed:                         # TrainConfig fields every trial shares: hyperparameters of the
      epochs: 1                    #   strategy, and settings such as hidden: [400, 400]
    params:                        # searched hyperparameters, each with its Optuna distribution
      ewc_lambda: {type: float, low: 1.0, high: 1.0e+10, log: true}
      fisher: {type: categorical, choices: [exact, empirical]}
      frozen_layers: {type: int, low: 0, high: 1}

Checked at load against the hyperparameter table (:mod:`sweep.hparams`), each error one line
naming the file and the key: unknown keys, wrong types (PyYAML reads ``1e-4`` as a string),
``low >= high``, ``log`` with ``low <= 0``, ends or choices outside a field's range, parameters the
strategy does not read, a searched setting, and settings given per sweep on the command line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from sweep.config import TrainConfig, read_yaml
from sweep.errors import ConfigError
from sweep.hparams import BY_NAME, GENERAL_PARAMS, SETTING, SPACE_SETTINGS, SWEEP_LEVEL
from sweep.strategies.registry import check_settings, parse_strategy, strategy_params

__all__ = ["GENERAL_PARAMS", "SWEEP_LEVEL"]  # from the table; importable from here as before
TOP_KEYS = ("strategy", "description", "fixed", "params")
DIST_KEYS = {"float": ("type", "low", "high", "log"), "int": ("type", "low", "high", "log", "step"),
             "categorical": ("type", "choices")}

DEFAULT_SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int = 1
    choices: tuple[Any, ...] = ()

    def to_optuna(self) -> Any:
        import optuna.distributions as d

        if self.kind == "float":
            low, high = self._bounds()
            return d.FloatDistribution(float(low), float(high), log=self.log)
        if self.kind == "int":
            low, high = self._bounds()
            return d.IntDistribution(int(low), int(high), log=self.log, step=self.step)
        return d.CategoricalDistribution(list(self.choices))

    def _bounds(self) -> tuple[float | int, float | int]:
        assert self.low is not None and self.high is not None, f"{self.name}: a numeric parameter has bounds"
        return self.low, self.high


@dataclass(frozen=True)
class SearchSpace:
    strategy: str
    path: str
    description: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)
    params: tuple[Param, ...] = ()

    def optuna_space(self) -> dict[str, Any]:
        return {p.name: p.to_optuna() for p in self.params}

    def allowed_params(self) -> tuple[str, ...]:
        return (*GENERAL_PARAMS, *strategy_params(self.strategy))


def space_path(strategy: str, spaces_dir: str | os.PathLike[str] | None = None) -> Path:
    return Path(spaces_dir or DEFAULT_SPACES_DIR) / f"{strategy}.yaml"


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Load and check one search-space file; every problem is a one-line ConfigError."""
    path = Path(path)
    where = str(path)
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ConfigError(
            f"search space {where} does not exist; available in {path.parent}: {', '.join(available) or 'none'}"
        )
    data = read_yaml(path, "search space")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}; allowed: {', '.join(TOP_KEYS)}")
    strategy = data.get("strategy")
    if not isinstance(strategy, str):
        raise ConfigError(f"{where}: strategy must be a string like 'ewc' or 'ewc+replay', got {strategy!r}")
    try:
        parse_strategy(strategy)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    allowed = (*GENERAL_PARAMS, *strategy_params(strategy))
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: fixed must be a mapping of config keys, got {type(fixed).__name__}")
    for key in fixed:
        _check_param_name(where, "fixed", key, strategy, (*allowed, *SPACE_SETTINGS))
    TrainConfig.from_mapping({"strategy": strategy, **fixed}, source=f"{where}: fixed")
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, dict):
        raise ConfigError(f"{where}: params must be a mapping of name -> distribution")
    if not raw_params:  # Optuna would have nothing to suggest, and every trial would be the same
        raise ConfigError(f"{where}: params is empty; a search space searches at least one hyperparameter "
                          "(params: lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true})")
    params = tuple(_parse_param(where, name, spec, strategy, allowed) for name, spec in raw_params.items())
    for name in raw_params:
        if name in fixed:
            raise ConfigError(f"{where}: {name} is both fixed and searched; keep one")
    check_active(params, fixed, where)
    check_space_settings(parse_strategy(strategy), params, fixed, where)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: description must be a string")
    return SearchSpace(strategy, where, description, dict(fixed), params)


def check_space_settings(names: tuple[str, ...], params: tuple[Param, ...], fixed: Mapping[str, Any], where: str,
                         labels: Mapping[str, str] | None = None) -> None:
    """Refuse a space in which some trial could draw settings that break a component (``check_settings``):
    ``adapter+ewc`` searching ``adapter_mode`` over ``per-task`` too. Each value a trial can take is tried:
    a searched parameter's choices or both ends of its range, else the fixed value or the default.
    ``labels``: how a fixed value was given when not by the space (``--adapter-mode`` for a flag of ``sweep run``)."""
    searched = {p.name: p for p in params}

    def values(name: str) -> list[tuple[Any, str]]:
        p = searched.get(name)
        if p is None:
            if name in fixed:
                return [(fixed[name], (labels or {}).get(name, f"fixed.{name}"))]
            return [(BY_NAME[name].default, "its default")]
        drawn = list(p.choices) if p.kind == "categorical" else [p.low, p.high]
        return [(value, f"params.{name} can draw it") for value in drawn]

    try:
        for (mode, mode_from), (patience, patience_from) in product(values("adapter_mode"),
                                                                    values("early_stop_patience")):
            check_settings(names, mode, int(patience),
                           {"adapter_mode": mode_from, "early_stop_patience": patience_from})
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def check_active(params: tuple[Param, ...], fixed: Mapping[str, Any], where: str,
                 labels: Mapping[str, str] | None = None) -> None:
    """Refuse a searched parameter that ``fixed`` (with the table's defaults for what it leaves out and
    the space does not search) makes inert: ``ewc_gamma`` searched with ``ewc_mode: separate``.

    ``where`` names the space in the message; ``labels`` how each fixed value was given (default
    ``fixed.<name>``; ``--ewc-mode`` for a flag of ``sweep run``).
    """
    searched = {p.name: p for p in params}
    for p in params:
        row = BY_NAME[p.name]
        for name, needed in row.active_when.items():
            if name in searched:  # both searched: inert only if no choice of the other lets it act
                other = searched[name]
                if other.kind == "categorical" and not any(c in needed for c in other.choices):
                    raise ConfigError(f"{where}: params.{p.name} is searched but inert: "
                                      f"{row.inert_because({name: other.choices[0]})} in every choice of "
                                      f"params.{name}; search {name} over {needed[0]!r} too or stop searching "
                                      f"{p.name}")
                continue
            value = fixed.get(name, BY_NAME[name].default)
            reason = row.inert_because({name: value})
            if reason is not None:
                source = (labels or {}).get(name, f"fixed.{name}") if name in fixed else "its default"
                raise ConfigError(f"{where}: params.{p.name} is searched but inert: {reason} ({source}); "
                                  f"set {name} to {needed[0]!r} or stop searching {p.name}")


def _check_param_name(where: str, section: str, name: Any, strategy: str, allowed: tuple[str, ...]) -> None:
    if name in SWEEP_LEVEL:
        raise ConfigError(f"{where}: {section}.{name} is set per sweep on the command line, not in a space file")
    if name not in BY_NAME:
        raise ConfigError(f"{where}: {section}.{name} is not a config key; allowed: {', '.join(allowed)}")
    if section == "params" and BY_NAME[name].kind == SETTING:
        raise ConfigError(f"{where}: params.{name} is a setting, not a hyperparameter: fix it (fixed: or "
                          f"{BY_NAME[name].flag}), it is not searched")
    if name not in allowed:
        raise ConfigError(
            f"{where}: {section}.{name} is not a parameter of strategy {strategy!r}; allowed: {', '.join(allowed)}"
        )


def _number(where: str, key: str, value: Any, integer: bool) -> float | int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not integer:
        ok = ok or isinstance(value, float)
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        hint = " (YAML reads 1e-4 as a string: write 1.0e-4)" if isinstance(value, str) else ""
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: {key} must be {kind}, got {value!r}{hint}")
    return value


def _parse_param(where: str, name: Any, spec: Any, strategy: str, allowed: tuple[str, ...]) -> Param:
    _check_param_name(where, "params", name, strategy, allowed)
    key = f"params.{name}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: {key} must be a mapping with a type (float, int or categorical)")
    kind = spec["type"]
    if not isinstance(kind, str) or kind not in DIST_KEYS:
        raise ConfigError(f"{where}: {key}.type {kind!r} is unknown; allowed: float, int, categorical")
    for sub in spec:
        if sub not in DIST_KEYS[kind]:
            raise ConfigError(
                f"{where}: {key}: unknown key {sub!r} for a {kind}; allowed: {', '.join(DIST_KEYS[kind])}"
            )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: {key}.choices must be a non-empty list")
        for choice in choices:  # every choice must be a valid config value
            _check_value(f"{where}: {key}.choices", name, choice)
        return Param(name, kind, choices=tuple(choices))
    for sub in ("low", "high"):
        if sub not in spec:
            raise ConfigError(f"{where}: {key} needs {sub}")
    integer = kind == "int"
    low = _number(where, f"{key}.low", spec["low"], integer)
    high = _number(where, f"{key}.high", spec["high"], integer)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {key}.log must be true or false, got {log!r}")
    if low >= high:
        raise ConfigError(f"{where}: {key}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: {key}: a log scale needs low > 0, got {low}")
    step = spec.get("step", 1)
    if integer and (not isinstance(step, int) or isinstance(step, bool) or step < 1):
        raise ConfigError(f"{where}: {key}.step must be a positive integer, got {step!r}")
    if log and step != 1:  # Optuna's IntDistribution refuses it, but only once the sweep has started
        raise ConfigError(f"{where}: {key}: a log scale takes no step (got step {step})")
    for bound in (low, high):  # both ends must be valid config values (e.g. alpha within [0, 1])
        _check_value(f"{where}: {key}", name, bound)
    return Param(name, kind, low, high, log, step)


def _check_value(source: str, name: str, value: Any) -> None:
    try:
        BY_NAME[name].check(value)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
