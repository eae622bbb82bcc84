"""Fisher: the package's per-sample estimators against ``torch.func`` (vmap of grad), and against an epoch.

- Speed and error: the same model (the MLP after one epoch on task 1) and the same samples (the
  first task-1 training images), task-incremental masked logits on both sides. The reference
  materialises every sample's gradient with ``vmap(grad(log p))`` and sums their squares, for
  ``exact`` once per class of the task weighted by p(c|x). ``sampled`` draws its labels from the
  run's generator, which the reference cannot replay, so it is timed but not compared.
- Relative error: per parameter tensor, max |ours − reference| / max |reference|, the worst tensor;
  elementwise it is also reported over the entries above 1e-6 of that tensor's largest value.
- Cost against training: the ``exact`` Fisher over the whole task-1 training split (what EWC
  computes after the task) against one training epoch on it, both through the package, each
  the fastest of its rounds; the other estimators' whole-task times are in the details.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from bench.common import Row, Settings, sync, timed
from bench.data import QUICK_SAMPLES, package_benchmark

SAMPLES = 2048  # compared samples: the vmap reference holds one gradient per sample, so it is slow
QUICK_COMPARED = 128
VMAP_CHUNK = 128  # per-sample gradients at once in the reference: 128 x 269k floats = 138 MB
COMPARED = ("exact", "empirical")
TIMED = ("exact", "empirical", "sampled")
TARGET_SPEEDUP = 30.0
TARGET_ERROR = 1e-5
TARGET_EPOCH_SHARE = 0.5


def _float(x: Tensor) -> Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x  # the package's to_float: uint8 images to [0, 1]


def vmap_fisher(model: nn.Module, x: Tensor, y: Tensor, estimator: str, mask: Tensor) -> dict[str, Tensor]:
    """Diagonal Fisher from per-sample gradients built by ``torch.func``: the straightforward way."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    classes = mask.nonzero().flatten().tolist()

    def log_prob(theta: dict[str, Tensor], xi: Tensor, ci: Tensor) -> Tensor:
        logits = functional_call(model, theta, (_float(xi[None]),))[0]
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        return torch.log_softmax(logits, dim=0).gather(0, ci[None])[0]  # indexing by a tensor breaks vmap

    per_sample = vmap(grad(log_prob), in_dims=(None, 0, 0))
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    model.eval()
    for start in range(0, len(y), VMAP_CHUNK):
        xc, yc = x[start : start + VMAP_CHUNK], y[start : start + VMAP_CHUNK]
        if estimator == "empirical":
            for name, g in per_sample(params, xc, yc).items():
                fisher[name] += g.square().sum(0)
            continue
        with torch.no_grad():
            logits = functional_call(model, params, (_float(xc),))
            probs = torch.softmax(logits.masked_fill(~mask, torch.finfo(logits.dtype).min), dim=1)  # (B, classes)
        for c in classes:
            target = torch.full_like(yc, c)
            weight = probs[:, c]
            for name, g in per_sample(params, xc, target).items():
                fisher[name] += (weight.view(-1, *[1] * (g.dim() - 1)) * g.square()).sum(0)
    model.train()
    return {name: f / len(y) for name, f in fisher.items()}


def relative_errors(ours: dict[str, Tensor], ref: dict[str, Tensor]) -> tuple[float, float]:
    """(worst tensor's max |Δ| / max |ref|, worst elementwise |Δ|/|ref| over entries > 1e-6 · max |ref|)."""
    normwise = elementwise = 0.0
    for name, want in ref.items():
        got, want = ours[name].double(), want.double()
        scale = want.abs().max()
        if scale == 0:
            continue
        normwise = max(normwise, float((got - want).abs().max() / scale))
        big = want.abs() > 1e-6 * scale
        elementwise = max(elementwise, float(((got - want).abs()[big] / want.abs()[big]).max()))
    return normwise, elementwise


