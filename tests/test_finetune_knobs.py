"""The fine-tuning knobs: LP-FT (``lpft``: probe the head, then fine-tune), the learning-rate warmup and cosine
schedule of tasks 2..T (``warmup_epochs``, ``lr_schedule``) and dropout of the built-in MLP and CNN (``dropout``).

Checked bit for bit: what the probing epochs change, the optimizer's learning rate at every step, dropout's masks
through seeds in lockstep and the task-prefix cache, and dropout 0 as the model it always was.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from sweep import api
from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.data.tasks import Benchmark, to_float
from sweep.errors import ConfigError
from sweep.models import CNN, MLP, build_model, dropout_layers
from sweep.strategies.base import Strategy
from sweep.strategies.lpft import LPFT
from sweep.strategies.registry import Composite, build_strategy
from sweep.train.evaluation import evaluate, evaluate_all
from sweep.train.optim import schedule_factor
from sweep.train.trainer import EpochReport, build_run, iter_sequence, train_sequence
from sweep.tune.prefix_cache import prefix_free_fields, prefix_key
from sweep.tune.search_space import load_space
from sweep.tune.trial import run_trial
from tests.helpers import evaluate_by_hand

BASE = TrainConfig(hidden=(32, 32), epochs=2, batch_size=32)  # split-digits: ~650 images, 21 steps an epoch


@pytest.fixture(scope="module")
def digits() -> Benchmark:
    return build_benchmark("split-digits", "task")


def weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, Tensor], after: dict[str, Tensor]) -> set[str]:
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def drain(steps) -> Iterator:
    while True:
        try:
            yield next(steps)
        except StopIteration:
            return


# --- LP-FT ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["lpft", "ewc+lpft"])
def test_lpft_probing_epochs_change_only_the_head_then_every_layer_not_frozen(spec: str, digits):
    config = BASE.replace(strategy=spec, lp_epochs=2, frozen_layers=1, ewc_lambda=100.0)
    model, strategy = build_run(config, digits)
    head = {"head.weight", "head.bias"}
    frozen = {"hidden.0.weight", "hidden.0.bias"}
    everything = set(model.state_dict())
    last = weights(model)
    moved: dict[tuple[int, int], set[str]] = {}
    for report in drain(iter_sequence(digits, model, strategy, config, epoch_reports=True)):
        if isinstance(report, EpochReport):  # after every epoch: what it changed, bit for bit
            now = weights(model)
            moved[(report.task_index, report.epoch)] = changed(last, now)
            last = now
    assert list(moved) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]  # task 2: lp_epochs + epochs
    assert moved[(0, 0)] == moved[(0, 1)] == everything  # task 1 trains as usual
    assert moved[(1, 0)] == moved[(1, 1)] == head  # probing: the head alone
    assert moved[(1, 2)] == moved[(1, 3)] == everything - frozen  # fine-tuning: all but the frozen layer
    assert all(p.requires_grad for p in model.parameters())  # nothing stays restricted after the run


def test_lpft_probing_steps_are_head_only_step_by_step(digits):
    """The same, after every optimizer step of the probing epochs (the strategy's after_step hook)."""
    probe_steps = math.ceil(len(digits.tasks[1].train) / BASE.batch_size)

    class Watch(LPFT):
        def __init__(self) -> None:
            super().__init__(lp_epochs=1)
            self.moved: list[set[str]] = []
            self.last: dict[str, Tensor] = {}

        def before_task(self, ctx) -> None:
            self.last = weights(ctx.model)

        def after_step(self, ctx, batch) -> None:
            if ctx.task_index == 1:
                now = weights(ctx.model)
                self.moved.append(changed(self.last, now))
                self.last = now

    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes, (32, 32))
    strategy = Watch()
    train_sequence(digits, model, strategy, BASE)
    assert len(strategy.moved) == probe_steps * (1 + BASE.epochs)
    assert all(m == {"head.weight", "head.bias"} for m in strategy.moved[:probe_steps])
    assert all(len(m) == 6 for m in strategy.moved[probe_steps:])


