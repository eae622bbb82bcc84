"""naive: plain fine-tuning, task after task. The floor for stability every study includes."""

from __future__ import annotations

from sweep.strategies.base import Strategy


class Naive(Strategy):
    name = "naive"
