"""Contract test over every registered strategy (and a few combinations) on split-digits.

A new entry in STRATEGIES is tested here without anyone writing a new test; it only needs its
no-op setting in NEUTRAL and, if it penalises, a place in PENALISED.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.data.tasks import Benchmark, to_float
from sweep.errors import ConfigError
from sweep.hparams import BY_NAME, strategy_fields
from sweep.models import build_model, layer_parameters
from sweep.strategies.base import Batch, Strategy, TaskContext
from sweep.strategies.ewc import EWC
from sweep.strategies.quadratic import quadratic_penalty
from sweep.strategies.registry import STRATEGIES, build_strategy, parse_strategy
from sweep.strategies.replay import Replay, balanced_quotas
from sweep.train.trainer import SequenceResult, train_sequence
from tests.helpers import task_context

COMBOS = ("ewc+replay+freeze", "distill+replay", "ewc+l2sp", "ewc+lpft", "ewc+distill+freeze")  # last: the mission
SPECS = (*STRATEGIES, *COMBOS)
SCENARIOS = ("task", "class")
PENALISED = {"ewc", "l2sp", "distill"}  # components whose penalty() must be a finite loss with gradients
# a setting that makes each component active, and one that must make it naive, bit for bit
ACTIVE = {"ewc": {"ewc_lambda": 100.0}, "distill": {"distill_alpha": 0.5}, "replay": {"replay_size": 60},
          "l2sp": {"l2sp_lambda": 1.0}, "freeze": {"frozen_layers": 1}, "lpft": {"lp_epochs": 1},
          "interp": {"interp_alpha": 0.5}}
NEUTRAL = {"ewc": {"ewc_lambda": 0.0}, "distill": {"distill_alpha": 1.0}, "replay": {"replay_size": 0},
           "l2sp": {"l2sp_lambda": 0.0}, "freeze": {"frozen_layers": 0}, "naive": {}, "lpft": {"lp_epochs": 0},
           "interp": {"interp_alpha": 1.0}}
ACTIVE["adapter"], NEUTRAL["adapter"] = {"adapter_rank": 4}, {"adapter_rank": 0}  # rank 0: plain fine-tuning
ACTIVE["si"], NEUTRAL["si"] = {"si_c": 100.0}, {"si_c": 0.0}  # c = 0: the path integral only reads
ACTIVE["mas"], NEUTRAL["mas"] = {"mas_lambda": 1.0}, {"mas_lambda": 0.0}
PENALISED |= {"si", "mas"}
# r = 0: a generator trains beside the classifier, nothing generated is mixed in
ACTIVE["genreplay"], NEUTRAL["genreplay"] = {"genreplay_ratio": 0.5, "genreplay_epochs": 1}, {"genreplay_ratio": 0.0}
PENALISED |= {"genreplay"}
BASE = {"hidden": (32, 32), "epochs": 2, "batch_size": 32}  # split-digits: ~650 images per task, 0.1 s a run


@pytest.fixture(scope="module")
def digits() -> dict[str, Benchmark]:
    return {scenario: build_benchmark("split-digits", scenario) for scenario in SCENARIOS}


def config_for(spec: str, scenario: str, settings: dict, **extra) -> TrainConfig:
    overrides = {k: v for name in parse_strategy(spec) for k, v in settings.get(name, {}).items()}
    return TrainConfig(strategy=spec, scenario=scenario, **{**BASE, **overrides, **extra})


def run(config: TrainConfig, benchmark: Benchmark, **hooks) -> tuple[SequenceResult, nn.Module, Strategy]:
    torch.manual_seed(config.seed)
    model = build_model(config.model, benchmark.input_shape, benchmark.num_classes, config.hidden)
    strategy = build_strategy(config, len(model.layers()))
    return train_sequence(benchmark, model, strategy, config, **hooks), model, strategy


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("spec", SPECS)
def test_strategy_runs_and_its_penalty_has_gradients(spec: str, scenario: str, digits):
    benchmark = digits[scenario]
    config = config_for(spec, scenario, ACTIVE)
    checked = []

    def at_end_of_task_2(task_index: int, step: int, total: int) -> None:
        if task_index != 1 or step != total:
            return
        ctx, batch = task_context(benchmark, model, 1)  # the weights have moved away from θ* by now
        penalty = strategy.penalty(ctx, batch, model(batch.x))
        if not PENALISED & set(parse_strategy(spec)):
            assert penalty is None
        else:
            assert penalty is not None and penalty.ndim == 0 and torch.isfinite(penalty) and penalty > 0
            trainable = [p for p in model.parameters() if p.requires_grad]
            grads = torch.autograd.grad(penalty, trainable, allow_unused=True)
            assert all(g is None or torch.isfinite(g).all() for g in grads)
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
        checked.append(True)

    torch.manual_seed(0)
    model = build_model(config.model, benchmark.input_shape, benchmark.num_classes, config.hidden)
    strategy = build_strategy(config, len(model.layers()))
    result = train_sequence(benchmark, model, strategy, config, progress=at_end_of_task_2)
    assert checked and result.status == "finished"
    assert np.isfinite(result.val).all() and np.isfinite(result.test).all()
    assert result.val[0, 0] > 0.5  # task 1 was learned
    if "ewc" in spec:
        assert result.stats["fisher_trace"] > 0 and math.isfinite(result.stats["fisher_mean"])


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("spec", [s for s in SPECS if "joint" not in s])
def test_neutral_setting_reproduces_naive_exactly(spec: str, scenario: str, digits):
    naive, naive_model, _ = run(config_for("naive", scenario, {}), digits[scenario])
    result, model, _ = run(config_for(spec, scenario, NEUTRAL), digits[scenario])
    assert np.array_equal(result.val, naive.val) and np.array_equal(result.test, naive.test)
    for (name, p), q in zip(model.state_dict().items(), naive_model.state_dict().values()):
        assert torch.equal(p, q), name


def _snapshot(model: nn.Module) -> list[list[torch.Tensor]]:
    return [[p.detach().clone() for p in layer] for layer in layer_parameters(model)]


@pytest.mark.parametrize(
    ("spec", "settings"),
    [
        # the Fisher's own draws (subset, sampled labels) must not shift the run's batches
        ("ewc", {"ewc_lambda": 0.0, "fisher": "sampled", "fisher_samples": 50}),
        ("ewc", {"ewc_lambda": 0.0, "fisher": "batched", "ewc_mode": "online", "ewc_gamma": 0.5}),
        ("replay", {"replay_size": 60, "replay_ratio": 0.0}),  # a full buffer, never mixed in
        ("distill", {"distill_alpha": 1.0, "distill_temperature": 5.0}),
    ],
)
def test_other_neutral_settings_reproduce_naive_exactly(spec: str, settings: dict, digits):
    naive, _, _ = run(config_for("naive", "class", {}), digits["class"])
    result, _, _ = run(config_for(spec, "class", {spec: settings}), digits["class"])
    assert np.array_equal(result.val, naive.val) and np.array_equal(result.test, naive.test)


PREFIX_FREE_VALUES = {  # two values of each field a strategy declares unused until task 2
    "ewc_lambda": (0.0, 100.0), "l2sp_lambda": (0.0, 1.0), "distill_alpha": (1.0, 0.5),
    "distill_temperature": (1.0, 4.0), "replay_ratio": (0.0, 0.5), "frozen_layers": (0, 1), "lp_epochs": (0, 2),
    "feature_distill_weight": (0.0, 1.0), "feature_distill_layers": ("-2", "0,1"),
    "distill_variant": ("old-classes", "vandeven"), "distill_weighting": ("alpha", "task-count"),
    "interp_alpha": (1.0, 0.3), "interp_last_alpha": (None, 0.0), "interp_grid": (0, 3),
}
PREFIX_FREE_VALUES.update({"si_c": (0.0, 100.0), "mas_lambda": (0.0, 1.0)})
PREFIX_FREE_VALUES.update({"adapter_rank": (0, 4), "adapter_alpha": (1.0, 16.0), "adapter_layers": ("body", "all"),
                           "adapter_mode": ("merge", "per-task")})
PREFIX_FREE_VALUES.update({"genreplay_ratio": (0.0, 0.5), "genreplay_temperature": (1.0, 4.0),
                           "genreplay_weighting": ("share", "task-count"), "genreplay_targets": ("soft", "hard")})


@pytest.mark.parametrize("spec", SPECS)
def test_state_after_task_1_does_not_depend_on_prefix_free_fields(spec: str, digits):
    """Trials that differ only in fields the table says act from task 2 on share task 1 (the prefix cache
    relies on it)."""
    free = {f for name in parse_strategy(spec) for f in strategy_fields(name) if BY_NAME[f].first_task == 2}
    if not free:
        return
    first, second = (
        _state_after_task_1(config_for(spec, "task", ACTIVE, **{f: PREFIX_FREE_VALUES[f][pick] for f in free}),
                            digits["task"])
        for pick in (0, 1)
    )
    assert torch.equal(first["generator"], second["generator"])
    for part in ("model", "state"):
        assert first[part].keys() == second[part].keys()
        for key, value in first[part].items():
            other = second[part][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key


def _state_after_task_1(config: TrainConfig, benchmark: Benchmark) -> dict[str, dict | torch.Tensor]:
    """The run generator's state, the strategy's state and the weights right after task 1."""
    torch.manual_seed(0)
    model = build_model(config.model, benchmark.input_shape, benchmark.num_classes, config.hidden)
    strategy = build_strategy(config, len(model.layers()))
    after_task, captured = strategy.after_task, {}

    def spy(ctx: TaskContext) -> None:
        after_task(ctx)
        if ctx.task_index == 0:
            captured["generator"] = ctx.generator.get_state()
            captured["state"] = {k: v.clone() if isinstance(v, torch.Tensor) else v
                                 for k, v in strategy.state_dict().items()}
            captured["model"] = {k: v.clone() for k, v in model.state_dict().items()}

    strategy.after_task = spy  # type: ignore[method-assign]
    train_sequence(benchmark, model, strategy, config)
    return captured


def test_fused_quadratic_penalty_matches_autograd():
    torch.manual_seed(0)
    params = [torch.randn(5, 3, dtype=torch.float64, requires_grad=True), torch.randn(3, dtype=torch.float64)]
    anchor = [torch.randn_like(p) for p in params]
    precision = [torch.rand_like(p) for p in params]
    for weights in (precision, None):
        scale = weights or [torch.ones_like(p) for p in params]
        want = sum((a * (p - m).square()).sum() for p, m, a in zip(params, anchor, scale))
        got = quadratic_penalty(params, anchor, weights)
        assert torch.allclose(got, want)
        (g_want,) = torch.autograd.grad(want, params[:1])
        (g_got,) = torch.autograd.grad(got, params[:1])
        assert torch.allclose(g_got, g_want)
    assert torch.autograd.gradcheck(lambda p: quadratic_penalty([p], anchor[:1], precision[:1]), params[:1])


@pytest.mark.parametrize("spec", ["freeze", "ewc+replay+freeze", "distill"])
def test_frozen_layers_are_bit_for_bit_unchanged_after_task_2(spec: str, digits):
    config = config_for(spec, "task", ACTIVE, frozen_layers=2, weight_decay=0.1, optimizer="adam")
    benchmark = digits["task"]
    torch.manual_seed(0)
    model = build_model(config.model, benchmark.input_shape, benchmark.num_classes, config.hidden)
    strategy = build_strategy(config, len(model.layers()))
    snapshots = []
    train_sequence(benchmark, model, strategy, config, callback=lambda report: snapshots.append(_snapshot(model)))
    after_task_1, after_task_2 = snapshots
    for layer, (before, after) in enumerate(zip(after_task_1, after_task_2)):
        same = all(torch.equal(b, a) for b, a in zip(before, after))
        assert same == (layer < 2), f"layer {layer}: frozen={layer < 2}, unchanged={same}"


@pytest.mark.parametrize(
    ("spec", "extra", "needle"),
    [
        ("naive+ewc", {}, "reference"),
        ("joint+replay", {}, "reference"),
        ("ewc+bogus", {}, "unknown"),
        ("ewc+ewc", {}, "twice"),
        ("ewc", {"frozen_layers": 3}, "frozen_layers=3"),
        ("joint", {"frozen_layers": 1}, "joint"),
    ],
)
def test_bad_composition_is_a_one_line_config_error(spec: str, extra: dict, needle: str):
    with pytest.raises(ConfigError) as err:
        build_strategy(TrainConfig(strategy=spec, **extra), num_layers=3)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("spec", SPECS)
def test_state_dict_round_trips_and_holds_no_samples(spec: str, digits):
    benchmark = digits["task"]
    config = config_for(spec, "task", ACTIVE)
    _, model, strategy = run(config, benchmark)
    state = strategy.state_dict()
    assert all(isinstance(v, (torch.Tensor, float, int)) for v in state.values())
    image_shape = tuple(benchmark.input_shape)
    assert not any(isinstance(v, torch.Tensor) and tuple(v.shape[1:]) == image_shape for v in state.values())
    restored = build_strategy(config, len(model.layers()))
    restored.load_state_dict(state)
    again = restored.state_dict()
    assert again.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(again[key], value) if isinstance(value, torch.Tensor) else again[key] == value, key
    ctx, batch = task_context(benchmark, model, 1)
    with torch.no_grad():
        model.hidden[0].weight.add_(0.01)  # away from θ*, so the penalties are not zero
        raw = model(batch.x)
        want, got = strategy.penalty(ctx, batch, raw), restored.penalty(ctx, batch, raw)
    if not strategy.prefix_cacheable:  # its state leaves out what it replays from on purpose (a generator)
        assert want is not None and got is None
    else:
        assert (want is None and got is None) or torch.equal(want, got)


@pytest.mark.parametrize("spec", ("ewc", "si", "mas", "l2sp", "ewc+distill+freeze", "ewc+adapter"))
def test_the_trainers_penalty_gradient_is_autograds(spec: str, digits, monkeypatch):
    """The trainer adds a weight penalty's gradient to .grad in place (penalty_grad) instead of putting the term in
    the loss: at every step of task 2 the gradient the optimizer gets is autograd's up to rounding, and a whole run
    lands where the autograd run does."""
    import sweep.strategies.quadratic as quadratic
    import sweep.train.trainer as trainer

    benchmark = digits["task"]
    config = config_for(spec, "task", ACTIVE, epochs=1)
    checked: list[float] = []
    step = trainer._train_step

    def compared(run, optimizer, idx, index):  # the step's gradients both ways, on the same weights and batch
        if run.ctx.task_index == 1 and index % 5 == 0:
            ctx = run.ctx
            batch = Batch(to_float(run.data.split.x[idx]), run.data.split.y[idx], run.data.task_ids[idx])
            grads = []
            for by_hand in (True, False):
                object.__setattr__(ctx, "penalty_grads", by_hand)  # a frozen dataclass: the trainer's own switch
                run.model.zero_grad(set_to_none=True)
                raw = run.model(batch.x)
                loss = F.cross_entropy(raw.masked_fill(~run.masks[batch.task_ids], -1e30), batch.y) * run.ce_weight
                term = run.strategy.penalty(ctx, batch, raw)
                (loss if term is None else loss + term).backward()
                run.strategy.penalty_grad(ctx)
                grads.append([None if p.grad is None else p.grad.clone() for p in run.model.parameters()])
            object.__setattr__(ctx, "penalty_grads", True)
            run.model.zero_grad(set_to_none=True)
            for a, b in zip(*grads):
                assert (a is None) == (b is None)
                if a is not None:
                    assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
                    checked.append(float((a - b).abs().max()))
        return step(run, optimizer, idx, index)

    monkeypatch.setattr(trainer, "_train_step", compared)
    fast, _, _ = run(config, benchmark)
    assert checked
    monkeypatch.setattr(trainer, "_train_step", step)
    monkeypatch.setattr(quadratic, "by_grad", lambda ctx: False)  # every penalty back in the loss
    slow, _, _ = run(config, benchmark)
    assert np.abs(fast.test - slow.test).max() <= 0.02  # rounding apart, the same run
    if spec != "ewc+adapter":  # with adapters attached EWC's penalty goes through autograd: nothing to compare
        assert not np.array_equal(fast.test, run(config_for(spec, "task", NEUTRAL, epochs=1), benchmark)[0].test)


def test_separate_ewc_is_the_sum_of_per_task_penalties_and_online_decays():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    names = [n for n, _ in model.named_parameters()]
    tasks = [({n: torch.rand_like(p) for n, p in model.named_parameters()},
              {n: torch.randn_like(p) for n, p in model.named_parameters()}) for _ in range(3)]
    tasks[1][0]["bias"][0] = 0.0  # an element only some tasks constrain
    ctx = SimpleNamespace(model=model, penalty_grads=False)
    separate, online = EWC(ewc_lambda=3.0), EWC(ewc_lambda=3.0, ewc_mode="online", ewc_gamma=0.5)
    for fisher, theta in tasks:
        separate.consolidate(fisher, theta)
        online.consolidate(fisher, theta)
    params = dict(model.named_parameters())
    want = 1.5 * sum((f[n] * (params[n] - th[n]).square()).sum() for f, th in tasks for n in names)
    got = separate.penalty(ctx, None, None)  # type: ignore[arg-type]
    assert torch.allclose(got, want, rtol=1e-5)
    online_fisher = {n: 0.25 * tasks[0][0][n] + 0.5 * tasks[1][0][n] + tasks[2][0][n] for n in names}
    want_online = 1.5 * sum((online_fisher[n] * (params[n] - tasks[2][1][n]).square()).sum() for n in names)
    assert torch.allclose(online.penalty(ctx, None, None), want_online, rtol=1e-5)  # type: ignore[arg-type]
    trace = sum(float(f[n].sum()) for f, _ in tasks for n in names)
    assert separate.stats()["fisher_trace"] == pytest.approx(trace)
    assert separate.stats()["fisher_mean"] == pytest.approx(trace / sum(p.numel() for p in model.parameters()))


def test_balanced_quotas_share_fairly():
    assert balanced_quotas([200, 200, 200], 500) == [166, 167, 167]
    assert balanced_quotas([10, 300, 300], 500) == [10, 245, 245]  # a small class keeps all it has
    assert balanced_quotas([3, 4], 500) == [3, 4]
    assert balanced_quotas([50] * 10, 0) == [0] * 10


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replay_buffer_is_class_balanced_indices_and_batches_carry_task_ids(scenario: str, digits):
    benchmark = digits[scenario]
    replay = Replay(replay_size=100, replay_ratio=0.5)
    model = build_model("mlp", benchmark.input_shape, benchmark.num_classes, (8,))
    for t in range(2):
        ctx, batch = task_context(benchmark, model, t)
        replay.after_task(ctx)
        assert replay.task_index.dtype == replay.sample_index.dtype == torch.long
        labels = torch.cat([benchmark.tasks[int(k)].train.y[i : i + 1] for k, i in
                            zip(replay.task_index, replay.sample_index)])
        counts = torch.bincount(labels, minlength=benchmark.num_classes)
        seen = [c for task in benchmark.tasks[: t + 1] for c in task.classes]
        assert len(replay.sample_index) == 100 and counts[seen].min() >= 100 // len(seen)
    mixed = replay.adjust_batch(ctx, batch)
    assert len(mixed.y) == 64  # 32 new + round(32 * 0.5 / 0.5) replayed
    assert torch.equal(mixed.x[:32], batch.x)
    if scenario == "task":
        assert mixed.task_ids is not None and set(mixed.task_ids[32:].tolist()) <= {0, 1}
        for y, t in zip(mixed.y[32:], mixed.task_ids[32:]):
            assert y.item() in benchmark.tasks[int(t)].classes  # labels and task ids travel together
    else:
        assert mixed.task_ids is None


def test_distillation_weights_ce_from_task_2_and_is_zero_for_an_identical_student(digits):
    benchmark = digits["class"]
    # the old-classes term (class-incremental van de Ven's is positive here: tests/test_lwf_variants.py)
    strategy = STRATEGIES["distill"].from_config(TrainConfig(distill_alpha=0.3, distill_temperature=2.0,
                                                             distill_variant="old-classes"))
    model = build_model("mlp", benchmark.input_shape, benchmark.num_classes, (8,))
    ctx, batch = task_context(benchmark, model, 0)
    strategy.after_task(ctx)
    assert strategy.ce_weight(0) == 1.0 and strategy.ce_weight(1) == pytest.approx(0.3)
    ctx, batch = task_context(benchmark, model, 1)
    assert strategy.penalty(ctx, batch, model(batch.x)).abs() < 1e-6  # the student still is the teacher
    assert strategy.known.tolist() == [0, 1, 2, 3, 4]


def test_joint_trains_on_every_task_seen_so_far(digits):
    benchmark = digits["task"]
    joint = STRATEGIES["joint"]()
    model = build_model("mlp", benchmark.input_shape, benchmark.num_classes, (8,))
    assert joint.training_data(task_context(benchmark, model, 0)[0]) is None  # task 1: naive
    data = joint.training_data(task_context(benchmark, model, 1)[0])
    sizes = [len(task.train) for task in benchmark.tasks]
    assert len(data.split) == sum(sizes) and data.task_ids.tolist() == [0] * sizes[0] + [1] * sizes[1]
