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


def test_the_order_is_van_de_ven_and_tolias_label_permutation() -> None:
    # their data.py: label y becomes p[y] and task k takes the permuted labels 2k and 2k+1
    for seed in (0, 1, 1000, 2**32 - 1):
        p = np.random.RandomState(seed).permutation(10)
        order = seed_class_order(10, seed)
        # position j of task k (the domain-incremental target j) is the label the permutation sends to 2k + j
        assert order == tuple(int(np.flatnonzero(p == position)[0]) for position in range(10))
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
        for split in SPLITS:  # tensor for tensor, in the dataset's order; each image keeps its split
            for field in ("x", "y", "rows"):
                assert torch.equal(getattr(getattr(mine, split), field), getattr(getattr(theirs, split), field))
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
    return TrainConfig(**{"benchmark": "split-digits", "scenario": "task", "num_tasks": 5, "hidden": (32,),
                          "epochs": 1, "batch_size": 64, **values})


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_a_trial_runs_each_seed_on_its_own_class_order(scenario: str, tmp_path) -> None:
    natural = build_benchmark("split-digits", scenario, num_tasks=5)
    config = _config(class_shuffle="per-seed", scenario=scenario, strategy="ewc", fisher="batched")
    trial = run_trial(config, natural, [11, 12], lambda metrics: None, prefix_dir=str(tmp_path))
    assert trial["status"] == "finished"
    for seed in (11, 12):
        # the run of that seed's class order (sweep train --class-order ...), and of sweep train --class-shuffle
        ordered = run_config(config.replace(seed=seed, class_shuffle="none", class_order=seed_class_order(10, seed)))
        alone = run_config(config.replace(seed=seed))
        for result in (ordered, alone):
            assert np.array_equal(np.array(trial["accuracy"][str(seed)]["test"]), result.test)
            assert np.array_equal(np.array(trial["accuracy"][str(seed)]["val"]), result.val)
    # a second trial restores task 1 from the cache, each seed from its own entry
    again = run_trial(config, natural, [11, 12], lambda metrics: None, prefix_dir=str(tmp_path))
    assert again["task1_samples"] == 0 and again["accuracy"] == trial["accuracy"]


def test_first_tasks_cut_each_seed_dealt_sequence() -> None:
    natural = build_benchmark("split-digits", "class", num_tasks=5)
    config = _config(class_shuffle="per-seed", scenario="class")
    whole = run_trial(config, natural, [5], lambda metrics: None)
    first = run_trial(config, natural, [5], lambda metrics: None, num_tasks=2)  # --protocol first-tasks 2
    assert first["status"] == "finished" and first["tasks_done"] == 2
    assert np.array_equal(np.array(first["accuracy"]["5"]["test"]), np.array(whole["accuracy"]["5"]["test"])[:2, :2])


def test_training_an_undealt_benchmark_is_refused() -> None:
    from sweep.train.trainer import build_run, train_sequence

    natural = build_benchmark("split-digits", "task", num_tasks=5)
    config = _config(class_shuffle="per-seed")
    with pytest.raises(ConfigError, match="seed_benchmark"):
        train_sequence(natural, *build_run(config, natural), config)


def test_refused_where_it_cannot_apply() -> None:
    natural: Benchmark = build_benchmark("split-digits", "task", num_tasks=5)
    with pytest.raises(ConfigError, match="set one of them"):
        run_config(_config(class_shuffle="per-seed", class_order=tuple(range(9, -1, -1))), natural)
    with pytest.raises(ConfigError, match="pretrained"):
        run_config(_config(class_shuffle="per-seed", pretrained="weights.pt"), natural)


def test_sweep_train_says_which_tasks_the_seed_dealt(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from sweep.cli import main

    argv = ["train", "--num-tasks", "5", "--epochs", "1", "--hidden", "32", "--seed", "4", "--no-progress"]
    assert main([*argv, "--class-shuffle", "per-seed", "--json"]) == 0
    order = seed_class_order(10, 4)
    names = [f"digits {order[i]},{order[i + 1]}" for i in range(0, 10, 2)]
    assert json.loads(capsys.readouterr().out)["tasks"] == names
    assert main([*argv, "--class-shuffle", "per-seed"]) == 0
    assert " | ".join(names) in capsys.readouterr().out