def test_lpft_composes_and_lp_epochs_zero_is_naive():
    both = build_strategy(TrainConfig(strategy="ewc+lpft", lp_epochs=3), num_layers=3)
    assert isinstance(both, Composite)
    assert [(p.name, p.epochs) for p in both.phases(1)] == [("probe", 3), ("tune", None)]
    assert [p.name for p in both.phases(0)] == ["train"]
    assert [p.name for p in LPFT(lp_epochs=0).phases(1)] == ["train"]
    assert "lp_epochs" in prefix_free_fields("lpft")  # it acts from task 2 on: trials share task 1
    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "lpft.yaml")
    assert {p.name for p in space.params} == {"lp_epochs", "finetune_lr"}


# --- warmup and the cosine schedule -----------------------------------------------------------------------


class Half(Strategy):
    """A strategy's own learning-rate factor, to see the trainer's multiply with it."""

    name = "half"

    def lr_factor(self, task_index: int, step: int, steps_in_task: int) -> float:
        return 0.5 if task_index > 0 else 1.0


def expected_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    return 1.0


@pytest.fixture
def recorded_lrs() -> Iterator[list[list[float]]]:
    """Every group's learning rate as each optimizer step reads it (a global step pre-hook)."""
    seen: list[list[float]] = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append([g["lr"] for g in optimizer.param_groups]))
    yield seen
    handle.remove()


@pytest.mark.parametrize("settings, strategy", [
    ({"warmup_epochs": 0.5, "lr_schedule": "cosine"}, "naive"),
    ({"warmup_epochs": 1, "lr_schedule": "constant"}, "naive"),
    ({"warmup_epochs": 0.0, "lr_schedule": "cosine", "lr_decay": 0.5}, "naive"),  # every group follows it
    ({"warmup_epochs": 5.0, "lr_schedule": "cosine"}, "naive"),  # longer than the task: warmup throughout
    ({"warmup_epochs": 0.5, "lr_schedule": "cosine", "lp_epochs": 1}, "lpft"),  # one schedule over both phases
    ({"warmup_epochs": 0.5, "lr_schedule": "cosine"}, "half"),  # times the strategy's own factor
])
def test_the_learning_rate_follows_warmup_then_the_schedule_step_by_step(settings: dict, strategy: str, digits,
                                                                         recorded_lrs: list[list[float]]):
    config = BASE.replace(finetune_lr=3e-4, **settings, strategy="naive" if strategy == "half" else strategy)
    model, built = build_run(config, digits)
    result = train_sequence(digits, model, Half() if strategy == "half" else built, config)
    assert result.status == "finished"
    per_epoch = [math.ceil(len(task.train) / config.batch_size) for task in digits.tasks]
    first = per_epoch[0] * config.epochs
    assert recorded_lrs[:first] == [[config.lr]] * first  # task 1: the plain lr, untouched
    epochs = config.epochs + (config.lp_epochs if strategy == "lpft" else 0)
    total = per_epoch[1] * epochs
    warmup = min(total, math.ceil(config.warmup_epochs * per_epoch[1]))
    seen = recorded_lrs[first:]
    assert len(seen) == total
    layers = len(model.layers())
    for step, lrs in enumerate(seen):
        factor = expected_factor(step, total, warmup, config.lr_schedule) * (0.5 if strategy == "half" else 1.0)
        bases = [config.finetune_lr]  # one group (the probe's optimizer holds the head alone)
        if config.lr_decay != 1.0:
            bases = [config.finetune_lr * config.lr_decay ** (layers - 1 - k) for k in range(layers)]
        assert lrs == pytest.approx([b * factor for b in bases], rel=1e-12, abs=0), step
    if 0 < warmup < total:  # the warmup's last step reaches the full learning rate
        assert seen[warmup - 1][0] == pytest.approx(config.finetune_lr * (0.5 if strategy == "half" else 1.0))


def test_schedule_factor_ends():
    assert [schedule_factor(s, 10, 4) for s in range(10)] == [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1, 1]
    cosine = [schedule_factor(s, 10, 2, "cosine") for s in range(10)]
    assert cosine[:3] == [0.5, 1.0, 1.0] and all(a > b for a, b in zip(cosine[2:], cosine[3:]))
    assert cosine[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))  # one step short of 0
    assert schedule_factor(0, 10, 0, "cosine") == 1.0


def test_no_warmup_and_a_constant_schedule_leave_the_run_as_it_was(digits):
    plain = train_sequence(digits, *build_run(BASE, digits), BASE)
    config = BASE.replace(warmup_epochs=0.0, lr_schedule="constant")
    assert np.array_equal(train_sequence(digits, *build_run(config, digits), config).val, plain.val)
    warmed = BASE.replace(warmup_epochs=1.0)
    assert not np.array_equal(train_sequence(digits, *build_run(warmed, digits), warmed).val, plain.val)


