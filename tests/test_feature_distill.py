"""Feature distillation: distill's MSE between the student's and the frozen teacher's intermediate outputs
(``feature_distill_weight``, ``feature_distill_layers``), beside LwF's output distillation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.data.tasks import Benchmark, to_float
from sweep.errors import ConfigError
from sweep.models import build_model, named_layers
from sweep.strategies.base import NO_FEATURES, Batch, Features, TaskContext
from sweep.strategies.distill import Distill, distillation_term
from sweep.strategies.registry import build_strategy
from sweep.train.trainer import SequenceResult, masked_logits, train_sequence

BASE = {"hidden": (32, 32), "epochs": 2, "batch_size": 32, "strategy": "distill"}  # split-digits: ~0.2 s a run


@pytest.fixture(scope="module")
def digits() -> dict[str, Benchmark]:
    return {scenario: build_benchmark("split-digits", scenario) for scenario in ("task", "class", "domain")}


def build(config: TrainConfig, benchmark: Benchmark) -> tuple[nn.Module, Distill]:
    torch.manual_seed(config.seed)
    model = build_model(config.model, benchmark.input_shape, benchmark.num_classes, config.hidden)
    strategy = build_strategy(config, len(model.layers()))
    assert isinstance(strategy, Distill) or config.strategy != "distill"
    return model, strategy  # type: ignore[return-value]


def run(config: TrainConfig, benchmark: Benchmark, **hooks) -> tuple[SequenceResult, nn.Module, Distill]:
    model, strategy = build(config, benchmark)
    return train_sequence(benchmark, model, strategy, config, **hooks), model, strategy


def same_run(a: SequenceResult, b: SequenceResult) -> bool:
    return np.array_equal(a.val, b.val) and np.array_equal(a.test, b.test)


class OutputDistill(Distill):
    """LwF as it was before feature distillation: the output term alone, through the production API's function."""

    def penalty(self, ctx: TaskContext, batch: Batch, raw_logits: Tensor, features: Features = NO_FEATURES):
        if self.alpha == 1.0 or self.teacher is None or self.known is None:
            return None
        return distillation_term(self.teacher, batch.x, raw_logits, self.known, self.temperature, self.alpha)


@pytest.mark.parametrize("scenario", ["task", "class", "domain"])
def test_weight_zero_is_output_distillation_exactly(scenario: str, digits):
    benchmark = digits[scenario]
    config = TrainConfig(**BASE, scenario=scenario, distill_alpha=0.3, distill_temperature=3.0,
                         feature_distill_weight=0.0, feature_distill_layers="0,1,2",
                         distill_variant="old-classes")  # the reference below is that term
    result, model, strategy = run(config, benchmark)
    assert strategy.feature_layers(1) == ()  # no hooks on the model at all
    torch.manual_seed(config.seed)
    reference_model = build_model(config.model, benchmark.input_shape, benchmark.num_classes, config.hidden)
    reference_strategy = OutputDistill(distill_variant="old-classes", distill_temperature=3.0, distill_alpha=0.3)
    reference = train_sequence(benchmark, reference_model, reference_strategy, config)
    assert same_run(result, reference)
    for (name, p), q in zip(model.state_dict().items(), reference_model.state_dict().values()):
        assert torch.equal(p, q), name


def first_penalties_of_task_2(config: TrainConfig, benchmark: Benchmark) -> list[tuple[Tensor, Features]]:
    """The penalty and the features the trainer handed over, at each step of task 2."""
    model, strategy = build(config, benchmark)
    seen: list[tuple[Tensor, Features]] = []
    penalty = strategy.penalty

    def spy(ctx: TaskContext, batch: Batch, raw: Tensor, features: Features = NO_FEATURES):
        term = penalty(ctx, batch, raw, features)
        if ctx.task_index == 1:
            seen.append((term.detach(), {k: v.detach() for k, v in features.items()}))
        return term

    strategy.penalty = spy  # type: ignore[method-assign]
    train_sequence(benchmark, model, strategy, config)
    return seen


@pytest.mark.parametrize("layers", ["-2", "0,1,2", "hidden.0,head"])
def test_the_penalty_is_zero_at_the_first_step_of_the_fine_tune(layers: str, digits):
    # α = 1: the penalty is the feature term alone; the student is still the teacher at task 2's first step
    config = TrainConfig(**BASE, distill_alpha=1.0, feature_distill_weight=5.0, feature_distill_layers=layers)
    seen = first_penalties_of_task_2(config, digits["domain"])
    (first, features), (later, _) = seen[0], seen[-1]
    assert len(features) == len(layers.split(","))  # the trainer handed the chosen layers' outputs over
    assert first.item() == 0.0
    assert later.item() > 0.0  # and it acts once the student moves
    both = first_penalties_of_task_2(config.replace(distill_alpha=0.5), digits["domain"])
    assert both[0][0].item() == 0.0  # with the output term too


def test_a_positive_weight_changes_the_result(digits):
    benchmark = digits["domain"]
    config = TrainConfig(**BASE, scenario="domain", distill_alpha=0.5, feature_distill_weight=0.0)
    output_only, _, _ = run(config, benchmark)
    with_features, _, _ = run(config.replace(feature_distill_weight=10.0), benchmark)
    assert not same_run(output_only, with_features)
    assert np.array_equal(output_only.val[0], with_features.val[0])  # task 1 is the same: no teacher yet
    naive, _, _ = run(config.replace(strategy="naive"), benchmark)
    features_alone, _, _ = run(config.replace(distill_alpha=1.0, feature_distill_weight=10.0), benchmark)
    assert not same_run(naive, features_alone)
    # it keeps the old task: old-task accuracy after task 2 above naive fine-tuning's
    assert features_alone.val[1, 0] > naive.val[1, 0]


