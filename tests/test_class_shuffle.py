"""class_shuffle per-seed: each seed deals the classes to the tasks in its own order (van de Ven & Tolias's
split-MNIST protocol), the same tasks on every path a seed can take (a trial, ``sweep train``), and nothing else
changes with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark, seed_class_order, shuffle_classes
from sweep.data.tasks import Benchmark
from sweep.errors import ConfigError
from sweep.train.trainer import run_config
from sweep.tune.trial import run_trial

SPLITS = ("train", "val", "test")


def _rows(split) -> list[tuple[tuple[int, ...], int]]:
    """A split as a sorted list of (image bytes, target): equal lists hold the same samples, in any order."""
    return sorted(zip(map(tuple, split.x.reshape(len(split), -1).tolist()), split.y.tolist()))


def test_the_order_is_van_de_ven_and_tolias_label_permutation() -> None:
    # their data.py: label y becomes p[y] and task k takes the permuted labels 2k and 2k+1
    for seed in (0, 1, 1000, 2**32 - 1):
        p = np.random.RandomState(seed).permutation(10)
        order = seed_class_order(10, seed)
        for k in range(5):
            assert set(order[2 * k: 2 * k + 2]) == {int(y) for y in range(10) if p[y] in (2 * k, 2 * k + 1)}
    assert seed_class_order(10, 1000) != seed_class_order(10, 1001)


@pytest.mark.parametrize("scenario", ["class", "task", "domain"])
def test_dealt_tasks_hold_what_a_build_with_that_order_holds(scenario: str) -> None:
    natural = build_benchmark("split-digits", scenario, num_tasks=5)
    dealt = shuffle_classes(natural, 1000)
    order = seed_class_order(10, 1000)
    built = build_benchmark("split-digits", scenario, num_tasks=5, class_order=order)
    assert dealt.info["class_order"] == list(order) and dealt.info["class_shuffle_seed"] == 1000
    assert dealt.info["task_labels"] == built.info["task_labels"]
    assert dealt.num_classes == built.num_classes
    masks = dealt.task_masks(), built.task_masks()  # task-incremental: each task's logit mask is its dealt classes
    assert masks == (None, None) if scenario != "task" else torch.equal(*masks)
    for mine, theirs in zip(dealt.tasks, built.tasks):
        assert (mine.name, mine.classes) == (theirs.name, theirs.classes)
        for split in SPLITS:  # each image keeps its split: the validation hold-out does not move with the order
            assert _rows(getattr(mine, split)) == _rows(getattr(theirs, split)), (mine.name, split)
    assert [task.name for task in natural.tasks] == ["digits 0,1", "digits 2,3", "digits 4,5", "digits 6,7",
                                                     "digits 8,9"]  # the benchmark dealt from is not touched


def test_dealing_is_the_same_from_any_deal() -> None:
    natural = build_benchmark("split-digits", "class", num_tasks=5)
    direct = shuffle_classes(natural, 7)
    via = shuffle_classes(shuffle_classes(natural, 3), 7)
    assert shuffle_classes(direct, 7) is direct  # already dealt for this seed
    for a, b in zip(direct.tasks, via.tasks):
        for split in SPLITS:
            assert torch.equal(getattr(a, split).x, getattr(b, split).x)
            assert torch.equal(getattr(a, split).y, getattr(b, split).y)


def _config(**values) -> TrainConfig:
    return TrainConfig(benchmark="split-digits", scenario="task", num_tasks=5, hidden=(32,), epochs=1,
                       batch_size=64, **values)


def test_a_trial_deals_each_seed_its_own_tasks_as_sweep_train_does() -> None:
    natural = build_benchmark("split-digits", "task", num_tasks=5)
    config = _config(class_shuffle="per-seed")
    trial = run_trial(config, natural, [11, 12], lambda metrics: None)
    assert trial["status"] == "finished"
    for seed in (11, 12):
        alone = run_config(config.replace(seed=seed))  # sweep train --seed S --class-shuffle per-seed
        assert np.allclose(np.array(trial["accuracy"][str(seed)]["test"]), alone.test)
        assert np.allclose(np.array(trial["accuracy"][str(seed)]["val"]), alone.val)
    # and it is not the natural order's run: the same seed without the shuffle trains other tasks
    plain = run_config(_config(seed=11))
    assert not np.allclose(plain.test, np.array(trial["accuracy"]["11"]["test"]))


def test_refused_where_it_cannot_apply() -> None:
    natural: Benchmark = build_benchmark("split-digits", "task", num_tasks=5)
    with pytest.raises(ConfigError, match="set one of them"):
        run_config(_config(class_shuffle="per-seed", class_order=tuple(range(9, -1, -1))), natural)
    with pytest.raises(ConfigError, match="pretrained"):
        run_config(_config(class_shuffle="per-seed", pretrained="weights.pt"), natural)
