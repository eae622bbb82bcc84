"""What the trainer hands out, and what it keeps in a prefix store.

A :class:`TaskReport` after each task, an :class:`EpochReport` after each epoch when asked, a
:class:`SequenceResult` at the end; and the state after task 1 (model, strategy, generator and the
accuracies so far) as one CPU mapping, saved to and restored from a :class:`PrefixStore`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from sweep.metrics import all_metrics
from sweep.strategies.base import Compute, Strategy
from sweep.train.task_setup import OptimizerState


class PrefixStore(Protocol):
    """Where the state after task 1 is kept between runs that agree on it (the sweep's prefix cache).

    The trainer is handed one; it never builds or imports one.
    """

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


@dataclass
class TaskReport:
    """What a caller (the Ray trainable, a progress bar) sees after each task."""

    task_index: int  # 0-based index of the task just trained
    num_tasks: int
    val: np.ndarray  # (T, T) accuracy matrix so far; rows after task_index are NaN
    test: np.ndarray
    initial_val: np.ndarray  # (T,) untrained model
    initial_test: np.ndarray
    seconds: float  # training + evaluation time of this task
    # work done so far, counted exactly: on task 1 (with the untrained model's evaluation; none when
    # restored from a prefix store), and on every task after it
    compute_first: Compute = field(default_factory=Compute)
    compute: Compute = field(default_factory=Compute)


@dataclass
class EpochReport:
    """What a caller that asked for them (a scheduler stopping dominated trials) sees after each epoch."""

    task_index: int  # 0-based index of the task being trained
    epoch: int  # 0-based, counted over the task's phases
    num_tasks: int
    val: np.ndarray  # (T, T): rows before task_index final; row task_index the current model on tasks <= it
    test: np.ndarray
    initial_val: np.ndarray  # (T,) untrained model
    initial_test: np.ndarray
    seconds: float  # since the task started
    compute_first: Compute = field(default_factory=Compute)  # as in TaskReport, up to this epoch
    compute: Compute = field(default_factory=Compute)


@dataclass
class SequenceResult:
    val: np.ndarray  # (T, T): R[t, i] on the validation split; NaN rows after a divergence
    test: np.ndarray  # (T, T) on the test split
    initial_val: np.ndarray  # (T,) accuracy of the untrained model, for FWT
    initial_test: np.ndarray
    status: str = "finished"  # "finished" or "diverged"
    reason: str = ""
    stats: dict[str, float] = field(default_factory=dict)  # e.g. fisher_mean, fisher_trace
    duration_s: float = 0.0
    compute_first: Compute = field(default_factory=Compute)  # as in TaskReport
    compute: Compute = field(default_factory=Compute)
    # free variants of the final model (Strategy.variants): (the config values that give it, its last val row,
    # its last test row); the rows before the last are the run's own
    variants: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = field(default_factory=list)

    def metrics(self, split: str = "val") -> dict[str, float]:
        """Every metric of the finished matrix; raises if the run diverged (no full matrix)."""
        if self.status != "finished":
            raise ValueError(f"no metrics for a {self.status} run: {self.reason}")
        if split == "val":
            return all_metrics(self.val, self.initial_val)
        return all_metrics(self.test, self.initial_test)


def prefix_state(
    model: nn.Module, strategy: Strategy, generator: torch.Generator, initial_val: np.ndarray,
    initial_test: np.ndarray, val: np.ndarray, test: np.ndarray, optimizer: OptimizerState | None = None,
) -> dict[str, Any]:
    """The run after task 1, on the CPU: all a later run needs to go on from there identically.

    ``val`` and ``test`` are the accuracy matrices' first rows; ``optimizer`` the optimizer state ``keep``
    carries (its entry "optimizer": parameter name -> Adam's tensors), left out under ``reset``.
    """
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "strategy": {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in strategy.state_dict().items()},
        "generator": generator.get_state(),
        "initial_val": torch.from_numpy(initial_val), "initial_test": torch.from_numpy(initial_test),
        "val": torch.from_numpy(val.copy()), "test": torch.from_numpy(test.copy()),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


def restore_prefix(
    state: dict[str, Any], model: nn.Module, strategy: Strategy, generator: torch.Generator, device: torch.device,
    optimizer: OptimizerState | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load :func:`prefix_state`'s mapping into the run (and into ``optimizer``, when given, the optimizer state
    it holds); returns (initial_val, initial_test, val row 0, test row 0)."""
    model.load_state_dict(state["model"])
    # the entry is read onto the CPU; the strategy's tensors (Fisher, anchors, indices) belong on the device
    strategy.load_state_dict({k: v.to(device) if isinstance(v, Tensor) else v for k, v in state["strategy"].items()})
    generator.set_state(state["generator"])  # a CPU generator, as the run's always is
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state["initial_val"].numpy(), state["initial_test"].numpy(), state["val"].numpy(), state["test"].numpy()
