"""optimizer_state: reset starts every task's optimizer from nothing; keep carries each parameter's state (Adam's
step, exp_avg, exp_avg_sq) from where it last trained, through the phases of a task, the lr_decay groups and the
task-prefix cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.data.tasks import Benchmark
from sweep.strategies.base import TaskContext
from sweep.strategies.lpft import LPFT
from sweep.train import trainer
from sweep.train.trainer import build_run, train_sequence
from sweep.tune.prefix_cache import PrefixCache, prefix_key
from sweep.tune.trial import run_trial

BASE = {"hidden": (32, 32), "epochs": 2, "batch_size": 32}  # split-digits: ~650 images per task, 0.1 s a run


@pytest.fixture(scope="module")
def digits() -> Benchmark:
    return build_benchmark("split-digits", "task")


class Spy(LPFT):
    """LP-FT (a probing phase, then fine-tuning, on task 2) that snapshots the live optimizer's state by parameter
    name: at the end of task 1, and before the first step of each phase of task 2 (``lr_factor`` is asked before
    every step, the forward included)."""

    def __init__(self, lp_epochs: int, optimizers: list[torch.optim.Optimizer]) -> None:
        super().__init__(lp_epochs)
        self.optimizers = optimizers  # every optimizer the trainer built, in order
        self.names: dict[int, str] = {}
        self.end_of_task_1: dict[str, dict[str, Tensor]] = {}
        self.phase_starts: dict[int, dict[str, dict[str, Tensor]]] = {}  # step -> snapshot
        self.starts_at = {0}

    def snapshot(self) -> dict[str, dict[str, Tensor]]:
        live = self.optimizers[-1]
        return {self.names[id(p)]: {k: v.clone() for k, v in live.state[p].items()}
                for group in live.param_groups for p in group["params"] if live.state.get(p)}

    def before_task(self, ctx: TaskContext) -> None:
        self.names = {id(p): name for name, p in ctx.model.named_parameters()}

    def lr_factor(self, task_index: int, step: int, steps_in_task: int) -> float:
        if task_index == 1 and step in self.starts_at:
            self.phase_starts[step] = self.snapshot()
        return 1.0

    def after_task(self, ctx: TaskContext) -> None:
        if ctx.task_index == 0:
            self.end_of_task_1 = self.snapshot()


def _spied_run(config: TrainConfig, benchmark: Benchmark, monkeypatch: pytest.MonkeyPatch) -> tuple[Spy, int, int]:
    """Train with the spy (lp_epochs=1); returns it, task 1's steps and task 2's probing steps."""
    optimizers: list[torch.optim.Optimizer] = []
    built = trainer.task_optimizer

    def recording(*args, **kwargs) -> torch.optim.Optimizer:
        optimizers.append(built(*args, **kwargs))
        return optimizers[-1]

    monkeypatch.setattr(trainer, "task_optimizer", recording)
    model, _ = build_run(config, benchmark)
    spy = Spy(1, optimizers)
    probe_steps = -(-len(benchmark.tasks[1].train) // config.batch_size)
    spy.starts_at = {0, probe_steps}
    result = train_sequence(benchmark, model, spy, config)
    assert result.status == "finished" and len(optimizers) == 3  # task 1; task 2's probe and tune phases
    return spy, result.compute_first.optimizer_steps, probe_steps


def _equal(a: dict[str, dict[str, Tensor]], b: dict[str, dict[str, Tensor]]) -> bool:
    return a.keys() == b.keys() and all(a[n].keys() == b[n].keys() and all(torch.equal(a[n][k], b[n][k]) for k in a[n])
                                        for n in a)


def test_keep_carries_adams_state_into_task_2_and_across_its_phases(digits, monkeypatch):
    # lr_decay puts each layer of task 2 in a group of its own: the state is per parameter, it carries anyway
    config = TrainConfig(optimizer_state="keep", lr_decay=0.5, **BASE)
    spy, task1_steps, probe_steps = _spied_run(config, digits, monkeypatch)
    end = spy.end_of_task_1
    assert set(end) == set(spy.names.values()) and all(float(state["step"]) == task1_steps for state in end.values())
    probe = spy.optimizers[1]  # the probing phase's optimizer: the head's parameters, as LP-FT chooses them
    head = {spy.names[id(p)] for group in probe.param_groups for p in group["params"]}
    assert len(head) == 2 and len(end) == 6
    # the probing phase trains the head only: its optimizer starts from the head's state at the end of task 1
    assert _equal(spy.phase_starts[0], {n: end[n] for n in head})
    # fine-tuning: the head resumes where the probe left it, the body (idle while probing) where task 1 left it
    tune = spy.phase_starts[probe_steps]
    assert set(tune) == set(end)
    assert _equal({n: tune[n] for n in end if n not in head}, {n: end[n] for n in end if n not in head})
    assert all(float(tune[n]["step"]) == task1_steps + probe_steps for n in head)
    assert all(not torch.equal(tune[n]["exp_avg"], end[n]["exp_avg"]) for n in head)


def test_reset_starts_every_task_and_phase_from_nothing(digits, monkeypatch):
    spy, task1_steps, probe_steps = _spied_run(TrainConfig(optimizer_state="reset", **BASE), digits, monkeypatch)
    assert spy.end_of_task_1 and all(float(s["step"]) == task1_steps for s in spy.end_of_task_1.values())
    assert spy.phase_starts[0] == {} and spy.phase_starts[probe_steps] == {}


def test_keep_and_reset_train_task_1_alike_and_task_2_apart_and_sgd_has_nothing_to_keep(digits):
    def run(**extra) -> list[list[Tensor]]:  # the weights after each task
        config = TrainConfig(**{**BASE, **extra})
        model, strategy = build_run(config, digits)
        after: list[list[Tensor]] = []
        train_sequence(digits, model, strategy, config,
                       callback=lambda report: after.append([p.detach().clone() for p in model.parameters()]))
        return after

    def same(a: list[Tensor], b: list[Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b))

    reset, keep = run(optimizer_state="reset"), run(optimizer_state="keep")
    assert same(reset[0], keep[0]) and not same(reset[1], keep[1])
    sgd, sgd_keep = run(optimizer="sgd", lr=0.05), run(optimizer="sgd", lr=0.05, optimizer_state="keep")
    assert same(sgd[0], sgd_keep[0]) and same(sgd[1], sgd_keep[1])


def _matrices(config: TrainConfig, benchmark: Benchmark, prefix_dir: Path | None) -> dict:
    result = run_trial(config, benchmark, [0], lambda metrics: None, prefix_dir=str(prefix_dir) if prefix_dir else None)
    return {"accuracy": result["accuracy"], "task1_samples": result["task1_samples"]}


def test_keep_goes_through_the_prefix_cache_bit_for_bit(digits, tmp_path: Path):
    keep = TrainConfig(optimizer_state="keep", **BASE)
    reset = keep.replace(optimizer_state="reset")
    assert prefix_key(keep, digits) == prefix_key(reset, digits)  # task 1 is the same: one entry serves both
    entry = PrefixCache(tmp_path, prefix_key(keep.replace(seed=0), digits))
    uncached = _matrices(keep, digits, None)
    assert uncached["accuracy"] != _matrices(reset, digits, None)["accuracy"]  # keep's state makes a difference

    _matrices(reset, digits, tmp_path)  # a reset trial writes the entry, without the optimizer's state
    stored = entry.load()
    assert stored is not None and "optimizer" not in stored
    computed = _matrices(keep, digits, tmp_path)  # so keep computes task 1 again and stores its state too
    stored = entry.load()
    names = {n for n, _ in build_run(keep, digits)[0].named_parameters()}
    assert stored is not None and set(stored["optimizer"]) == names  # Adam's tensors for every weight
    assert all(set(stored["optimizer"][n]) == {"step", "exp_avg", "exp_avg_sq"} for n in names)
    restored = _matrices(keep, digits, tmp_path)
    assert computed["task1_samples"] > 0 and restored["task1_samples"] == 0  # the second one did restore it
    assert uncached["accuracy"] == computed["accuracy"] == restored["accuracy"]
