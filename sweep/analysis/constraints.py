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
# the tokens of a constraint, each matched at a position: one left-to-right pass, linear in the text's length
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?%?")
_WORD = re.compile(r"[A-Za-z_]+")
_SPACE = re.compile(r"\s+")
_OPERATORS = (">=", "<=", "≥", "≤", ">", "<", "+", "-", "*")
_COMPARISONS = {">=": ">=", "<=": "<=", "≥": ">=", "≤": "<=", ">": ">", "<": "<"}
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
        """Whether a trial with this margin meets the constraint: an infinite margin is a clear verdict (a
        bound of -1e999 is always met), an undefined one (NaN: a missing value) never meets it."""
        if math.isnan(margin):
            return False
        return margin > _TOLERANCE if self.op in (">", "<") else margin >= -_TOLERANCE


def _shown(text: str) -> str:
    """The constraint as a message quotes it: a very long one is cut."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def tokens(text: str) -> list[tuple[str, str]]:
    """``(kind, text)`` pairs, kind ``word``, ``number`` or ``op``, in one pass over ``text`` (whitespace
    skipped). A sign right before a number is the number's own after an operator or at the start
    (``>= -0.5``, ``naive - -0.01``), an operator after a word or number (``naive -0.01``).

    Raises:
        ConfigError: a character that starts no token.
    """
    found: list[tuple[str, str]] = []
    pos, end = 0, len(text)
    while pos < end:
        space = _SPACE.match(text, pos)
        if space:
            pos = space.end()
            continue
        signed = text[pos] in "+-" and (not found or found[-1][0] == "op")
        number = _NUMBER.match(text, pos) if text[pos] not in "+-" or signed else None
        if number:
            found.append(("number", number.group()))
            pos = number.end()
            continue
        word = _WORD.match(text, pos)
        if word:
            found.append(("word", word.group()))
            pos = word.end()
            continue
        op = next((o for o in _OPERATORS if text.startswith(o, pos)), None)
        if op is None:
            raise ConfigError(f"bad constraint {_shown(text)}: unexpected {text[pos]!r} at character {pos + 1}; "
                              f"expected {GRAMMAR}")
        found.append(("op", op))
        pos += len(op)
    return found


def parse_constraint(text: str) -> Constraint:
    """Parse ``"plasticity >= naive - 0.01"`` and the like, in time linear in the text's length.

    A number may be infinite (``-1e999``): ``stability >= -1e999`` always holds.

    Raises:
        ConfigError: bad syntax (the message shows the grammar) or an unknown metric or reference.
    """
    if not isinstance(text, str):
        raise ConfigError(f"bad constraint {text!r}: expected text, {GRAMMAR}")
    found = tokens(text.replace("\u2212", "-"))  # a typographic minus reads as one
    kinds = [kind for kind, _ in found]
    if len(found) < 3 or kinds[0] != "word" or found[1][1] not in _COMPARISONS:
        raise ConfigError(f"bad constraint {_shown(text)}: expected {GRAMMAR}")
    metric = check_metric(found[0][1].lower())
    op = _COMPARISONS[found[1][1]]
    rhs, shape = found[2:], kinds[2:]
    reference: str | None = None
    combine: str | None = None
    number: str | None = None
    if shape == ["number"]:
        number = rhs[0][1]
    elif shape == ["word"]:
        reference = rhs[0][1]
    elif shape == ["word", "op", "number"] and rhs[1][1] in "+-*":
        reference, combine, number = rhs[0][1], rhs[1][1], rhs[2][1]
    elif shape == ["number", "op", "word"] and rhs[1][1] == "*":
        number, combine, reference = rhs[0][1], "*", rhs[2][1]
    else:
        raise ConfigError(f"bad constraint {_shown(text)}: expected {GRAMMAR}")
    if reference is not None:
        reference = reference.lower()
        if reference not in REFERENCES:
            raise ConfigError(f"bad constraint {_shown(text)}: {reference[:40]!r} is neither a number nor a reference"
                              f" ({', '.join(REFERENCES)})")
    _check_units(text, metric, combine, number)
    return Constraint(text.strip(), metric, op, reference, combine, _number(number) if number else None)


# metrics are fractions (accuracy 0.97 is 97%); retention, a ratio of accuracies, may pass 1 a little
_FRACTION_BOUND = {metric: 2.0 if metric == "retention" else 1.0 for metric in schema.METRICS}


def _check_units(text: str, metric: str, combine: str | None, number: str | None) -> None:
    """Refuse a bound or offset in percent written without ``%`` (``plasticity >= 95``): it would compare a
    fraction with 95 and quietly fail every trial. A factor (``naive * 0.95``) is not a fraction."""
    if number is None or combine == "*" or number.endswith("%"):
        return
    value = float(number)
    if math.isfinite(value) and abs(value) > _FRACTION_BOUND[metric]:
        raise ConfigError(f"bad constraint {_shown(text)}: {metric} is a fraction (0.97 is 97%), so {number} is out"
                          f" of its range; write {value / 100:g} or {number}%")


@dataclass(frozen=True)
class ConstraintResult:
    """A constraint evaluated on one trial."""

    constraint: Constraint
    value: float
    threshold: float
    margin: float
    satisfied: bool