def layer_outputs(model: nn.Module, x: Tensor, layers: list[int]) -> list[Tensor]:
    modules = named_layers(model)
    outputs: dict[int, Tensor] = {}
    handles = [modules[i][1].register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out)) for i in layers]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return [outputs[i] for i in layers]


def test_the_teacher_is_frozen_and_is_the_model_after_the_previous_task(digits):
    benchmark = digits["class"]
    config = TrainConfig(**BASE, scenario="class", distill_alpha=1.0, feature_distill_weight=2.0,
                         feature_distill_layers="0,-2")
    model, strategy = build(config, benchmark)
    after_task: list[dict[str, Tensor]] = []
    checked: list[bool] = []
    calls = [0]
    penalty = strategy.penalty

    def spy(ctx: TaskContext, batch: Batch, raw: Tensor, features: Features = NO_FEATURES):
        term = penalty(ctx, batch, raw, features)
        calls[0] += ctx.task_index == 1
        if calls[0] == 10 and not checked:  # task 2's 10th step, recomputed from the weights after task 1, by hand
            assert term > 0  # the student has moved
            teacher = build_model(config.model, benchmark.input_shape, benchmark.num_classes, config.hidden)
            teacher.load_state_dict(after_task[0])
            wanted = layer_outputs(teacher, batch.x, [0, 1])
            assert set(features) == {0, 1}
            expected = 2.0 * (F.mse_loss(features[0], wanted[0]) + F.mse_loss(features[1], wanted[1])) / 2
            assert torch.allclose(term, expected, rtol=1e-6, atol=0)
            checked.append(True)
        return term

    strategy.penalty = spy  # type: ignore[method-assign]
    train_sequence(benchmark, model, strategy, config,
                   callback=lambda report: after_task.append({k: v.clone() for k, v in model.state_dict().items()}))
    assert checked
    teacher = strategy.teacher
    assert teacher is not None and teacher is not model and not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    # after the last task it is the model after that task; during task 2 it was the model after task 1 (above)
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, after_task[1][name]), name
    assert any(not torch.equal(after_task[0][k], after_task[1][k]) for k in after_task[0])  # task 2 moved the model


def test_the_teacher_restored_from_its_state_gives_the_same_penalty(digits):
    benchmark = digits["task"]
    config = TrainConfig(**BASE, distill_alpha=0.5, feature_distill_weight=1.0, feature_distill_layers="0,-2")
    _, model, strategy = run(config, benchmark)
    restored = build_strategy(config, len(model.layers()))
    restored.load_state_dict(strategy.state_dict())
    masks = benchmark.task_masks()
    ctx = TaskContext(1, benchmark, model, torch.device("cpu"), 32, torch.Generator().manual_seed(1),
                      lambda x, ids: masked_logits(model, x, ids, masks))
    restored.before_task(ctx)  # rebuilds the teacher before the trainer hooks the model
    x = to_float(benchmark.tasks[1].train.x[:32])
    batch = Batch(x, benchmark.tasks[1].train.y[:32], None)
    with torch.no_grad():
        model.hidden[0].weight.add_(0.01)  # away from the teacher
        raw = model(x)
        features = dict(zip((0, 1), layer_outputs(model, x, [0, 1])))
        want, got = strategy.penalty(ctx, batch, raw, features), restored.penalty(ctx, batch, raw, features)
    assert restored.feature_layers(1) == strategy.feature_layers(1) == (0, 1)
    assert want > 0 and torch.equal(want, got)


def test_a_cnn_distils_its_convolutional_features(digits):
    benchmark = digits["domain"]
    config = TrainConfig(**BASE | {"epochs": 1}, model="cnn", distill_alpha=1.0, feature_distill_weight=1.0,
                         feature_distill_layers="convs.0,fc")
    seen = first_penalties_of_task_2(config, benchmark)
    assert seen[0][0].item() == 0.0 and seen[-1][0].item() > 0.0
    assert [tuple(v.shape[1:]) for v in seen[0][1].values()] == [(32, 8, 8), (128,)]


def test_an_unknown_layer_is_refused_before_task_1_trains(digits):
    config = TrainConfig(**BASE, feature_distill_weight=1.0, feature_distill_layers="0,conv9")
    steps: list[int] = []
    with pytest.raises(ConfigError) as err:
        run(config, digits["task"], progress=lambda t, step, total: steps.append(step))
    assert "'conv9'" in str(err.value) and "hidden.0" in str(err.value) and "\n" not in str(err.value)
    assert steps == []
    with pytest.raises(ConfigError, match="feature_distill_layers: 3 is not a layer"):
        run(config.replace(feature_distill_layers="3"), digits["task"])  # the MLP has layers 0, 1, 2


@pytest.mark.parametrize("value,needle", [("", "comma-separated"), ("0, 1", "comma-separated"),
                                          ("0,,1", "comma-separated"), (2, "quote it in YAML: '2'")])
def test_a_malformed_layer_list_is_refused_by_the_table(value: object, needle: str):
    with pytest.raises(ConfigError) as err:
        TrainConfig(feature_distill_layers=value)
    assert needle in str(err.value) and "feature_distill_layers" in str(err.value)


def test_the_production_api_refuses_a_feature_distilling_choice_rather_than_drop_its_term():
    from sweep import api

    teacher = torch.nn.Linear(4, 2)
    plain = api.Chosen(TrainConfig(strategy="distill", distill_alpha=0.5))
    assert plain.distillation(teacher).alpha == 0.5
    featured = api.Chosen(TrainConfig(strategy="distill", feature_distill_weight=1.0))
    with pytest.raises(ConfigError, match="feature_distill_weight=1"):
        featured.distillation(teacher)
