"""Determinism on CPU: the same config and seed give the same accuracy matrix, twice, in and out of Ray."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sweep.config import TrainConfig
from sweep.train.trainer import SequenceResult, run_config


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A Ray trial with one CPU trains on one thread; so does the run it is compared with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def same(a: SequenceResult, b: SequenceResult) -> None:
    for name in ("val", "test", "initial_val", "initial_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.status == b.status and a.stats == b.stats


@pytest.mark.parametrize("strategy", ["naive", "ewc+replay"])
def test_run_config_twice_gives_the_same_accuracy_matrix(strategy: str, one_thread: None):
    # sampled Fisher and replay draw random numbers: both come from the run's seeded generator
    config = TrainConfig(strategy=strategy, fisher="sampled", replay_size=50, epochs=1, seed=3)
    first, second = run_config(config), run_config(config)
    same(first, second)
    assert first.status == "finished" and np.isfinite(first.val).all()
    other_seed = run_config(config.replace(seed=4))
    assert not np.array_equal(first.val, other_seed.val) or not np.array_equal(first.test, other_seed.test)


@pytest.mark.ray
def test_a_ray_trial_gives_the_same_accuracy_matrix_as_its_chosen_config(ray_session, tmp_path: Path,
                                                                         one_thread: None):
    """`sweep choose`'s config, fed back to the trainer, rebuilds the trial bit for bit: the searched
    values and the study's fixed settings (here a non-default hidden size and validation share)."""
    from sweep.analysis.choose import choose
    from sweep.analysis.io import load_study
    from sweep.tune.driver import SweepOptions, run_sweep

    run_sweep(SweepOptions(strategy="replay", trials=1, seeds=1, results_dir=str(tmp_path), study="same",
                           references=False, quiet=True, extra={"hidden": [48], "val_fraction": 0.15}))
    study = tmp_path / "same"
    row = pq.read_table(study / "trials.parquet").to_pylist()[0]
    chosen = choose(load_study(study), "stability").config()
    assert chosen["hidden"] == [48] and chosen["val_fraction"] == 0.15
    assert chosen["replay_size"] == row["hp_replay_size"] and chosen["replay_ratio"] == row["hp_replay_ratio"]
    outside = run_config(TrainConfig.from_mapping({**chosen, "seed": 0}))

    accuracy = pq.read_table(study / "accuracy.parquet").to_pandas()
    T = outside.val.shape[0]
    for split in ("val", "test"):
        rows = accuracy[accuracy.split == split]
        matrix = np.full((T + 1, T), np.nan)
        matrix[rows.after_task, rows.eval_task - 1] = rows.accuracy
        np.testing.assert_array_equal(matrix[0], getattr(outside, f"initial_{split}"), err_msg=split)
        np.testing.assert_array_equal(matrix[1:], getattr(outside, split), err_msg=split)
    assert row["val_stability_mean"] == outside.metrics("val")["stability"]
    assert row["test_plasticity_mean"] == outside.metrics("test")["plasticity"]
