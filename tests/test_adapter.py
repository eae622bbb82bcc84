"""The adapter strategy (LoRA from task 2 on) and its production API, on split-digits and tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sweep import api
from sweep.analysis.choose import choose, write_choice
from sweep.analysis.io import load_study
from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.data.tasks import Benchmark
from sweep.errors import ConfigError
from sweep.models import CNN, MLP, named_layers
from sweep.strategies.adapter import Adapter
from sweep.strategies.ewc import EWC
from sweep.strategies.registry import Composite, parse_strategy
from sweep.train.trainer import SequenceResult, build_run, train_sequence
from sweep.tune.search_space import DEFAULT_SPACES_DIR, load_space
from tests.fake_study import make_study

BASE = {"hidden": (32, 32), "epochs": 1, "batch_size": 32, "adapter_rank": 4}


@pytest.fixture(scope="module")
def digits() -> dict[str, Benchmark]:  # 5 tasks of two digits each: ~290 training images a task
    return {s: build_benchmark("split-digits", s, num_tasks=5) for s in ("task", "class", "domain")}


def train(spec: str, benchmark: Benchmark, **settings) -> tuple[SequenceResult, nn.Module, object]:
    config = TrainConfig(strategy=spec, scenario=benchmark.scenario, **{**BASE, **settings})
    model, strategy = build_run(config, benchmark)
    return train_sequence(benchmark, model, strategy, config), model, strategy


def small_models() -> list[nn.Module]:
    torch.manual_seed(0)
    return [MLP(64, 10, (16, 16)), CNN((1, 8, 8), 10, (4, 6))]


@pytest.mark.parametrize("model", small_models(), ids=("mlp", "cnn"))
def test_a_fresh_adapter_computes_the_base_exactly_and_merging_keeps_the_adapted_function(model: nn.Module):
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        base = model(x)
    trainable = api.add_adapters(model, rank=3, alpha=6.0, layers="all", seed=1)
    assert trainable and all(p.requires_grad for p in trainable)
    assert not any(p.requires_grad for p in model.parameters())  # the head has an adapter too: all frozen
    with torch.no_grad():
        assert torch.equal(model(x), base)  # B = 0: exactly the base model
        for p in trainable:
            p.normal_(0, 0.3)  # as after training: B no longer zero
        adapted = model(x)
    assert not torch.allclose(adapted, base, atol=1e-3)
    names = set(model.state_dict())
    api.merge_adapters(model)
    with torch.no_grad():
        merged = model(x)
    assert set(model.state_dict()) == names and all(p.requires_grad for p in model.parameters())
    assert torch.allclose(merged, adapted, atol=1e-5, rtol=1e-5)


def test_add_adapters_refuses_bad_values_in_one_line(digits):
    model = small_models()[0]
    for kwargs, needle in (({"rank": 0}, "rank"), ({"alpha": -1.0}, "alpha"), ({"layers": "fc9"}, "'fc9'")):
        with pytest.raises(ConfigError, match=needle) as err:
            api.add_adapters(model, **{"rank": 2, "alpha": 4.0, **kwargs})
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="adapter_layers"):
        train("adapter", digits["task"], adapter_layers="0,nope")


@pytest.mark.parametrize("mode", ["merge", "per-task"])
def test_only_the_adapters_and_the_head_train_from_task_2_on(mode: str, digits):
    benchmark = digits["class"]
    config = TrainConfig(strategy="adapter", scenario="class", adapter_mode=mode, **BASE)
    model, strategy = build_run(config, benchmark)
    body = [p for _, layer in named_layers(model)[:-1] for p in layer.parameters()]
    snapshots: list[list[torch.Tensor]] = []

    def at_task_end(task_index: int, step: int, total: int) -> None:  # before after_task (before merging)
        if step == total and task_index >= 1:
            snapshots.append([p.detach().clone() for p in body])

    starts: list[list[torch.Tensor]] = []  # after task t (its after_task: the merge done): where task t + 1 starts
    train_sequence(benchmark, model, strategy, config, progress=at_task_end,
                   callback=lambda r: starts.append([p.detach().clone() for p in body]))
    # bit for bit, every task from task 2 on: the body it ends with is the one it started from (merge mode merges
    # after it, so each task starts from a different body)
    assert len(snapshots) == benchmark.num_tasks - 1
    for t, snap in enumerate(snapshots, start=1):
        assert all(torch.equal(a, b) for a, b in zip(snap, starts[t - 1])), t
    moved = [not all(torch.equal(a, b) for a, b in zip(before, after)) for before, after in zip(starts[1:], starts)]
    assert moved == [mode == "merge"] * (benchmark.num_tasks - 1)  # the merges moved the weights; per-task never
    assert isinstance(strategy, Adapter)
    expected = sum(p.numel() for p in named_layers(model)[-1][1].parameters())
    expected += sum(4 * (layer.in_features + layer.out_features) for layer in model.hidden)  # type: ignore[union-attr]
    assert strategy.stats()["trainable_params"] == expected


def test_per_task_adapters_forget_nothing_in_task_incremental_form(digits):
    result, _, strategy = train("adapter", digits["task"], adapter_mode="per-task", epochs=3)
    naive, _, _ = train("naive", digits["task"], epochs=3)
    for matrix in (result.val, result.test):
        assert np.array_equal(matrix[-1], np.diag(matrix))  # each old task: its accuracy right after it, exactly
    assert np.diag(result.test)[1:].mean() > 0.6  # and the adapters did learn their tasks (chance: 0.5)
    assert naive.test[-1, :-1].mean() < np.diag(naive.test)[:-1].mean()  # where naive forgets
    # the state (every task's adapter and head) round-trips, and evaluates the same
    restored = Adapter(adapter_rank=4, adapter_mode="per-task")
    restored.load_state_dict(strategy.state_dict())
    assert restored.state_dict().keys() == strategy.state_dict().keys()
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in strategy.state_dict().items()
               if isinstance(v, torch.Tensor))


def test_per_task_routing_picks_the_most_confident_task_when_the_task_is_unknown(digits):
    benchmark = digits["class"]
    config = TrainConfig(strategy="adapter", scenario="class", adapter_mode="per-task", **BASE)
    model, strategy = build_run(config, benchmark)
    result = train_sequence(benchmark, model, strategy, config)
    assert isinstance(strategy, Adapter) and result.status == "finished"
    x = benchmark.tasks[0].test.x[:64].float() / 255
    with torch.no_grad():
        per_task = torch.stack([strategy.forward_as(model, k, x) for k in range(benchmark.num_tasks)])
        from sweep.strategies.adapter import Routed
        from sweep.strategies.base import Compute

        compute = Compute()
        routed = Routed(strategy, model, benchmark.num_tasks, compute)(x)
    best = per_task.softmax(-1).amax(-1).argmax(0)  # (B,) the most confident task of each sample
    assert torch.equal(routed, per_task[best, torch.arange(len(x))])
    assert compute.eval_samples == (benchmark.num_tasks - 1) * len(x)  # the passes beyond the one counted


def test_ewc_penalises_the_adapted_weights_and_changes_the_result(digits):
    benchmark = digits["task"]
    config = TrainConfig(strategy="adapter+ewc", scenario="task", ewc_lambda=1e4, **BASE)
    model, strategy = build_run(config, benchmark)
    assert isinstance(strategy, Composite)
    ewc = strategy.parts[1]
    assert isinstance(ewc, EWC)
    seen: list[tuple[float, bool]] = []

    def mid_task_2(task_index: int, step: int, total: int) -> None:
        if task_index == 1 and step == total:  # adapters trained, not yet merged
            penalty = ewc.model_penalty(model)
            assert penalty is not None
            adapter = strategy.parts[0]
            assert isinstance(adapter, Adapter)
            b = [lora.B for lora in adapter.adapters[1].values()]
            grads = torch.autograd.grad(penalty, b)
            seen.append((float(penalty.detach()), any(bool(g.abs().sum() > 0) for g in grads)))

    result = train_sequence(benchmark, model, strategy, config, progress=mid_task_2)
    assert seen and seen[0][0] > 0 and seen[0][1]  # nonzero, and it reaches the adapters
    plain, _, _ = train("adapter", benchmark)
    assert not np.array_equal(result.test, plain.test)


@pytest.mark.parametrize(("spec", "mode"), [("adapter+distill", "merge"), ("adapter+distill", "per-task"),
                                            ("adapter+replay", "merge"), ("adapter+replay", "per-task"),
                                            ("adapter+ewc", "merge")])  # adapter+ewc per-task: refused, below
def test_adapters_compose(spec: str, mode: str, digits):
    result, _, _ = train(spec, digits["class"], adapter_mode=mode, replay_size=50)
    assert result.status == "finished" and np.isfinite(result.test).all()
    assert result.stats["trainable_params"] > 0


@pytest.mark.parametrize("other", ["si", "mas", "l2sp"])
def test_penalties_blind_to_adapters_are_refused_in_one_line(other: str):
    for spec in (f"adapter+{other}", f"{other}+adapter"):
        with pytest.raises(ConfigError, match=f"'{other}' penalises the model's own parameters.*'adapter\\+ewc'"
                           ) as err:
            parse_strategy(spec)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(("spec", "settings", "needle"), [
    ("adapter+ewc", {"adapter_mode": "per-task"}, "adapter_mode 'per-task'.*allowed with ewc: adapter_mode 'merge'"),
    ("adapter", {"early_stop_patience": 2}, "early_stop_patience 2.*allowed with adapter: early_stop_patience 0"),
])
def test_settings_that_break_adapters_are_refused_when_the_run_is_built(spec: str, settings: dict, needle: str,
                                                                       digits):
    config = TrainConfig(strategy=spec, scenario="task", **{**BASE, **settings})
    with pytest.raises(ConfigError, match=needle) as err:
        build_run(config, digits["task"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("body", "needle"), [
    ("strategy: adapter+ewc\nparams:\n  adapter_mode: {type: categorical, choices: [merge, per-task]}\n",
     "adapter_mode 'per-task' \\(params.adapter_mode can draw it\\)"),
    ("strategy: ewc+adapter\nfixed:\n  adapter_mode: per-task\n"
     "params:\n  ewc_lambda: {type: float, low: 1.0, high: 10.0}\n",
     "adapter_mode 'per-task' \\(fixed.adapter_mode\\)"),
    ("strategy: adapter\nparams:\n  early_stop_patience: {type: int, low: 0, high: 2}\n",
     "early_stop_patience 2 \\(params.early_stop_patience can draw it\\)"),
])
def test_a_space_that_could_draw_such_settings_is_refused_when_loaded(body: str, needle: str, tmp_path: Path):
    path = tmp_path / "space.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=needle) as err:
        load_space(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    path.write_text("strategy: adapter+ewc\nparams:\n  adapter_mode: {type: categorical, choices: [merge]}\n")
    assert load_space(path).strategy == "adapter+ewc"  # merge only: fine
    assert load_space(DEFAULT_SPACES_DIR / "adapter.yaml").strategy == "adapter"  # the shipped space: no ewc


@pytest.mark.parametrize("flags", [["--adapter-mode", "per-task"], ["--early-stop-patience", "2"]])
def test_sweep_run_refuses_a_flag_that_breaks_the_adapters_in_one_line(flags: list[str], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]):
    from sweep.cli import main

    space = tmp_path / "space.yaml"
    space.write_text("strategy: adapter+ewc\nparams:\n  ewc_lambda: {type: float, low: 1.0, high: 10.0}\n")
    results = tmp_path / "results"
    code = main(["run", "--strategy", "adapter+ewc", "--space", str(space), "--results", str(results), "--quiet",
                 *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and flags[0] in err, err
    assert not results.exists() or not any(results.iterdir())  # refused before anything was written


def test_merge_runs_before_interpolation_whatever_the_order_of_the_names(digits):
    benchmark = digits["task"]
    results = {spec: train(spec, benchmark, interp_alpha=0.5, interp_grid=0)
               for spec in ("adapter+interp", "interp+adapter")}
    (first, model_a, _), (second, model_b, _) = results.values()
    assert np.array_equal(first.val, second.val) and np.array_equal(first.test, second.test)
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()))
    plain, _, _ = train("adapter", benchmark)
    assert not np.array_equal(first.test, plain.test)  # the interpolation acted


def test_a_second_add_adapters_is_refused_until_merged():
    model = small_models()[0]
    api.add_adapters(model, rank=2, alpha=4.0, layers="0", seed=0)
    with pytest.raises(ConfigError, match="layer '.*' already has an adapter; call merge_adapters first") as err:
        api.add_adapters(model, rank=2, alpha=4.0, layers="all", seed=1)
    assert "\n" not in str(err.value)
    api.merge_adapters(model)
    assert api.add_adapters(model, rank=2, alpha=4.0, layers="0", seed=1)  # merged: a new one is fine


def test_chosen_add_adapters_refuses_per_task_mode():
    chosen = api.Chosen(TrainConfig(strategy="adapter", adapter_mode="per-task", adapter_rank=4))
    with pytest.raises(ConfigError, match="adapter_mode 'per-task'.*only adapter_mode 'merge' deploys") as err:
        chosen.add_adapters(MLP(64, 10, (16, 16)))
    assert "\n" not in str(err.value)


def test_chosen_yaml_carries_the_adapter_settings(tmp_path: Path):
    study = make_study(tmp_path, "lora", n_trials=4)
    trials = pd.read_parquet(study / "trials.parquet")
    search = trials["role"] == "search"
    settings = {"strategy": "adapter", "adapter_rank": 4, "adapter_alpha": 8.0, "adapter_layers": "0",
                "adapter_mode": "merge"}
    trials.loc[search, "strategy"] = "adapter"
    trials.loc[search, "config"] = [json.dumps({**(json.loads(c) if isinstance(c, str) else {}), **settings})
                                  for c in trials.loc[search, "config"]]
    trials.to_parquet(study / "trials.parquet", index=False)
    chosen = api.from_chosen(write_choice(choose(load_study(study), "stability"), tmp_path / "chosen.yaml"))
    assert {k: getattr(chosen.config, k) for k in settings} == settings
    model = MLP(64, 10, (16, 16))
    trainable = chosen.add_adapters(model)
    head = list(named_layers(model)[-1][1].parameters())
    assert len(trainable) == len(head) + 2  # the head, and layer 0's A and B
    assert not any(p.requires_grad for p in model.hidden.parameters())


def test_the_trainable_parameter_count_reaches_the_trial_result(digits):
    from sweep.tune.trial import run_trial

    config = TrainConfig(strategy="adapter", scenario="task", **BASE)
    final = run_trial(config, digits["task"], [0, 1], report=lambda metrics: None)
    expected = 32 * 10 + 10 + 4 * (64 + 32) + 4 * (32 + 32)  # the head, then each hidden layer's A and B
    assert final["trainable_params"] == expected
