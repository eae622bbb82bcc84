"""LwF's distillation variants: van de Ven & Tolias' term (the default) against the old-classes one, the
task-count weighting, and a study made before the variant existed resuming with its own meaning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.data.tasks import Benchmark
from sweep.errors import ConfigError
from sweep.hparams import DEFAULTS
from sweep.models import build_model
from sweep.strategies.base import Batch, TaskContext
from sweep.strategies.distill import Distill, vandeven_columns, vandeven_term
from sweep.train.trainer import run_config
from tests.helpers import task_context


@pytest.fixture(scope="module")
def digits5() -> dict[str, Benchmark]:
    return {s: build_benchmark("split-digits", s, 5) for s in ("class", "task", "domain")}


def _distill(benchmark: Benchmark, **values: object) -> tuple[Distill, torch.nn.Module, TaskContext, Batch]:
    """A distill strategy whose teacher is the model after task 1 (= 2 tasks' classes seen on task 2)."""
    torch.manual_seed(0)
    strategy = Distill.from_config(TrainConfig(strategy="distill", **values))  # type: ignore[arg-type]
    assert isinstance(strategy, Distill)
    model = build_model("mlp", benchmark.input_shape, benchmark.num_classes, (16,))
    strategy.after_task(task_context(benchmark, model, 0)[0])
    ctx, batch = task_context(benchmark, model, 1)
    return strategy, model, ctx, batch


def test_the_default_is_van_de_vens_term_and_the_old_behaviour_stays_selectable():
    assert DEFAULTS["distill_variant"] == "vandeven" and DEFAULTS["distill_weighting"] == "alpha"
    with pytest.raises(ConfigError, match="distill_variant 'hsu' is unknown; allowed: vandeven, old-classes"):
        TrainConfig(strategy="distill", distill_variant="hsu")


def test_vandeven_term_has_the_gradient_of_van_de_vens_zero_padded_cross_entropy():
    """GMvandeVen/continual-learning's loss_fn_kd: −Σ p_teacher·log q_student over the classes seen so far, the
    teacher's probabilities padded with 0 for the new classes, times T²; ours is it minus the teacher's entropy."""
    torch.manual_seed(0)
    student = torch.randn(8, 10, requires_grad=True)
    teacher = torch.randn(8, 10)
    seen, old, T = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1]), 3.0
    ours = vandeven_term(teacher, student, (seen, old), T)
    targets = torch.cat([torch.softmax(teacher[:, :2] / T, 1), torch.zeros(8, 2)], 1)
    reference = -(targets * torch.log_softmax(student[:, seen] / T, 1)).sum(1).mean() * T * T
    entropy = -(targets[:, :2] * targets[:, :2].log()).sum(1).mean() * T * T
    assert torch.allclose(ours, reference - entropy, atol=1e-5)
    (g_ours,) = torch.autograd.grad(ours, student)
    (g_ref,) = torch.autograd.grad(reference, student)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)
    assert g_ours[:, 4:].abs().sum() == 0  # unseen classes are outside the term


def test_class_incremental_vandeven_pulls_new_classes_down_where_old_classes_cannot(digits5):
    """The student is still the teacher: the old-classes term is 0 and blind to the new classes' logits; van de
    Ven's term is positive and its gradient lowers every new-class logit (descent on a positive gradient)."""
    benchmark = digits5["class"]
    new = list(benchmark.tasks[1].classes)
    for variant in ("old-classes", "vandeven"):
        strategy, model, ctx, batch = _distill(benchmark, distill_variant=variant, distill_alpha=0.5)
        logits = model(batch.x).detach().requires_grad_(True)
        penalty = strategy.penalty(ctx, batch, logits)
        assert penalty is not None
        (grad,) = torch.autograd.grad(penalty, logits)
        if variant == "old-classes":
            assert penalty.abs() < 1e-6 and grad[:, new].abs().max() == 0
        else:
            assert penalty > 0 and (grad[:, new] > 0).all()


@pytest.mark.parametrize("scenario", ["task", "domain"])
def test_vandeven_term_is_zero_for_a_student_equal_to_its_teacher_with_a_task_id_or_one_label_space(
        scenario: str, digits5):
    strategy, model, ctx, batch = _distill(digits5[scenario], distill_alpha=0.5)
    penalty = strategy.penalty(ctx, batch, model(batch.x))
    assert penalty is not None and penalty.abs() < 1e-6


def test_task_incremental_vandeven_distils_each_past_task_over_its_own_classes(digits5):
    benchmark = digits5["task"]
    columns = vandeven_columns(benchmark, 3, torch.device("cpu"))
    assert [c.tolist() for c in columns[::2]] == [list(benchmark.tasks[t].classes) for t in range(3)]
    assert all(k.tolist() == [0, 1] for k in columns[1::2])  # each past task's softmax, whole
    seen, old = vandeven_columns(digits5["class"], 3, torch.device("cpu"))
    assert seen.tolist() == list(range(8)) and old.tolist() == list(range(6))