def test_schedule_knobs_are_prefix_free_and_searchable(tmp_path: Path, digits):
    config = TrainConfig(strategy="naive")
    assert {"warmup_epochs", "lr_schedule"} <= prefix_free_fields("naive")
    key = prefix_key(config, digits)
    assert prefix_key(config.replace(warmup_epochs=2.5, lr_schedule="cosine"), digits) == key
    assert prefix_key(config.replace(dropout=0.2), digits) != key  # dropout acts on task 1
    space = tmp_path / "naive.yaml"
    space.write_text("strategy: naive\nparams:\n  finetune_lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}\n"
                     "  warmup_epochs: {type: float, low: 0.0, high: 2.0}\n"
                     "  lr_schedule: {type: categorical, choices: [constant, cosine]}\n"
                     "  dropout: {type: float, low: 0.0, high: 0.5}\n")
    assert {p.name for p in load_space(space).params} == {"finetune_lr", "warmup_epochs", "lr_schedule", "dropout"}


# --- dropout ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_dropout_is_off_in_evaluation(model: str, digits):
    config = BASE.replace(model=model, dropout=0.5, epochs=1)
    net, strategy = build_run(config, digits)
    train_sequence(digits, net, strategy, config)
    masks = digits.task_masks()
    first, second = evaluate_all(net, digits, masks), evaluate_all(net, digits, masks)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    split = digits.tasks[0].val
    once, twice = evaluate(net, split, 0, masks), evaluate(net, split, 0, masks)
    assert torch.equal(once, twice)
    x = to_float(split.x[:64])
    net.train()
    assert not torch.equal(net(x), net(x))  # in training it drops (the global generator, outside the trainer)
    net.eval()
    assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_dropout_zero_is_the_model_it_always_was(model: str, digits):
    """No dropout layer acts, no random number is drawn for it, and the run equals one whose dropout is removed."""
    config = BASE.replace(model=model, epochs=1)
    net, strategy = build_run(config, digits)
    assert dropout_layers(net) == []
    state = torch.get_rng_state()
    x = to_float(digits.tasks[0].train.x[:16])
    assert torch.equal(net(x), net(x))
    assert torch.equal(torch.get_rng_state(), state)
    plain = train_sequence(digits, net, strategy, config)
    stripped, strategy = build_run(config, digits)
    stripped.drop = nn.Identity()  # the architecture before dropout existed
    again = train_sequence(digits, stripped, strategy, config)
    assert np.array_equal(plain.val, again.val) and np.array_equal(plain.test, again.test)
    dropped = BASE.replace(model=model, epochs=1, dropout=0.3)
    other = train_sequence(digits, *build_run(dropped, digits), dropped)
    assert not np.array_equal(other.val, plain.val)


def test_dropout_masks_come_from_the_run_not_torchs_global_generator(digits):
    config = BASE.replace(dropout=0.3, epochs=1)
    results = []
    for global_seed in (1, 2):
        model, strategy = build_run(config, digits)
        torch.manual_seed(global_seed)  # whatever else the process draws does not reach the masks
        results.append(train_sequence(digits, model, strategy, config))
        assert all(layer.generator is None for layer in dropout_layers(model))  # unset when each task ends
    assert np.array_equal(results[0].val, results[1].val) and np.array_equal(results[0].test, results[1].test)
    other = train_sequence(digits, *build_run(config.replace(seed=1), digits), config.replace(seed=1))
    assert not np.array_equal(other.val, results[0].val)


def _accuracy(config: TrainConfig, benchmark: Benchmark, seeds: list[int], prefix_dir: Path | None = None) -> dict:
    return run_trial(config, benchmark, seeds, lambda metrics: None,
                     prefix_dir=str(prefix_dir) if prefix_dir else None)["accuracy"]


