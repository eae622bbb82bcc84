"""The strategy contract: every hook is a no-op by default (for every registered strategy), and the
trainer honours each one, shown on a toy strategy per hook. Composite combines them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.data.tasks import Benchmark
from sweep.errors import ConfigError
from sweep.models import build_model, named_layers
from sweep.strategies.base import (
    NO_FEATURES,
    WHOLE_TASK,
    Auxiliary,
    Batch,
    Features,
    Phase,
    Strategy,
    TaskContext,
)
from sweep.strategies.registry import STRATEGIES, Composite, build_strategy
from sweep.train.trainer import (
    EpochReport,
    TaskReport,
    build_run,
    iter_sequence,
    load_benchmark,
    train_sequence,
)
from sweep.tune.options import SweepOptions, base_config
from sweep.tune.search_space import DEFAULT_SPACES_DIR, Param, SearchSpace, load_space
from sweep.tune.trial import run_trial
from tests.helpers import task_context

CONFIG = TrainConfig(hidden=(32, 32), epochs=2, batch_size=32)  # split-digits: ~650 images per task
COMBOS = ("ewc+replay+freeze", "distill+replay", "ewc+l2sp")


@pytest.fixture(scope="module")
def digits() -> Benchmark:
    return build_benchmark("split-digits", "task")


def fresh_model(config: TrainConfig, benchmark: Benchmark) -> nn.Module:
    torch.manual_seed(config.seed)
    return build_model(config.model, benchmark.input_shape, benchmark.num_classes, config.hidden)


def steps_per_task(config: TrainConfig, benchmark: Benchmark, epochs: int | None = None) -> list[int]:
    per_epoch = [math.ceil(len(task.train) / config.batch_size) for task in benchmark.tasks]
    return [n * (config.epochs if epochs is None else epochs) for n in per_epoch]


def weights(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --- the defaults are no-ops, for every registered strategy ----------------------------------------


@pytest.mark.parametrize("spec", (*STRATEGIES, *COMBOS))
def test_new_hooks_default_to_no_ops(spec: str, digits):
    model = fresh_model(CONFIG, digits)
    strategy = build_strategy(CONFIG.replace(strategy=spec), len(model.layers()))
    for t in range(digits.num_tasks):
        ctx, batch = task_context(digits, model, t)
        strategy.before_task(ctx)
        params = list(model.parameters())
        if "adapter" in spec.split("+") and t > 0:  # the hook adapters exist for: the head, and each adapter's A, B
            head = {id(p) for p in named_layers(model)[-1][1].parameters()}
            chosen = strategy.trainable_parameters(ctx, params)
            assert [id(p) for p in chosen[:len(head)]] == [id(p) for p in params if id(p) in head]
            assert len(chosen) == len(head) + 2 * (len(named_layers(model)) - 1)
        else:
            assert strategy.trainable_parameters(ctx, params) is params
        if "lpft" in spec.split("+") and t > 0:  # the hook LP-FT exists for: probe the head, then fine-tune
            assert [(p.name, p.epochs) for p in strategy.phases(t)] == [("probe", CONFIG.lp_epochs), ("tune", None)]
        else:
            assert tuple(strategy.phases(t)) == WHOLE_TASK
        assert all(strategy.lr_factor(t, step, 20) == 1.0 for step in (0, 7, 19))
        assert strategy.feature_layers(t) == ()
        assert all(strategy.eval_model(ctx, i) is model for i in range(digits.num_tasks))
        if "genreplay" in spec.split("+") and t < digits.num_tasks - 1:  # its generator, stepped beside the model
            assert isinstance(strategy.auxiliary(ctx), Auxiliary)
        else:
            assert strategy.auxiliary(ctx) is None
        before = strategy.state_dict()
        assert strategy.after_step(ctx, batch) is None
        after = strategy.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(v, after[k]) if isinstance(v, Tensor) else v == after[k] for k, v in before.items())
        strategy.after_task(ctx)  # builds the state (Fisher, buffer, teacher) the next task's hooks see


def test_the_default_penalty_ignores_features(digits):
    model = fresh_model(CONFIG, digits)
    ctx, batch = task_context(digits, model, 0)
    raw = model(batch.x)
    assert Strategy().penalty(ctx, batch, raw) is None
    assert Strategy().penalty(ctx, batch, raw, {"head": raw}) is None


# --- toy strategies, one per hook ---------------------------------------------------------------


class CountSteps(Strategy):
    name = "count-steps"

    def __init__(self) -> None:
        self.steps: list[int] = []  # per task
        self.grads_present: list[bool] = []

    def before_task(self, ctx: TaskContext) -> None:
        self.steps.append(0)

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        self.steps[-1] += 1
        self.grads_present.append(all(p.grad is not None for p in ctx.model.parameters()))


def test_after_step_sees_every_optimizer_step_with_its_gradients(digits):
    strategy = CountSteps()
    train_sequence(digits, fresh_model(CONFIG, digits), strategy, CONFIG)
    assert strategy.steps == steps_per_task(CONFIG, digits)
    assert all(strategy.grads_present)


class Warmup(Strategy):
    """lr 0 for the first ``hold`` steps of each task, then the full lr; records what it was asked."""

    name = "warmup"

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self.asked: list[tuple[int, int, int]] = []
        self.moved: list[bool] = []  # per step: did the weights change?
        self.last: dict[str, Tensor] = {}

    def before_task(self, ctx: TaskContext) -> None:
        self.last = weights(ctx.model)

    def lr_factor(self, task_index: int, step: int, steps_in_task: int) -> float:
        self.asked.append((task_index, step, steps_in_task))
        return 0.0 if step < self.hold else 1.0

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        now = weights(ctx.model)
        self.moved.append(any(not torch.equal(now[k], v) for k, v in self.last.items()))
        self.last = now


def test_lr_factor_zero_leaves_the_weights_and_one_restores_the_lr(digits):
    model = fresh_model(CONFIG, digits)
    start = weights(model)
    train_sequence(digits, model, Warmup(hold=10**9), CONFIG)  # factor 0 throughout
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())

    strategy = Warmup(hold=5)
    train_sequence(digits, fresh_model(CONFIG, digits), strategy, CONFIG)
    totals = steps_per_task(CONFIG, digits)
    assert strategy.asked == [(t, s, totals[t]) for t in range(digits.num_tasks) for s in range(totals[t])]
    for t in range(digits.num_tasks):
        moved = strategy.moved[sum(totals[:t]) : sum(totals[: t + 1])]
        assert moved == [False] * 5 + [True] * (totals[t] - 5)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(named_layers(model)[-1][1].parameters())


class ProbeThenTune(Strategy):
    """Linear probing for one epoch (only the head trains), then one epoch of fine-tuning."""

    name = "probe-then-tune"

    def __init__(self) -> None:
        self.moved: list[tuple[bool, bool]] = []  # per step: (head moved, body moved)
        self.last: dict[str, Tensor] = {}
        self.totals: set[int] = set()

    def phases(self, task_index: int) -> tuple[Phase, ...]:
        return Phase("probe", 1, head_parameters), Phase("tune", 1)

    def before_task(self, ctx: TaskContext) -> None:
        self.last = weights(ctx.model)

    def lr_factor(self, task_index: int, step: int, steps_in_task: int) -> float:
        self.totals.add(steps_in_task)
        return 1.0

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        now = weights(ctx.model)
        changed = {k for k, v in self.last.items() if not torch.equal(now[k], v)}
        self.moved.append((bool(changed & {"head.weight", "head.bias"}), bool(changed - {"head.weight", "head.bias"})))
        self.last = now


def test_a_probing_phase_trains_only_the_head_then_fine_tuning_trains_all(digits):
    config = CONFIG.replace(epochs=5)  # the phases set their own epochs
    strategy = ProbeThenTune()
    model = fresh_model(config, digits)
    steps = iter_sequence(digits, model, strategy, config, epoch_reports=True)
    reports = list(_drain(steps))
    per_epoch = steps_per_task(config, digits, epochs=1)
    assert strategy.totals == {2 * n for n in per_epoch}  # steps_in_task counts every phase
    offset = 0
    for n in per_epoch:
        probe, tune = strategy.moved[offset : offset + n], strategy.moved[offset + n : offset + 2 * n]
        assert probe == [(True, False)] * n
        assert all(head and body for head, body in tune)
        offset += 2 * n
    assert len(strategy.moved) == offset
    assert [(r.task_index, r.epoch) for r in reports if isinstance(r, EpochReport)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(p.requires_grad for p in model.parameters())  # the probe's restriction ends with its phase


def _drain(steps):
    while True:
        try:
            yield next(steps)
        except StopIteration:
            return


class WantsFeatures(Strategy):
    name = "wants-features"

    def __init__(self, layers: tuple[str | int, ...]) -> None:
        self.layers = layers
        self.shapes: list[dict] = []

    def feature_layers(self, task_index: int) -> tuple[str | int, ...]:
        return self.layers

    def penalty(self, ctx: TaskContext, batch: Batch, raw_logits: Tensor, features: Features = NO_FEATURES) -> Tensor:
        self.shapes.append({k: tuple(v.shape) for k, v in features.items()})
        assert features[-1] is raw_logits  # the head's output is the logits themselves
        return 1e-3 * features["hidden.0"].square().mean()  # a penalty on features has gradients


def test_feature_layers_reach_the_penalty_with_their_shapes_and_the_hooks_go_after_the_task(digits):
    strategy = WantsFeatures(("hidden.0", -1))
    model = fresh_model(CONFIG, digits)
    result = train_sequence(digits, model, strategy, CONFIG)
    assert result.status == "finished"
    assert len(strategy.shapes) == sum(steps_per_task(CONFIG, digits))
    for shapes in strategy.shapes:
        batch = shapes["hidden.0"][0]
        assert shapes == {"hidden.0": (batch, 32), -1: (batch, digits.num_classes)}
    assert all(not module._forward_hooks for module in model.modules())


def test_an_unknown_feature_layer_is_a_config_error_naming_the_layers(digits):
    with pytest.raises(ConfigError, match=r"'conv9'.*hidden\.0, hidden\.1, head"):
        train_sequence(digits, fresh_model(CONFIG, digits), WantsFeatures(("conv9",)), CONFIG)


class Constant(nn.Module):
    """Predicts one class for every input."""

    def __init__(self, label: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.tensor(label), num_classes).float())

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.expand(len(x), -1)


class EvaluateWithConstants(Strategy):
    name = "constants"

    def eval_model(self, ctx: TaskContext, task_index: int) -> nn.Module:
        task = ctx.benchmark.tasks[task_index]
        return Constant(task.classes[0], ctx.benchmark.num_classes)


def test_eval_model_is_what_evaluates_each_task(digits):
    result = train_sequence(digits, fresh_model(CONFIG, digits), EvaluateWithConstants(), CONFIG)
    for i, task in enumerate(digits.tasks):
        known_val = float((task.val.y == task.classes[0]).double().mean())
        known_test = float((task.test.y == task.classes[0]).double().mean())
        assert np.allclose(result.val[:, i], known_val) and np.allclose(result.test[:, i], known_test)


class WithAuxiliary(Strategy):
    """A linear autoencoder beside the classifier, its loss stepped by the trainer."""

    name = "auxiliary"

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.losses: list[float] = []

    def auxiliary(self, ctx: TaskContext) -> Auxiliary:
        if self.model is None:
            size = math.prod(ctx.benchmark.input_shape)
            self.model = nn.Sequential(nn.Flatten(), nn.Linear(size, 8), nn.Linear(8, size)).to(ctx.device)
        return Auxiliary(self.model, self.reconstruction, lr=1e-2)

    def reconstruction(self, ctx: TaskContext, batch: Batch) -> Tensor:
        assert self.model is not None
        loss = (self.model(batch.x) - batch.x.flatten(1)).square().mean()
        self.losses.append(float(loss.detach()))
        return loss


def test_the_trainer_steps_an_auxiliary_model_and_leaves_the_classifier_as_it_was(digits):
    strategy = WithAuxiliary()
    model = fresh_model(CONFIG, digits)
    strategy.auxiliary(task_context(digits, model, 0)[0])  # build it, to see where it starts
    assert strategy.model is not None
    start = weights(strategy.model)
    result = train_sequence(digits, model, strategy, CONFIG)
    assert len(strategy.losses) == sum(steps_per_task(CONFIG, digits))
    assert all(not torch.equal(v, strategy.model.state_dict()[k]) for k, v in start.items())
    assert np.mean(strategy.losses[-10:]) < 0.5 * np.mean(strategy.losses[:10])  # it learns
    naive = train_sequence(digits, fresh_model(CONFIG, digits), Strategy(), CONFIG)
    assert np.array_equal(result.val, naive.val) and np.array_equal(result.test, naive.test)


# --- a strategy's own state travels through the prefix cache ------------------------------------


class PathImportance(Strategy):
    """SI-like: Σ over task steps of grad², gathered in after_step, anchors a quadratic penalty from task 2 on."""

    name = "path-importance"
    instances: list[PathImportance] = []

    def __init__(self, strength: float = 100.0) -> None:
        self.strength = strength
        self.importance: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self.steps = 0  # a per-run counter, part of the state
        self.trained: list[int] = []
        type(self).instances.append(self)

    @classmethod
    def from_config(cls, config: TrainConfig) -> PathImportance:
        return cls()

    def before_task(self, ctx: TaskContext) -> None:
        self.trained.append(ctx.task_index)

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        self.steps += 1
        for name, p in ctx.model.named_parameters():
            if p.grad is not None:
                self.importance[name] = self.importance.get(name, 0.0) + p.grad.detach().square()

    def after_task(self, ctx: TaskContext) -> None:
        self.anchor = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}

    def penalty(self, ctx: TaskContext, batch: Batch, raw_logits: Tensor, features: Features = NO_FEATURES):
        if not self.anchor:
            return None
        terms = [(self.importance.get(n, torch.zeros(())) * (p - self.anchor[n]).square()).sum()
                 for n, p in ctx.model.named_parameters()]
        return self.strength * torch.stack(terms).sum()

    def state_dict(self) -> dict[str, Tensor | float | int]:
        return {"steps": self.steps, **{f"importance.{n}": v for n, v in self.importance.items()},
                **{f"anchor.{n}": v for n, v in self.anchor.items()}}

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        self.steps = int(state["steps"])
        self.importance = {k.removeprefix("importance."): v for k, v in state.items() if k.startswith("importance.")}
        self.anchor = {k.removeprefix("anchor."): v for k, v in state.items() if k.startswith("anchor.")}


class ForgetsImportance(PathImportance):
    """The negative control: leaves its importance out of the state, so a cached run differs."""

    name = "forgets-importance"
    instances: list[PathImportance] = []

    def state_dict(self) -> dict[str, Tensor | float | int]:
        return {k: v for k, v in super().state_dict().items() if not k.startswith("importance.")}


def _trial(spec: str, prefix_dir: Path | None) -> dict:
    config = CONFIG.replace(strategy=spec)
    benchmark = build_benchmark("split-digits", "task")
    final = run_trial(config, benchmark, [0], lambda metrics: None, prefix_dir=str(prefix_dir) if prefix_dir else None)
    return final["accuracy"]


@pytest.mark.parametrize("toy", (PathImportance, ForgetsImportance))
def test_a_strategys_own_state_survives_the_prefix_cache(toy: type[PathImportance], tmp_path: Path, monkeypatch):
    monkeypatch.setitem(STRATEGIES, toy.name, toy)
    monkeypatch.setattr(toy, "instances", [])
    uncached = _trial(toy.name, None)
    filling = _trial(toy.name, tmp_path)
    reading = _trial(toy.name, tmp_path)
    assert [s.trained for s in toy.instances] == [[0, 1], [0, 1], [1]]  # the third run started from the cache
    assert filling == uncached and -1.0 not in uncached["0"]["val"][1]  # finished, task 2 evaluated
    if toy is PathImportance:
        assert reading == uncached
        assert toy.instances[2].steps == toy.instances[0].steps  # a counter from task 1 came back too
    else:
        assert reading != uncached  # what a strategy leaves out of its state is lost: the test can tell


# --- epoch-boundary reports ---------------------------------------------------------------------


def test_epoch_reports_arrive_in_order_between_task_reports(digits):
    config = CONFIG.replace(epochs=3)
    steps = iter_sequence(digits, fresh_model(config, digits), Strategy(), config, epoch_reports=True)
    reports = list(_drain(steps))
    assert [(type(r).__name__, r.task_index, getattr(r, "epoch", None)) for r in reports] == [
        ("EpochReport", 0, 0), ("EpochReport", 0, 1), ("EpochReport", 0, 2), ("TaskReport", 0, None),
        ("EpochReport", 1, 0), ("EpochReport", 1, 1), ("EpochReport", 1, 2), ("TaskReport", 1, None),
    ]
    tasks = [r for r in reports if isinstance(r, TaskReport)]
    for r in reports:
        if not isinstance(r, EpochReport):
            continue
        t = r.task_index
        assert np.isfinite(r.val[t, : t + 1]).all() and np.isnan(r.val[t, t + 1 :]).all()
        assert np.isnan(r.val[t + 1 :]).all() and np.isnan(r.test[t + 1 :]).all()
        if t > 0:
            assert np.array_equal(r.val[:t], tasks[t - 1].val[:t])
        if r.epoch == config.epochs - 1:  # naive's last epoch is the task's end
            assert np.array_equal(r.val[t, : t + 1], tasks[t].val[t, : t + 1])
    plain = train_sequence(digits, fresh_model(config, digits), Strategy(), config)
    assert np.array_equal(plain.val, tasks[-1].val)  # evaluating every epoch changes nothing


def test_by_default_only_task_reports_and_closing_at_an_epoch_stops_cleanly(digits):
    steps = iter_sequence(digits, fresh_model(CONFIG, digits), Strategy(), CONFIG)
    assert all(isinstance(r, TaskReport) for r in _drain(steps))
    model = fresh_model(CONFIG, digits)
    steps = iter_sequence(digits, model, WantsFeatures(("hidden.0", -1)), CONFIG, epoch_reports=True)
    first = next(steps)
    assert isinstance(first, EpochReport) and (first.task_index, first.epoch) == (0, 0)
    steps.close()  # a scheduler stops the trial here
    assert all(not module._forward_hooks for module in model.modules())


# --- Composite ------------------------------------------------------------------------------------


class Toy(Strategy):
    def __init__(self, name: str, *, factor: float = 1.0, layers: tuple = (), drop: int = 0, phases: bool = False,
                 evaluates: bool = False, auxiliary: bool = False) -> None:
        self.name, self.factor, self.layers, self.drop = name, factor, layers, drop  # type: ignore[misc]
        self.own_phases, self.evaluates, self.own_auxiliary = phases, evaluates, auxiliary
        self.stepped = 0
        self.seen: Features = NO_FEATURES

    def lr_factor(self, task_index: int, step: int, steps_in_task: int) -> float:
        return self.factor

    def feature_layers(self, task_index: int) -> tuple:
        return self.layers

    def trainable_parameters(self, ctx: TaskContext, params: list[nn.Parameter]) -> list[nn.Parameter]:
        return params[self.drop :] if self.drop else params

    def phases(self, task_index: int) -> tuple[Phase, ...]:
        return (Phase("probe", 1, head_parameters), Phase("tune")) if self.own_phases else WHOLE_TASK

    def eval_model(self, ctx: TaskContext, task_index: int) -> nn.Module:
        return Constant(0, ctx.benchmark.num_classes) if self.evaluates else ctx.model

    def auxiliary(self, ctx: TaskContext) -> Auxiliary | None:
        return Auxiliary(nn.Linear(1, 1), lambda ctx, batch: torch.zeros(())) if self.own_auxiliary else None

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        self.stepped += 1

    def penalty(self, ctx: TaskContext, batch: Batch, raw_logits: Tensor, features: Features = NO_FEATURES):
        self.seen = features
        return None


def test_composite_combines_the_hooks(digits):
    model = fresh_model(CONFIG, digits)
    ctx, batch = task_context(digits, model, 1)
    a = Toy("a", factor=0.5, layers=("head", 0), drop=1, phases=True, evaluates=True, auxiliary=True)
    b = Toy("b", factor=0.25, layers=(0, "hidden.1"), drop=2)
    both = Composite([a, b])
    assert both.lr_factor(1, 0, 10) == 0.125  # factors multiply
    assert both.feature_layers(1) == ("head", 0, "hidden.1")  # the union, in order
    params = list(model.parameters())
    assert both.trainable_parameters(ctx, params) == params[3:]  # each part narrows what the one before left
    assert [p.name for p in both.phases(1)] == ["probe", "tune"]  # from the one part that defines them
    assert isinstance(both.eval_model(ctx, 0), Constant)
    assert isinstance(both.auxiliary(ctx), Auxiliary)
    both.after_step(ctx, batch)
    assert (a.stepped, b.stepped) == (1, 1)
    features = {"head": torch.zeros(1)}
    both.penalty(ctx, batch, model(batch.x), features)
    assert a.seen is features and b.seen is features


@pytest.mark.parametrize("hook, kwargs, call", [
    ("phases", {"phases": True}, lambda s, ctx: s.phases(1)),
    ("the evaluation model", {"evaluates": True}, lambda s, ctx: s.eval_model(ctx, 0)),
    ("an auxiliary model", {"auxiliary": True}, lambda s, ctx: s.auxiliary(ctx)),
])
def test_composite_refuses_two_parts_that_each_define_a_single_valued_hook(hook: str, kwargs: dict, call, digits):
    model = fresh_model(CONFIG, digits)
    ctx, _ = task_context(digits, model, 1)
    both = Composite([Toy("a", **kwargs), Toy("b"), Toy("c", **kwargs)])
    with pytest.raises(ConfigError, match=f"'a\\+b\\+c': a and c each define {hook}; at most one component may"):
        call(both, ctx)
    call(Composite([Toy("a", **kwargs), Toy("b")]), ctx)  # one is fine


# --- every registered strategy, every shipped space, trained at the corners of its ranges -----------

SPACE_FILES = sorted(DEFAULT_SPACES_DIR.glob("*.yaml"))


def top(p: Param) -> float | int:
    """A numeric parameter's highest value Optuna can draw (an int range ends on its step's grid)."""
    assert p.low is not None and p.high is not None
    return p.high if p.kind == "float" else p.low + (p.high - p.low) // p.step * p.step


def corners(space: SearchSpace) -> list[dict]:
    """Every range at both ends (first every low, then every high: corners of the box, the strategy's
    knobs at their extremes together) and every categorical choice at least once."""
    runs = max([2, *(len(p.choices) for p in space.params)])
    return [{p.name: p.choices[min(i, len(p.choices) - 1)] if p.kind == "categorical" else (p.low if i % 2 == 0
             else top(p)) for p in space.params} for i in range(runs)]


def test_every_registered_strategy_has_a_shipped_space():
    assert set(STRATEGIES) <= {path.stem for path in SPACE_FILES}


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_every_space_trains_at_the_corners_of_its_ranges(path: Path):
    """What a sweep of the shipped space can draw builds, trains (at least a step on every task) and finishes,
    at the sweep's defaults (split-digits, task-incremental) and one epoch unless the space searches epochs."""
    space = load_space(path)
    searched = {p.name for p in space.params}
    base = base_config(SweepOptions(strategy=space.strategy, epochs=None if "epochs" in searched else 1), space)
    benchmark = load_benchmark(TrainConfig.from_mapping(base))
    for values in corners(space):
        config = TrainConfig.from_mapping({**base, **values}, source=f"{path.name} at {values}")
        model, strategy = build_run(config, benchmark)
        result = train_sequence(benchmark, model, strategy, config)
        assert result.status == "finished", (values, result.reason)
        assert result.compute_first.optimizer_steps >= 1 and result.compute.optimizer_steps >= 1, values
        assert np.isfinite(result.val).all(), values
