"""SI's and MAS's importances against a hand computation on tiny models, their penalties, their bookkeeping
(samples counted, the last task skipped, scale stats), and SI, MAS and EWC composed."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.data.tasks import Benchmark, to_float
from sweep.strategies.base import TaskContext
from sweep.strategies.mas import MAS, mas_importance
from sweep.strategies.si import SI
from sweep.train.trainer import build_run, masked_logits, train_sequence


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def test_si_integrates_minus_gradient_times_update_and_divides_by_the_damped_task_change():
    model = tiny_mlp()
    model[0].bias.requires_grad_(False)  # a weight that never trains: no gradient, no path
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    si = SI(si_c=2.0, si_xi=0.1)
    ctx: TaskContext = SimpleNamespace(task_index=0, benchmark=SimpleNamespace(num_tasks=2),  # type: ignore[assignment]
                                       model=model)
    names = [n for n, _ in model.named_parameters()]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    path = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    si.before_task(ctx)
    for step in range(6):
        batch = slice(step % 2 * 4, step % 2 * 4 + 4)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        si.after_step(ctx, None)  # type: ignore[arg-type]
        for n, p in model.named_parameters():
            if n in grads:
                for i in range(p.numel()):  # element by element, as the paper writes it
                    path[n].view(-1)[i] -= grads[n].view(-1)[i] * (p.detach().view(-1)[i] - before[n].view(-1)[i])
    si.after_task(ctx)
    for n, p in model.named_parameters():
        expected = path[n] / ((p.detach() - start[n]) ** 2 + 0.1)
        assert torch.allclose(si.omega[n], expected, rtol=1e-12, atol=1e-15), n
    assert torch.equal(si.omega["0.bias"], torch.zeros(4, dtype=torch.float64))
    assert sum(float(si.omega[n].sum()) for n in names) > 0  # the loss fell along the path

    with torch.no_grad():
        model[2].weight.add_(0.3)  # away from θ*
    want = 2.0 * sum(float((si.omega[n] * (p.detach() - si.anchor[n]) ** 2).sum()) for n, p in model.named_parameters())
    penalty = si.model_penalty(model)
    assert penalty is not None and float(penalty.detach()) == pytest.approx(want, rel=1e-12)
    trace = sum(float(o.sum()) for o in si.omega.values())
    assert si.stats() == pytest.approx({"si_importance_mean": trace / sum(o.numel() for o in si.omega.values()),
                                        "si_importance_trace": trace})
    assert SI(si_c=0.0).model_penalty(model) is None and math.isnan(SI().stats()["si_importance_mean"])


class TinyConv(nn.Module):
    """A convolution (per-sample gradients through torch.func) before a Linear head (the |δ|ᵀ|a| rule)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.head = nn.Linear(2 * 4 * 4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def hand_mas(model: nn.Module, x: Tensor, columns: list[int] | None) -> dict[str, Tensor]:
    """1/N Σ_i |∂ ||f(x_i)[columns]||² / ∂θ|, one sample at a time."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(x.shape[0]):
        model.zero_grad()
        out = model(x[i : i + 1])[0]
        (out if columns is None else out[columns]).square().sum().backward()
        for n, p in model.named_parameters():
            total[n] += p.grad.abs()
    return {n: t / x.shape[0] for n, t in total.items()}


@pytest.mark.parametrize("columns", [None, [0, 2]], ids=["every-output", "task-columns"])
@pytest.mark.parametrize("build", [tiny_mlp, lambda: TinyConv().double()], ids=["mlp", "conv"])
def test_mas_importance_is_the_mean_absolute_per_sample_gradient_of_the_squared_output_norm(build, columns):
    model = build()
    shape = (7, 5) if isinstance(model, nn.Sequential) else (7, 1, 4, 4)
    x = torch.randn(*shape, dtype=torch.float64)
    expected = hand_mas(model, x, columns)
    model.zero_grad(set_to_none=True)
    got = mas_importance(model, x, None if columns is None else torch.tensor(columns), chunk_size=3)  # 3 chunks
    assert got.keys() == expected.keys()
    for n in expected:
        assert torch.allclose(got[n], expected[n], rtol=1e-10, atol=1e-14), n
    assert model.training and all(p.grad is None for p in model.parameters())  # left as it was


@pytest.fixture(scope="module")
def digits() -> Benchmark:
    return build_benchmark("split-digits", "task")


def test_mas_after_a_task_uses_its_classes_counts_its_samples_and_skips_the_last_task(digits):
    torch.manual_seed(0)
    config = TrainConfig(strategy="mas", hidden=(16, 16), mas_samples=50)
    model, _ = build_run(config, digits)
    masks = digits.task_masks()

    def ctx(t: int) -> TaskContext:
        return TaskContext(t, digits, model, torch.device("cpu"), 32, torch.Generator().manual_seed(3),
                           lambda x, ids: masked_logits(model, x, ids, masks))

    every, subset = MAS(mas_lambda=1.0), MAS(mas_lambda=1.0, mas_samples=50)
    first = ctx(0)
    every.after_task(first)
    classes = list(digits.tasks[0].classes)
    assert first.compute.fisher_samples == len(digits.tasks[0].train)
    x = to_float(digits.tasks[0].train.x)
    expected = mas_importance(model, x, torch.tensor(classes))
    assert all(torch.equal(every.omega[n], expected[n]) for n in expected)
    assert not torch.allclose(every.omega["head.weight"], mas_importance(model, x)["head.weight"])  # not every output
    assert float(every.omega["head.weight"][[c for c in range(10) if c not in classes]].abs().sum()) == 0
    second = ctx(0)
    subset.after_task(second)
    assert second.compute.fisher_samples == 50 and not torch.equal(subset.omega["head.weight"], expected["head.weight"])
    last = ctx(1)
    every.after_task(last)  # no task follows: nothing is estimated, Ω stays the one λ multiplies
    assert last.compute.fisher_samples == 0 and all(torch.equal(every.omega[n], expected[n]) for n in expected)
    with torch.no_grad():
        model.head.weight.add_(0.1)
    want = sum(float((every.omega[n] * (p.detach() - every.anchor[n]) ** 2).sum()) for n, p in model.named_parameters())
    penalty = every.model_penalty(model)
    assert penalty is not None and float(penalty.detach()) == pytest.approx(want, rel=1e-5)


def test_si_mas_and_ewc_compose_and_each_reports_its_own_scale(digits):
    config = TrainConfig(strategy="ewc+si+mas", hidden=(32, 32), epochs=2, batch_size=32, num_tasks=5)
    benchmark = build_benchmark("split-digits", "task", num_tasks=5)
    model, strategy = build_run(config, benchmark)
    result = train_sequence(benchmark, model, strategy, config)
    assert result.status == "finished" and result.val[-1].min() > 0.5
    for prefix in ("fisher", "si_importance", "mas_importance"):
        assert result.stats[f"{prefix}_trace"] > 0 and result.stats[f"{prefix}_mean"] > 0, prefix
    # MAS estimated after each of tasks 1..4, EWC's Fisher too: the same samples each
    assert result.compute_first.fisher_samples + result.compute.fisher_samples == 2 * sum(
        len(task.train) for task in benchmark.tasks[:-1])


def test_importance_scales_reach_trials_parquet_beside_the_fishers(digits, tmp_path):
    from sweep.analysis.io import load_study
    from sweep.results.store import StudyStore
    from sweep.tune.sink import ResultSink
    from sweep.tune.trial import run_trial

    config = TrainConfig(strategy="si+mas", hidden=(16, 16), mas_samples=100)
    result = run_trial(config, digits, [0], lambda metrics: None)
    versions = {"code_version": "test", "torch_version": "x", "ray_version": "x", "optuna_version": "x"}
    setup = {"base_config": config.to_dict(), "seeds": [0], "num_tasks": 2}
    ResultSink(StudyStore(tmp_path), "s", versions, setup, quiet=True).record("t1", {}, result)
    row = load_study(tmp_path).trials.iloc[0]
    for name in ("si_importance_mean", "si_importance_trace", "mas_importance_mean", "mas_importance_trace"):
        assert row[name] == result[name] and row[name] > 0, name
    assert math.isnan(row["fisher_mean"])  # no EWC: no Fisher
