"""The constraint language of ``sweep choose``: ``<metric> <op> <rhs>``.

- ``metric``: one of :data:`sweep.schema.METRICS` (``stability``, ``plasticity``, ``retention``, ...);
- ``op``: ``>=``, ``<=``, ``>``, ``<`` (``≥``, ``≤`` also read);
- ``rhs``: a number (``0.95``, ``95%``), a reference (``naive`` or ``joint``: that reference trial's
  value of the same metric on the same split), or a reference combined with a number: ``naive -
  0.01``, ``naive + 0.02``, ``naive * 0.95``, ``0.95 * naive``. ``%`` divides a number by 100.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sweep.errors import ConfigError
from sweep.results import schema

REFERENCES = ("naive", "joint")
_TOLERANCE = 1e-9  # "naive - 0.01" is computed in floating point; an exact tie must still count as met
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?%?"
_CONSTRAINT = re.compile(r"^\s*(?P<metric>[A-Za-z_]+)\s*(?P<op>>=|<=|>|<|≥|≤)\s*(?P<rhs>.+?)\s*$")
_RHS_FORMS = (
    re.compile(rf"^(?P<number>{_NUMBER})$"),
    re.compile(r"^(?P<reference>[A-Za-z]+)$"),
    re.compile(rf"^(?P<reference>[A-Za-z]+)\s*(?P<combine>[-+*])\s*(?P<number>{_NUMBER})$"),
    re.compile(rf"^(?P<number>{_NUMBER})\s*(?P<combine>\*)\s*(?P<reference>[A-Za-z]+)$"),
)
GRAMMAR = "'<metric> >=|<=|>|< <number|naive|joint>[ +|-|* <number>]', e.g. 'plasticity >= naive - 0.01'"


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is a known metric.

    Raises:
        ConfigError: naming the allowed metrics.
    """
    if metric not in schema.METRICS:
        raise ConfigError(f"unknown metric {metric!r}: allowed metrics are {', '.join(schema.METRICS)}")
    return metric


def _number(text: str) -> float:
    return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)


@dataclass(frozen=True)
class Constraint:
    """One parsed constraint; see the module docstring for the grammar.

    Attributes:
        text: The constraint as the user wrote it.
        metric: The metric it bounds.
        op: ``>=``, ``<=``, ``>`` or ``<``.
        reference: ``naive``, ``joint`` or ``None``.
        combine: ``+``, ``-`` or ``*`` when both a reference and a number are given.
        number: The constant, or ``None`` for a bare reference.
    """

    text: str
    metric: str
    op: str
    reference: str | None
    combine: str | None
    number: float | None

    def threshold(self, references: Mapping[str, float]) -> float:
        """The bound, given the references' values of :attr:`metric` (``{"naive": 0.97}``)."""
        if self.reference is None:
            assert self.number is not None
            return self.number
        base = references[self.reference]
        if self.combine is None or self.number is None:
            return base
        return {"+": base + self.number, "-": base - self.number, "*": base * self.number}[self.combine]

    def margin(self, value: float, threshold: float) -> float:
        """How far ``value`` is on the right side of ``threshold`` (negative: violated by that much)."""
        return value - threshold if self.op in (">=", ">") else threshold - value

    def satisfied(self, margin: float) -> bool:
        if not math.isfinite(margin):
            return False
        return margin > _TOLERANCE if self.op in (">", "<") else margin >= -_TOLERANCE


def parse_constraint(text: str) -> Constraint:
    """Parse ``"plasticity >= naive - 0.01"`` and the like.

    Raises:
        ConfigError: bad syntax (the message shows the grammar) or an unknown metric or reference.
    """
    match = _CONSTRAINT.match(text.replace("−", "-"))
    if match is None:
        raise ConfigError(f"bad constraint {text!r}: expected {GRAMMAR}")
    metric = check_metric(match["metric"].lower())
    op = {"≥": ">=", "≤": "<="}.get(match["op"], match["op"])
    for form in _RHS_FORMS:
        rhs = form.match(match["rhs"])
        if rhs is None:
            continue
        parts = rhs.groupdict()
        reference = parts.get("reference")
        if reference is not None:
            reference = reference.lower()
            if reference not in REFERENCES:
                raise ConfigError(
                    f"bad constraint {text!r}: {reference!r} is neither a number nor a reference"
                    f" ({', '.join(REFERENCES)})"
                )
        number = _number(parts["number"]) if parts.get("number") else None
        return Constraint(text.strip(), metric, op, reference, parts.get("combine"), number)
    raise ConfigError(f"bad constraint {text!r}: expected {GRAMMAR}")


@dataclass(frozen=True)
class ConstraintResult:
    """A constraint evaluated on one trial."""

    constraint: Constraint
    value: float
    threshold: float
    margin: float
    satisfied: bool
