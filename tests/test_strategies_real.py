"""The published shapes on real Split-MNIST (MLP 784-256-256-10, Adam 1e-3, 1 epoch per task, seed 0).

If a strategy cannot show its shape here, it has a bug: task-incremental EWC keeps task 1 where
naive fine-tuning loses part of it; class-incremental replay keeps task 1 where naive keeps 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.models import build_model
from sweep.strategies.registry import build_strategy
from sweep.train.trainer import SequenceResult, train_sequence

pytestmark = pytest.mark.slow

# Scale of the exact Fisher after task 1 (task-incremental, seed 0), measured: mean 5.2e-5 and
# trace 14 over 269k weights; half the trace sits in the top 1% of weights (F >= 4e-4, max 0.04,
# mostly the head). λ = 1e3 gives those λF ≈ 0.4-40, stiff next to the new task's cross-entropy,
# while the other 99% (λF < 0.1) stay free to learn task 2. Measured over seeds 0-2: task 1 after
# task 2 at 98.0-98.4% with task 2 at 95.5-95.9% (naive: 91.9-93.5%); λ = 1e4 keeps task 1 only
# 0.2 points better but costs task 2 1-3 points; λ = 1e2 keeps 96.8%.
EWC_LAMBDA = 1e3


def run(data_root: Path, scenario: str, strategy: str, **settings) -> tuple[SequenceResult, dict[str, float]]:
    config = TrainConfig(benchmark="split-mnist", scenario=scenario, strategy=strategy, data_root=str(data_root),
                         **settings)
    benchmark = build_benchmark("split-mnist", scenario, data_root=data_root)
    torch.manual_seed(config.seed)
    model = build_model(config.model, benchmark.input_shape, benchmark.num_classes, config.hidden)
    strategy_ = build_strategy(config, len(model.layers()))
    after_task_1: dict[str, float] = {}
    result = train_sequence(
        benchmark, model, strategy_, config,
        callback=lambda report: report.task_index == 0 and after_task_1.update(strategy_.stats()),
    )
    assert result.status == "finished" and np.isfinite(result.test).all()
    return result, after_task_1


def test_task_incremental_ewc_keeps_task_1(data_root: Path):
    naive, _ = run(data_root, "task", "naive")
    ewc, fisher = run(data_root, "task", "ewc", ewc_lambda=EWC_LAMBDA, fisher="exact")
    assert 1e-5 < fisher["fisher_mean"] < 1e-3  # the scale EWC_LAMBDA was chosen for
    assert ewc.test[1, 0] > 0.95
    assert naive.test[1, 0] < ewc.test[1, 0] - 0.03  # naive keeps clearly less (about 92% vs 98%)
    assert ewc.test[1, 1] > 0.90  # and task 2 is still learned


def test_class_incremental_replay_keeps_task_1(data_root: Path):
    naive, _ = run(data_root, "class", "naive")
    replay, _ = run(data_root, "class", "replay", replay_size=500)
    assert naive.test[1, 0] < 0.05  # the published near-zero
    assert replay.test[1, 0] > 0.6  # measured 0.88-0.91 over seeds 0-2
    assert replay.test[1, 1] > 0.85
