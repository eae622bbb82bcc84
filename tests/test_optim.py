"""The trainer's optimizer: what a hand-written loop must build to get the trainer's numbers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sweep.train.optim import make_optimizer


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, n: int = 5) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    for _ in range(n):
        x = torch.randn(8, 6, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(("kind", "plain"), [
    ("adam", lambda params: torch.optim.Adam(params, lr=0.01, weight_decay=0.1, fused=True)),
    ("sgd", lambda params: torch.optim.SGD(params, lr=0.01, weight_decay=0.1)),
])
def test_the_documented_torch_optimizer_gives_the_same_weights_bit_for_bit(kind: str, plain):
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    theirs = copy.deepcopy(ours)
    a = _steps(ours, make_optimizer(kind, ours.parameters(), 0.01, 0.1))
    b = _steps(theirs, plain(theirs.parameters()))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_adam_is_fused_on_the_cpu_and_not_where_torch_has_no_fused_kernel():
    model = nn.Linear(4, 3)
    assert make_optimizer("adam", model.parameters(), 0.1).defaults["fused"] is True
    complex_weights = [torch.zeros(2, dtype=torch.complex64, requires_grad=True)]
    assert not make_optimizer("adam", complex_weights, 0.1).defaults["fused"]
    assert not make_optimizer("sgd", model.parameters(), 0.1).defaults.get("fused")


def test_param_groups_from_generators_keep_every_parameter():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    for kind in ("adam", "sgd"):
        groups = [{"params": model[0].parameters(), "lr": 0.5}, {"params": model[1].parameters()}]
        optimizer = make_optimizer(kind, groups, 0.1)
        assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2]
        assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.1]


def test_sgd_takes_sparse_gradients():
    embedding = nn.Embedding(10, 3, sparse=True)
    optimizer = make_optimizer("sgd", embedding.parameters(), 0.1)
    before = embedding.weight.detach().clone()
    embedding(torch.tensor([1, 2])).sum().backward()
    optimizer.step()
    assert not torch.equal(before[1], embedding.weight[1]) and torch.equal(before[0], embedding.weight[0])
