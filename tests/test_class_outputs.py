"""class_outputs seen: in class-incremental form, the loss, the Fisher and the accuracies run over the classes of
the tasks so far (van de Ven & Tolias's active_classes, Hsu et al.'s valid_out_dim); all, the default, trains and
scores every output from task 1 on, as before the setting existed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.train.evaluation import evaluate, evaluate_all
from sweep.train.reports import TaskReport
from sweep.train.trainer import build_run, load_benchmark, run_config, train_sequence


def _config(**kw: object) -> TrainConfig:
    return TrainConfig(**{"scenario": "class", "num_tasks": 5, "epochs": 1, "seed": 3, **kw})


def test_the_scored_classes_grow_task_by_task_in_class_incremental_form_only() -> None:
    bench = build_benchmark("split-digits", "class", num_tasks=5, class_order=(3, 1, 4, 0, 5, 9, 2, 6, 8, 7))
    masks = bench.scoring_masks("seen")
    assert masks is not None and masks.shape == (5, 10)
    for t in range(5):
        assert sorted(np.flatnonzero(masks[t].numpy())) == sorted(c for task in bench.tasks[: t + 1]
                                                                  for c in task.classes)
    assert bench.scoring_masks("all") is None
    task_il = build_benchmark("split-digits", "task", num_tasks=5)
    assert torch.equal(task_il.scoring_masks("seen"), task_il.task_masks())  # task-IL: each task's own, either way
    assert build_benchmark("split-digits", "domain", num_tasks=5).scoring_masks("seen") is None


def test_seen_leaves_the_outputs_of_classes_not_seen_yet_untouched() -> None:
    # task 1's loss under seen runs over task 1's classes: the head rows of the later tasks' classes never move
    config = _config(class_outputs="seen")
    bench = load_benchmark(config)
    model, strategy = build_run(config, bench)
    head = dict(model.named_parameters())["head.weight"]
    before = head.detach().clone()
    later = sorted(c for task in bench.tasks[1:] for c in task.classes)
    first = sorted(bench.tasks[0].classes)
    after_1: list[torch.Tensor] = []

    def after_task(report: TaskReport) -> None:
        if report.task_index == 0:
            after_1.append(head.detach().clone())

    train_sequence(bench, model, strategy, config, callback=after_task)
    assert torch.equal(after_1[0][later], before[later])  # no gradient ever reached them: Adam leaves them be
    assert not torch.equal(after_1[0][first], before[first])
    # all: task 1's loss pushes every other class down from the first step
    config_all = _config(class_outputs="all")
    model_all, strategy_all = build_run(config_all, bench)
    head_all = dict(model_all.named_parameters())["head.weight"]
    assert torch.equal(head_all, before)  # the same seed, the same initial weights
    after_1.clear()
    train_sequence(bench, model_all, strategy_all, config_all,
                   callback=lambda report: after_1.append(head_all.detach().clone()) if report.task_index == 0
                   else None)
    assert not torch.equal(after_1[0][later], before[later])


class _Fixed(nn.Module):
    """Logits that rank the classes by a fixed preference, whatever the input."""

    def __init__(self, preference: list[float]) -> None:
        super().__init__()
        self.preference = torch.tensor(preference)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.preference.expand(x.shape[0], -1)


def test_after_task_t_every_task_is_scored_over_the_classes_seen_by_then() -> None:
    bench = build_benchmark("split-digits", "class", num_tasks=5)  # tasks (0, 1), (2, 3), ...
    masks = bench.scoring_masks("seen")
    # class 9 is preferred over all, then 2, then 0: with every output scored, nothing but class 9 is ever right
    model = _Fixed([5.0, 0.0, 6.0, 0, 0, 0, 0, 0, 0, 10.0])
    val_all, _ = evaluate_all(model, bench, None, now=0)
    assert val_all[0] == 0.0

    def share(task: int, label: int) -> object:
        return pytest.approx(float((bench.tasks[task].val.y == label).float().mean()))

    val, _ = evaluate_all(model, bench, masks, now=0)
    assert val[0] == share(0, 0)  # after task 1: classes 0 and 1 only, so class 0 wins
    assert val[1] == share(1, 2)  # a task not trained yet: over the classes seen by its own time, 0..3
    val, _ = evaluate_all(model, bench, masks, now=1)
    assert val[0] == 0.0  # after task 2, task 1 is scored over 0..3 too: class 2 wins, and task 1 has none
    assert val[1] == share(1, 2)
    assert val[4] == share(4, 9)  # task 5: over every class


@pytest.mark.parametrize("strategy", ["ewc", "mas"])
@pytest.mark.parametrize(("class_outputs", "unseen_zero"), [("seen", True), ("all", False)])
def test_the_importances_cover_the_classes_seen_so_far(strategy: str, class_outputs: str, unseen_zero: bool) -> None:
    # EWC's Fisher (exact: every class's log-probability) and MAS's output norm, after task 1 and after task 2
    config = _config(class_outputs=class_outputs, strategy=strategy, fisher="exact")
    bench = load_benchmark(config)
    model, penalty = build_run(config, bench)
    importances: list[torch.Tensor] = []

    def after_task(report: TaskReport) -> None:
        if report.task_index < 2:
            importances.append(getattr(penalty, "omega" if strategy == "mas" else "precision")["head.weight"].clone())

    train_sequence(bench, model, penalty, config, callback=after_task)
    for t, importance in enumerate(importances):
        later = sorted(c for task in bench.tasks[t + 1:] for c in task.classes)
        now = sorted(bench.tasks[t].classes)
        assert bool((importance[later] == 0).all()) is unseen_zero, t
        assert bool((importance[now] != 0).any()), t


def test_a_run_reports_each_task_over_the_classes_seen_by_then() -> None:
    """The accuracy matrix's row t: task i ≤ t over the classes of tasks 1..t, a later task over its own time's."""
    config = _config(class_outputs="seen")
    bench = load_benchmark(config)
    masks = bench.scoring_masks("seen")
    model, strategy = build_run(config, bench)
    rows: list[tuple[int, np.ndarray, list[float]]] = []

    def after_task(report: TaskReport) -> None:
        t = report.task_index
        expected = [float(evaluate(model, bench.tasks[i].val, max(t, i), masks)) for i in range(bench.num_tasks)]
        rows.append((t, report.val[t].copy(), expected))

    train_sequence(bench, model, strategy, config, callback=after_task)
    assert len(rows) == 5
    for t, got, expected in rows:
        np.testing.assert_allclose(got, expected, err_msg=f"after task {t + 1}")


def test_seen_changes_class_incremental_runs_only() -> None:
    assert TrainConfig().class_outputs == "all"  # the default trains as before the setting existed
    assert not np.array_equal(run_config(_config(class_outputs="seen")).test, run_config(_config()).test)
    task_il = run_config(_config(scenario="task")), run_config(_config(scenario="task", class_outputs="seen"))
    np.testing.assert_array_equal(task_il[0].test, task_il[1].test)  # inert outside class-incremental form
    domain = run_config(_config(scenario="domain")), run_config(_config(scenario="domain", class_outputs="seen"))
    np.testing.assert_array_equal(domain[0].test, domain[1].test)


def test_the_production_fisher_of_a_seen_setting_asks_for_the_classes_seen() -> None:
    from sweep.api import Chosen
    from sweep.errors import ConfigError

    chosen = Chosen(_config(class_outputs="seen", strategy="ewc"))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 2, (8,))
    with pytest.raises(ConfigError, match="pass classes="):
        chosen.fisher(model, x, y)
    fisher = chosen.fisher(model, x, y, classes=[0, 1])
    assert bool((fisher["1.weight"][2:] == 0).all()) and bool((fisher["1.weight"][:2] != 0).any())
