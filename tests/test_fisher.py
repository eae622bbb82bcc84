"""The Fisher estimators against their definitions, computed the slow way, one sample at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.models import CNN, MLP
from sweep.strategies.fisher import fisher_diagonal

N = 24  # samples: enough for every class to get some mass, few enough for a per-sample loop
CLASSES = 10
MASKS = torch.zeros(2, CLASSES, dtype=torch.bool)
MASKS[0, :5] = True
MASKS[1, 5:] = True


class OddCNN(nn.Module):
    """Conv2d variants the unfold rule must get right, an in-place ReLU and a LayerNorm (vmap fallback)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2, groups=2, bias=False)
        self.norm = nn.LayerNorm(6 * 4 * 4)
        self.fc = nn.Linear(6 * 4 * 4, 12)
        self.relu = nn.ReLU(inplace=True)  # changes fc's output in place: fc must go to the fallback
        self.head = nn.Linear(12, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.tanh(self.conv2(torch.relu(self.conv1(x))))
        return self.head(self.relu(self.fc(self.norm(x.flatten(1)))))


MODELS = {
    "mlp": lambda: MLP(64, CLASSES, (16, 12)),
    "cnn": lambda: CNN((1, 8, 8), CLASSES, channels=(4, 6)),
    "odd": OddCNN,
}


def make(kind: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = MODELS[kind]().to(dtype)
    x = torch.randn(N, 1, 8, 8, dtype=dtype)
    y = torch.randint(0, 5, (N,))
    return model, x, y


def logits_of(model: nn.Module):
    def logits(x: Tensor, task_ids: Tensor | None) -> Tensor:
        out = model(x)
        return out if task_ids is None else out.masked_fill(~MASKS[task_ids], torch.finfo(out.dtype).min)

    return logits


def brute_force(model: nn.Module, x: Tensor, task_ids: Tensor | None, targets) -> dict[str, Tensor]:
    """Mean over samples of Σ_(c, w) w·(∂ log p(c|x_i)/∂θ)², one backward per sample and class.

    ``targets(i, p)`` lists the (class, weight) pairs of sample i given its probabilities p.
    """
    named = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in named.items()}
    logits = logits_of(model)
    for i in range(len(x)):
        log_p = torch.log_softmax(logits(x[i : i + 1], None if task_ids is None else task_ids[i : i + 1]), 1)[0]
        for c, w in targets(i, log_p.detach().exp()):
            grads = torch.autograd.grad(log_p[c], list(named.values()), retain_graph=True, allow_unused=True)
            for n, g in zip(named, grads):
                if g is not None:
                    total[n] += w * g.square()
    return {n: t / len(x) for n, t in total.items()}


def assert_close(got: dict[str, Tensor], want: dict[str, Tensor], rtol: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].shape == want[name].shape, name
        error = (got[name] - want[name]).norm() / want[name].norm().clamp_min(1e-30)
        assert error < rtol, f"{name}: relative error {error:.2e}"
        assert want[name].abs().sum() > 0, f"{name}: a zero Fisher tests nothing"


TASK_IDS = {"class": None, "task": torch.tensor([0, 1] * (N // 2))}  # task-IL: both tasks' masks in play


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("scenario", list(TASK_IDS))
def test_exact_is_the_full_sum_over_classes(kind: str, scenario: str):
    model, x, y = make(kind)
    ids = TASK_IDS[scenario]
    got = fisher_diagonal(model, x, y, estimator="exact", logits=logits_of(model), task_ids=ids, chunk_size=7)
    # every class, masked ones included: they carry p = 0, so the mask must not change the sum
    want = brute_force(model, x, ids, lambda i, p: [(c, p[c]) for c in range(CLASSES)])
    assert_close(got, want)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("scenario", list(TASK_IDS))
def test_empirical_uses_the_true_labels(kind: str, scenario: str):
    model, x, y = make(kind)
    ids = TASK_IDS[scenario]
    if ids is not None:
        y = torch.where(ids == 1, y + 5, y)  # labels inside each sample's task
    got = fisher_diagonal(model, x, y, estimator="empirical", logits=logits_of(model), task_ids=ids, chunk_size=5)
    assert_close(got, brute_force(model, x, ids, lambda i, p: [(int(y[i]), 1.0)]))


def _inverse_cdf(p: Tensor, u: float) -> int:
    cdf = p.double().cumsum(0)
    return int((cdf <= u * cdf[-1]).sum())


@pytest.mark.parametrize("kind", list(MODELS))
def test_sampled_draws_from_the_model_with_the_run_generator(kind: str):
    model, x, y = make(kind)
    ids = TASK_IDS["task"]
    got = fisher_diagonal(model, x, y, estimator="sampled", logits=logits_of(model), task_ids=ids,
                          generator=torch.Generator().manual_seed(7), chunk_size=5)
    u = torch.rand(N, generator=torch.Generator().manual_seed(7), dtype=torch.float64)  # the documented draws
    drawn: list[int] = []

    def draw(i: int, p: Tensor) -> list[tuple[int, float]]:
        drawn.append(_inverse_cdf(p, float(u[i])))
        return [(drawn[-1], 1.0)]

    assert_close(got, brute_force(model, x, ids, draw))
    assert all(MASKS[ids[i], c] for i, c in enumerate(drawn))  # never a class outside the sample's task
    assert len(set(drawn)) > 1


def test_subset_is_drawn_without_replacement_with_the_generator():
    model, x, y = make("mlp")
    m = 15
    got = fisher_diagonal(model, x, y, estimator="sampled", samples=m, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    subset = torch.randperm(N, generator=generator)[:m]
    u = torch.rand(m, generator=generator, dtype=torch.float64)
    sub_x = x[subset]
    want = brute_force(model, sub_x, None, lambda i, p: [(_inverse_cdf(p, float(u[i])), 1.0)])
    assert_close(got, want)
    everything = fisher_diagonal(model, x, y, estimator="exact", samples=10 * N)  # more than N: all of them
    assert_close(everything, fisher_diagonal(model, x, y, estimator="exact"), rtol=1e-12)


@pytest.mark.parametrize("batch_size", [5, 24])
def test_batched_is_the_mean_of_squared_batch_gradients(batch_size: int):
    model, x, y = make("cnn")
    ids = TASK_IDS["task"]
    y = torch.where(ids == 1, y + 5, y)
    logits = logits_of(model)
    got = fisher_diagonal(model, x, y, estimator="batched", logits=logits, task_ids=ids, batch_size=batch_size)
    named = dict(model.named_parameters())
    want = {n: torch.zeros_like(p) for n, p in named.items()}
    starts = range(0, N, batch_size)
    for s in starts:
        loss = F.cross_entropy(logits(x[s : s + batch_size], ids[s : s + batch_size]), y[s : s + batch_size])
        for n, g in zip(named, torch.autograd.grad(loss, list(named.values()))):
            want[n] += g.square() / len(starts)
    assert_close(got, want, rtol=1e-10)


def test_float32_and_uint8_images_agree_with_float64():
    model64, x, y = make("cnn")
    images = (x.sigmoid() * 255).round().to(torch.uint8)  # what benchmarks hold
    model32 = MODELS["cnn"]().float()
    model32.load_state_dict(model64.state_dict())
    got = fisher_diagonal(model32, images, y, estimator="exact")
    want = fisher_diagonal(model64, images.double() / 255, y, estimator="exact")
    assert_close({n: t.double() for n, t in got.items()}, want, rtol=1e-4)


def test_model_mode_and_frozen_flags_are_restored():
    model, x, y = make("mlp")
    model.train()
    model.hidden[0].weight.requires_grad_(False)  # a frozen layer still gets its Fisher
    fisher = fisher_diagonal(model, x, y, estimator="exact")
    assert model.training
    assert not model.hidden[0].weight.requires_grad and model.hidden[0].bias.requires_grad
    assert fisher["hidden.0.weight"].abs().sum() > 0
    with pytest.raises(ValueError, match="unknown"):
        fisher_diagonal(model, x, y, estimator="diagonal")
