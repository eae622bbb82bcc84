"""The sequential-task trainer: the known shapes of forgetting, determinism, divergence, callbacks."""

from __future__ import annotations

import numpy as np
import pytest

from sweep.config import TrainConfig
from sweep.train.trainer import TaskReport, load_benchmark, run_config


@pytest.fixture(scope="module")
def naive_runs():
    return {scenario: run_config(TrainConfig(scenario=scenario, epochs=10)) for scenario in ("class", "task")}


def test_class_incremental_naive_forgets_task_one(naive_runs):
    R = naive_runs["class"].test
    assert R[0, 0] > 0.9  # task 1 learned
    assert R[1, 0] < 0.5 * R[0, 0]  # and more than half of it gone after task 2
    assert R[1, 1] > 0.8


def test_task_incremental_keeps_far_more(naive_runs):
    class_il, task_il = naive_runs["class"].test, naive_runs["task"].test
    assert task_il[1, 0] > class_il[1, 0] + 0.4
    assert task_il[1, 0] > 0.8


def test_same_seed_same_matrix_other_seed_another():
    config = TrainConfig(scenario="class", epochs=2)
    a, b = run_config(config), run_config(config)
    assert np.array_equal(a.val, b.val) and np.array_equal(a.test, b.test)
    assert np.array_equal(a.initial_val, b.initial_val)
    c = run_config(config.replace(seed=1))
    assert not np.array_equal(a.test, c.test)


def test_every_task_is_evaluated_after_every_task_including_unseen():
    result = run_config(TrainConfig(num_tasks=5, epochs=1, scenario="task"))
    assert result.val.shape == (5, 5) and np.isfinite(result.val).all() and np.isfinite(result.test).all()
    assert result.initial_val.shape == (5,)
    assert result.metrics("val").keys() == result.metrics("test").keys()


def test_callback_sees_each_task_as_it_comes():
    seen: list[TaskReport] = []
    run_config(TrainConfig(num_tasks=5, epochs=1), callback=seen.append)
    assert [r.task_index for r in seen] == [0, 1, 2, 3, 4]
    assert np.isnan(seen[0].val[1:]).all() and np.isfinite(seen[0].val[0]).all()


def test_divergence_is_a_result_not_an_exception():
    result = run_config(TrainConfig(lr=1e9, optimizer="sgd", epochs=1))
    assert result.status == "diverged" and "task 1" in result.reason
    assert np.isnan(result.val).all()
    with pytest.raises(ValueError, match="diverged"):
        result.metrics()


def test_finetune_lr_changes_only_the_tasks_after_the_first():
    base = run_config(TrainConfig(epochs=2))
    slow = run_config(TrainConfig(epochs=2, finetune_lr=1e-5))
    assert np.array_equal(base.test[0], slow.test[0])  # task 1 is trained identically
    assert slow.test[1, 1] < base.test[1, 1]  # a tiny fine-tuning lr learns task 2 less


def test_cnn_trains_too():
    result = run_config(TrainConfig(model="cnn", epochs=2, scenario="task"))
    assert result.status == "finished" and result.test[0, 0] > 0.8


@pytest.mark.slow
def test_split_mnist_real_data_class_incremental(data_root):
    config = TrainConfig(benchmark="split-mnist", scenario="class", data_root=str(data_root), epochs=1)
    benchmark = load_benchmark(config)
    result = run_config(config, benchmark)
    assert result.test[0, 0] > 0.95  # task 1 learned in one epoch
    assert result.test[1, 0] < 0.05  # and all but gone after task 2: the class-incremental collapse


def test_one_tasks_batches_train_as_if_each_sample_carried_its_task_id():
    """The step masks a batch drawn from one task's split by that task's row of the masks; a batch a strategy
    changed is masked sample by sample. The two ways must train the same model, value for value."""
    from sweep.strategies.base import Batch
    from sweep.train.trainer import build_run, train_sequence

    config = TrainConfig(scenario="task", epochs=1, num_tasks=5)
    benchmark = load_benchmark(config)

    def run(copy_batches: bool):
        model, strategy = build_run(config, benchmark)
        if copy_batches:  # a new batch of the same samples: the step takes the per-sample path
            strategy.adjust_batch = lambda ctx, b: Batch(b.x, b.y, None if b.task_ids is None else b.task_ids.clone())
        return train_sequence(benchmark, model, strategy, config)

    fast, per_sample = run(False), run(True)
    assert np.array_equal(fast.val, per_sample.val) and np.array_equal(fast.test, per_sample.test)
    assert fast.test[-1, 0] > 0.8  # and it learned