def _train_task_one(settings: Settings, limit: int | None) -> dict:
    """One epoch of task 1 through the package with EWC's exact Fisher after it; times both.

    Full mode trains twice from the same seed and keeps each side's fastest round (the Fisher is
    also timed once more on the trained model), so a burst of load elsewhere hits both alike.
    """
    from sweep.config import TrainConfig
    from sweep.data.tasks import Split
    from sweep.strategies.ewc import EWC
    from sweep.strategies.fisher import task_fisher
    from sweep.train.trainer import build_run, evaluate_all, train_sequence

    benchmark = package_benchmark(settings, limit)
    one_task = replace(benchmark, tasks=benchmark.tasks[:1])
    config = TrainConfig(benchmark="split-mnist", scenario="task", strategy="ewc", fisher="exact", epochs=1,
                         batch_size=64, lr=1e-3, seed=0)
    times: dict[str, float] = {}

    class TimedEWC(EWC):  # the package's EWC, with the Fisher it computes after a task timed
        def after_task(self, ctx):  # noqa: ANN001, ANN202
            self.ctx = ctx
            # task 1 is this run's last task, after which EWC skips the Fisher (no penalty would use
            # it); the Fisher a 2-task trial computes after task 1 is computed here, inside the task
            with timed(settings.device, times, "fisher"):
                task_fisher(ctx, self.fisher, self.fisher_samples)
            super().after_task(ctx)

    # warm-up on a few samples: first-call costs (torch's compiler import at the first optimizer,
    # allocator growth) must not land in the epoch
    head = Split(one_task.tasks[0].train.x[:256], one_task.tasks[0].train.y[:256])
    warm = replace(one_task, tasks=(replace(one_task.tasks[0], train=head),))
    train_sequence(warm, build_run(config, warm)[0], TimedEWC(fisher="exact"), config, device=settings.device)

    masks = one_task.task_masks(settings.device)
    device_task = one_task.to(settings.device)
    epochs, fishers, evaluations = [], [], []
    for _ in range(1 if settings.quick else 2):
        model, _ = build_run(config, one_task)
        strategy = TimedEWC(fisher="exact")
        reports = []
        train_sequence(one_task, model, strategy, config, device=settings.device, callback=reports.append)
        fishers.append(times["fisher"])
        with timed(settings.device, times, "evaluation"):
            evaluate_all(model, device_task, masks)
        evaluations.append(times["evaluation"])
        # the task's time holds training, the Fisher and one evaluation; the epoch is what is left
        epochs.append(reports[0].seconds - fishers[-1] - evaluations[-1])
    with timed(settings.device, times, "fisher"):
        task_fisher(strategy.ctx, "exact")
    fishers.append(times["fisher"])
    times.update(epoch=min(epochs), fisher_exact_task=min(fishers), evaluation=min(evaluations))
    return {"model": model, "ctx": strategy.ctx, "times": times, "samples": len(one_task.tasks[0].train),
            "rounds": {"epoch_s": epochs, "fisher_exact_s": fishers}}


def _best_of(settings: Settings, rounds: int, fn) -> tuple[float, object]:  # noqa: ANN001
    best, value = float("inf"), None
    for _ in range(rounds):
        sync(settings.device)
        started = time.perf_counter()
        value = fn()
        sync(settings.device)
        best = min(best, time.perf_counter() - started)
    return best, value


def run(settings: Settings) -> list[Row]:
    from sweep.strategies.fisher import fisher_diagonal, task_fisher

    trained = _train_task_one(settings, QUICK_SAMPLES if settings.quick else None)
    model, ctx, times = trained["model"], trained["ctx"], trained["times"]
    split = ctx.task_training_data()
    n = QUICK_COMPARED if settings.quick else SAMPLES
    x, y, ids = split.split.x[:n], split.split.y[:n], split.task_ids[:n]
    mask = ctx.benchmark.task_masks(settings.device)[0]
    rounds = 1 if settings.quick else 3

    speed: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, float]] = {}
    for estimator in TIMED:
        def ours(estimator: str = estimator) -> dict[str, Tensor]:
            return fisher_diagonal(model, x, y, estimator=estimator, logits=ctx.logits, task_ids=ids,
                                   generator=torch.Generator().manual_seed(0))

        ours()  # warm-up: first-call allocations
        ours_s, got = _best_of(settings, rounds, ours)
        entry = {"ours_s": ours_s}
        if estimator in COMPARED:
            ref_s, want = _best_of(settings, 1, lambda estimator=estimator: vmap_fisher(model, x, y, estimator, mask))
            normwise, elementwise = relative_errors(got, want)
            entry.update(reference_s=ref_s, ratio=ref_s / ours_s)
            errors[estimator] = {"relative_error": normwise, "elementwise_relative_error": elementwise}
        speed[estimator] = entry

    # every per-sample estimator over the whole task, against the epoch
    whole = {}
    for estimator in TIMED:
        whole[estimator], _ = _best_of(settings, 1, lambda estimator=estimator: task_fisher(ctx, estimator))
    common = {"device": settings.device, "threads": torch.get_num_threads(), "quick": settings.quick,
              "model": "mlp 784-256-256-10 after one epoch of task 1", "scenario": "task"}
    worst = max(e["relative_error"] for e in errors.values())
    return [
        Row("fisher_speed", f"exact per-sample Fisher of {n} samples", "s", speed["exact"]["ours_s"],
            speed["exact"]["reference_s"], speed["exact"]["ratio"], "reference / ours", ">=", TARGET_SPEEDUP,
            f">= {TARGET_SPEEDUP:g}x", details={**common, "samples": n, "per_estimator": speed,
                                               "reference": "torch.func vmap(grad(log p)), 128 samples at a time"}),
        Row("fisher_error", f"largest relative error against the vmap reference ({', '.join(COMPARED)})", "",
            worst, 0.0, worst, "max relative error", "<", TARGET_ERROR, f"< {TARGET_ERROR:g}",
            details={**common, "samples": n, "per_estimator": errors, "dtype": "float32"}),
        Row("fisher_vs_epoch", "exact Fisher over the whole task-1 training split vs one epoch on it", "s",
            times["fisher_exact_task"], times["epoch"], times["fisher_exact_task"] / times["epoch"],
            "Fisher / epoch", "<", TARGET_EPOCH_SHARE, f"< {TARGET_EPOCH_SHARE:g} epoch",
            details={**common, "samples": trained["samples"], "whole_task_s": whole,
                     "whole_task_per_epoch": {k: v / times["epoch"] for k, v in whole.items()},
                     "rounds": trained["rounds"],
                     "evaluation_s": times["evaluation"]}),
    ]