@pytest.mark.parametrize("strategy", ["naive", "ewc+lpft"])
def test_dropout_with_seeds_in_lockstep_and_through_the_prefix_cache_gives_the_same_matrices(
        strategy: str, tmp_path: Path, digits):
    config = BASE.replace(strategy=strategy, dropout=0.3, epochs=1, warmup_epochs=0.5, lr_schedule="cosine")
    uncached = _accuracy(config, digits, [0, 1])
    assert uncached["1"] == _accuracy(config, digits, [1])["1"]  # in lockstep or alone
    filling = _accuracy(config, digits, [0, 1], tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 2  # one entry per seed
    reused = _accuracy(config, digits, [0, 1], tmp_path)  # task 1 restored, generator state included
    assert uncached == filling == reused
    assert -1.0 not in uncached["0"]["val"][1]  # task 2 was trained and evaluated


def test_dropout_is_refused_for_a_model_without_its_own_and_checked_in_range():
    with pytest.raises(ConfigError, match="dropout 0.1 applies to the built-in mlp and cnn only"):
        build_model("resnet18", (3, 32, 32), 10, dropout=0.1)
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\), got 1.0"):
        TrainConfig(dropout=1.0)
    assert isinstance(build_model("mlp", (1, 8, 8), 4, (8,), dropout=0.2), MLP)
    assert isinstance(build_model("cnn", (1, 8, 8), 4, dropout=0.2), CNN)


# --- the production API: a hand-written LP-FT loop with the chosen schedule gets the trainer's matrices -------


def shifted(factor, offset: int):
    """The fine-tune's factor for a phase that starts at the task's step ``offset`` (LambdaLR counts from 0)."""
    return lambda step: factor(step + offset)


def hand_written_lpft(config: TrainConfig, bench: Benchmark) -> tuple[np.ndarray, np.ndarray]:
    """A user's loop: probe the head, then fine-tune, the learning rate from ``Chosen.lr_factor`` via LambdaLR."""
    chosen = api.Chosen(config)
    torch.manual_seed(config.seed)
    model = build_model(config.model, bench.input_shape, bench.num_classes, config.hidden)
    generator = torch.Generator().manual_seed(config.seed)  # the batch order the trainer draws
    masks = bench.task_masks()
    T = bench.num_tasks
    val, test = np.full((T, T), np.nan), np.full((T, T), np.nan)
    for t, task in enumerate(bench.tasks):
        n = len(task.train)
        per_epoch = math.ceil(n / config.batch_size)
        if t == 0:
            plan = [(0, lambda: torch.optim.Adam(api.freeze_layers(model, 0), lr=config.lr, fused=True), config.epochs)]
        else:  # the probe: every layer but the head held, an optimizer of its own; then the chosen fine-tune
            plan = [(len(api.layer_names(model)) - 1, lambda: torch.optim.Adam(api.head_parameters(model),
                                                                               lr=chosen.finetune_lr, fused=True),
                     chosen.lp_epochs),
                    (config.frozen_layers, lambda: chosen.optimizer(model), config.epochs)]
        step = 0  # counted over the task's phases, as the trainer's schedule is
        for frozen, build, epochs in plan:
            api.freeze_layers(model, frozen)
            optimizer = build()
            scheduler = None if t == 0 else torch.optim.lr_scheduler.LambdaLR(
                optimizer, shifted(chosen.lr_factor(per_epoch), step))
            for _ in range(epochs):
                order = torch.randperm(n, generator=generator)
                for start in range(0, n, config.batch_size):
                    idx = order[start : start + config.batch_size]
                    raw = model(to_float(task.train.x[idx]))
                    loss = F.cross_entropy(raw.masked_fill(~masks[t], torch.finfo(raw.dtype).min), task.train.y[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    step += 1
                    if scheduler is not None:
                        scheduler.step()
        evaluate_by_hand(model, bench, masks, t, val, test)
    return val, test


def test_a_hand_written_lpft_loop_with_the_chosen_schedule_reproduces_the_trainer(digits):
    config = BASE.replace(strategy="lpft+freeze", lp_epochs=2, frozen_layers=1, lr_decay=0.5, finetune_lr=5e-4,
                          warmup_epochs=0.5, lr_schedule="cosine")
    result = train_sequence(digits, *build_run(config, digits), config)
    val, test = hand_written_lpft(config, digits)
    assert np.array_equal(result.val, val) and np.array_equal(result.test, test)
    assert api.Chosen(BASE.replace(strategy="naive", lp_epochs=3)).lp_epochs == 0  # lp_epochs acts only with lpft
    assert api.Chosen(BASE).lr_factor(10)(7) == 1.0
