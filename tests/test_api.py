"""The production API: plain PyTorch pieces that give, in a hand-written loop, the trainer's numbers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sweep import api
from sweep.analysis.choose import choose, write_choice
from sweep.analysis.io import load_study
from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.data.tasks import Benchmark, to_float
from sweep.errors import ConfigError
from sweep.models import build_model, unwrap
from sweep.strategies.registry import parse_strategy
from sweep.train.trainer import run_config
from tests.fake_study import make_study
from tests.helpers import evaluate_by_hand


@pytest.fixture(scope="module")
def digits() -> Benchmark:
    return build_benchmark("split-digits", "task")


def hand_written_loop(config: TrainConfig, bench: Benchmark) -> tuple[np.ndarray, np.ndarray]:
    """A user's loop: their model, their batches, their optimizer; sweep.api supplies the mitigation."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, bench.input_shape, bench.num_classes, config.hidden)
    generator = torch.Generator().manual_seed(config.seed)  # the batch order the trainer draws
    masks = bench.task_masks()
    parts = parse_strategy(config.strategy)
    ewc = l2sp = distill = None
    T = bench.num_tasks
    val, test = np.full((T, T), np.nan), np.full((T, T), np.nan)
    for t, task in enumerate(bench.tasks):
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}  # for interpolation
        if t == 0:
            params = api.freeze_layers(model, 0)
            optimizer = torch.optim.Adam(params, lr=config.lr, fused=True)  # what the trainer uses
        else:
            api.freeze_layers(model, config.frozen_layers)
            lr = config.finetune_lr or config.lr
            optimizer = torch.optim.Adam(api.param_groups(model, lr, config.lr_decay, config.frozen_layers), lr=lr,
                                         fused=True)
        for _ in range(config.epochs):
            order = torch.randperm(len(task.train), generator=generator)
            for start in range(0, len(task.train), config.batch_size):
                idx = order[start : start + config.batch_size]
                x, y = to_float(task.train.x[idx]), task.train.y[idx]
                raw = model(x)
                logits = raw.masked_fill(~masks[t], torch.finfo(raw.dtype).min)  # the task's own head
                loss = F.cross_entropy(logits, y) if distill is None else distill(raw, x, y, ce_logits=logits)
                for penalty in (ewc, l2sp):
                    if penalty is not None:
                        loss = loss + penalty(model)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        if "interp" in parts and t > 0:  # first: the Fisher below sees the interpolated weights
            api.interpolate(model, before, config.interp_alpha)
        if "ewc" in parts:
            fisher = api.compute_fisher(model, task.train.x, task.train.y, estimator=config.fisher,
                                        classes=task.classes, batch_size=config.batch_size)
            if ewc is None:
                ewc = api.EWCPenalty(model, fisher, config.ewc_lambda)
            else:
                ewc.add_task(model, fisher)
        if "l2sp" in parts:
            l2sp = api.L2SPPenalty(model, config.l2sp_lambda)
        if "distill" in parts:
            seen = sorted({c for done in bench.tasks[: t + 1] for c in done.classes})
            distill = api.DistillationLoss(model, config.distill_temperature, config.distill_alpha, classes=seen)
        evaluate_by_hand(model, bench, masks, t, val, test)
    return val, test


CASES = {
    "ewc": {"strategy": "ewc", "ewc_lambda": 1000.0},
    "ewc-empirical-5-tasks": {"strategy": "ewc", "ewc_lambda": 100.0, "fisher": "empirical", "num_tasks": 5},
    "distill": {"strategy": "distill", "distill_alpha": 0.3, "distill_temperature": 2.0},
    # interpolation first when a task ends, whatever the order of the names
    "interp+ewc-5-tasks": {"strategy": "interp+ewc", "ewc_lambda": 100.0, "interp_alpha": 0.6, "num_tasks": 5},
    "l2sp+freeze+lr_decay": {"strategy": "l2sp+freeze", "l2sp_lambda": 0.5, "frozen_layers": 1, "lr_decay": 0.5,
                             "finetune_lr": 5e-4},
}


@pytest.mark.parametrize("case", list(CASES))
def test_hand_written_loop_reproduces_the_trainer(case: str, digits: Benchmark):
    config = TrainConfig(scenario="task", epochs=2, hidden=(32, 32), batch_size=32, **CASES[case])
    bench = digits if config.num_tasks is None else build_benchmark("split-digits", "task", config.num_tasks)
    result = run_config(config, bench)
    val, test = hand_written_loop(config, bench)
    assert np.array_equal(result.test, test) and np.array_equal(result.val, val), (result.test, test)