def test_task_count_weighting_gives_every_seen_task_the_same_weight():
    strategy = Distill(distill_weighting="task-count", distill_alpha=0.9)  # α is not read
    assert [strategy.ce_weight(t) for t in range(4)] == [1.0, 0.5, pytest.approx(1 / 3), 0.25]
    assert [strategy.kd_weight(t) for t in range(1, 4)] == [0.5, pytest.approx(2 / 3), 0.75]
    with pytest.raises(ConfigError, match="distill_alpha is searched but inert"):
        from sweep.tune.search_space import Param, check_active

        check_active((Param("distill_alpha", "float", low=0.0, high=1.0),), {"distill_weighting": "task-count"},
                     "space.yaml")


def test_class_incremental_lwf_retains_old_classes_only_with_van_de_vens_term(digits5):
    """What the issue measured: with the old-classes term class-incremental LwF forgets every old class, as naive
    does; van de Ven's keeps some (split-digits, 5 tasks, 10 epochs: task 1's classes, at the new ones' cost)."""
    base = dict(benchmark="split-digits", scenario="class", num_tasks=5, hidden=(32, 32), epochs=10, batch_size=32,
                strategy="distill", distill_weighting="task-count")
    old = {variant: float(np.mean(run_config(TrainConfig(**base, distill_variant=variant),  # type: ignore[arg-type]
                                             digits5["class"]).test[-1][:-1]))
           for variant in ("old-classes", "vandeven")}
    assert old["old-classes"] < 0.05 and old["vandeven"] > 0.2, old


def _study_json(folder: Path, defaults: dict[str, object]) -> None:
    folder.mkdir()
    (folder / "study.json").write_text(json.dumps({
        "study": folder.name, "strategy": "distill", "space": "s.yaml", "space_sha256": "0", "objective": "pareto",
        "base_config": {"benchmark": "split-digits", "scenario": "class", "strategy": "distill"}, "seeds": [0],
        "defaults": defaults}))


def test_a_distill_study_from_before_the_variant_resumes_only_with_its_old_meaning(tmp_path: Path):
    """Its trials ran the old-classes term: resuming it under today's default would mix two methods in one study."""
    from sweep.tune.study import check_resume

    before = {k: v for k, v in DEFAULTS.items() if k not in ("distill_variant", "distill_weighting")}
    _study_json(tmp_path / "old", before)

    def meta(**fixed: object) -> dict[str, object]:
        return {"strategy": "distill", "space_sha256": "0", "objective": "pareto", "seeds": [0], "protocol": None,
                "base_config": {"benchmark": "split-digits", "scenario": "class", "strategy": "distill", **fixed},
                "weights_sha256": {}, "writes": {"in_study": ["cache", "ray"], "storage": None}}

    with pytest.raises(ConfigError, match="distill_variant is unset here, 'old-classes' in the study"):
        check_resume(tmp_path / "old", meta())
    check_resume(tmp_path / "old", meta(distill_variant="old-classes"))  # --distill-variant old-classes
    _study_json(tmp_path / "new", dict(DEFAULTS))  # made with the variant: today's default is its own
    check_resume(tmp_path / "new", meta())


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_the_production_api_distils_with_the_chosen_variant_as_the_trainer_does(scenario: str, digits5, tmp_path):
    """`chosen.distillation(...)` must train what the sweep measured: for a vandeven setting, the same term as
    the strategy (class-incremental: old and new classes in the student's softmax; task-incremental: one
    softmax per past task), and α = 1/t with the task-count weighting."""
    from sweep import api

    benchmark = digits5[scenario]
    strategy, model, ctx, batch = _distill(benchmark, distill_variant="vandeven", distill_alpha=0.3,
                                           distill_temperature=2.0)
    raw = model(batch.x)
    term = strategy.penalty(ctx, batch, raw)
    assert term is not None
    old, new = list(benchmark.tasks[0].classes), list(benchmark.tasks[1].classes)
    chosen = api.Chosen(TrainConfig(strategy="distill", scenario=scenario, distill_variant="vandeven",
                                    distill_alpha=0.3, distill_temperature=2.0))
    loss = chosen.distillation(model, classes=old, new_classes=new, per_task=[old] if scenario == "task" else None)
    assert torch.allclose(loss.penalty(batch.x, raw), term, atol=1e-6)
    counted = api.Chosen(TrainConfig(strategy="distill", distill_weighting="task-count"))
    assert counted.distillation(model, classes=old, new_classes=new, task=4).alpha == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="pass task=, the 1-based task being learned"):
        counted.distillation(model, classes=old)