def test_ewc_penalty_is_half_lambda_fisher_weighted_squared_distance():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x, y = torch.randn(20, 4), torch.randint(0, 2, (20,))
    fisher = api.compute_fisher(model, x, y)
    assert set(fisher) == {n for n, _ in model.named_parameters()} and all(f.ge(0).all() for f in fisher.values())
    penalty = api.EWCPenalty(model, fisher, lam=50.0)
    assert penalty(model).item() == 0.0
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    expected = 25.0 * sum((fisher[n] * (p - anchor[n]).square()).sum() for n, p in model.named_parameters())
    value = penalty(model)
    assert torch.allclose(value, expected) and value.requires_grad
    value.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert penalty.fisher_scale()["fisher_trace"] == pytest.approx(sum(float(f.sum()) for f in fisher.values()))
    with pytest.raises(ConfigError, match="no entry for parameter"):
        api.EWCPenalty(nn.Linear(4, 2), fisher, lam=1.0)
    with pytest.raises(ConfigError, match="ewc_lambda"):
        api.EWCPenalty(model, fisher, lam=-1.0)


def test_distillation_loss_is_ce_plus_kl_toward_a_frozen_copy():
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    loss_fn = api.DistillationLoss(model, temperature=2.0, alpha=0.25, classes=[0, 1])
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    assert loss_fn.penalty(x, model(x)).item() == pytest.approx(0.0, abs=1e-7)  # student == teacher
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(loss_fn.teacher.weight, model.weight)  # the teacher did not move with the model
    out = model(x)
    t, s = loss_fn.teacher(x)[:, :2] / 2.0, out[:, :2] / 2.0
    kl = (t.softmax(1) * (t.log_softmax(1) - s.log_softmax(1))).sum(1).mean()
    expected = 0.25 * F.cross_entropy(out, y) + 0.75 * 4.0 * kl
    assert torch.allclose(loss_fn(out, x, y), expected, atol=1e-6)


def test_freeze_layers_on_a_plain_torchvision_resnet_counts_named_blocks():
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=3)
    assert api.layer_names(net) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    trainable = api.freeze_layers(net, 2)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in net.named_parameters() if n.startswith(("conv1.", "bn1.", "layer1."))}
    assert {id(p) for p in trainable} == {id(p) for p in net.parameters() if p.requires_grad}
    groups = api.param_groups(net, 1e-2, 0.5, frozen_layers=2)
    assert [g["lr"] for g in groups] == [1e-2 * 0.5**k for k in (3, 2, 1, 0)]
    ours = unwrap(build_model("resnet18", (3, 32, 32), 3))
    assert ours.layer1[0].conv1.weight.shape == net.layer1[0].conv1.weight.shape


def test_replay_indices_are_class_balanced():
    y = torch.tensor([0] * 50 + [1] * 5 + [2] * 30)
    picked = api.replay_indices(y, 30, seed=1)
    counts = torch.bincount(y[picked], minlength=3).tolist()
    assert counts == [13, 5, 12] or sorted(counts) == [5, 12, 13]
    assert len(set(picked.tolist())) == 30 and torch.equal(picked, api.replay_indices(y, 30, seed=1))


def test_from_chosen_gives_the_config_and_ready_pieces(tmp_path: Path):
    study = make_study(tmp_path, "demo", n_trials=4)
    chosen_file = write_choice(choose(load_study(study), "stability"), tmp_path / "chosen.yaml")
    chosen = api.from_chosen(chosen_file)
    assert chosen.config.strategy == "ewc" and chosen.evidence["study"] == "demo"
    model = build_model("mlp", (1, 8, 8), 10, (16,))
    x, y = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 10, (40,))
    ewc = chosen.ewc(model, chosen.fisher(model, x, y))
    assert ewc.lam == chosen.config.ewc_lambda
    chosen.freeze(model)
    optimizer = chosen.optimizer(model)
    assert optimizer.param_groups[-1]["lr"] == chosen.finetune_lr
    (tmp_path / "bad.yaml").write_text("config: {ewc_lambda: 1e-4}\n")
    with pytest.raises(ConfigError, match="1.0e-4"):
        api.from_chosen(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        api.from_chosen(tmp_path / "missing.yaml")


@pytest.mark.ray
@pytest.mark.slow
def test_production_loop_example_runs(ray_session, tmp_path: Path):
    """examples/production_loop.py --smoke: sweep, choose, fine-tune in a plain loop, verify."""
    from examples.production_loop import main

    numbers = main(["--smoke", "--results", str(tmp_path)])
    assert (tmp_path / "ewc-my-tasks" / "chosen.yaml").is_file()
    assert 0.0 <= numbers["source_after_chosen"] <= 1.0 and numbers["source_before"] > 0.3
    chosen = api.from_chosen(tmp_path / "ewc-my-tasks" / "chosen.yaml")
    assert chosen.config.benchmark == "examples.my_tasks:build" and chosen.config.model == "examples.my_models:build"
    # the study's fixed settings travel with the choice: the checkpoint every trial started from
    checkpoint = tmp_path / "ewc-my-tasks-source.pt"
    assert chosen.config.pretrained == str(checkpoint.resolve()) and chosen.config.scenario == "domain"
    meta = json.loads((tmp_path / "ewc-my-tasks" / "study.json").read_text())
    assert meta["weights_sha256"] == {"pretrained": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
