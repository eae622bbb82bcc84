"""Fisher: the package's per-sample estimators against ``torch.func`` (vmap of grad), and against their floors.

- Speed and error: the same model (the MLP after one epoch on task 1) and the same samples (the
  first task-1 training images), task-incremental masked logits on both sides. The reference
  materialises every sample's gradient with ``vmap(grad(log p))`` and sums their squares, for
  ``exact`` once per class of the task weighted by p(c|x). ``sampled`` draws its labels from the
  run's generator, which the reference cannot replay, so it is timed but not compared.
- Relative error: per parameter tensor, max |ours − reference| / max |reference|, the worst tensor;
  elementwise it is also reported over the entries above 1e-6 of that tensor's largest value.
- Against its floor, one row per estimator: the package's estimate over the whole task-1 training
  split (what EWC computes after the task) against :func:`fisher_floor`, the same estimate as a bare
  loop of matmuls on the MLP's weights: per chunk of samples one forward pass, the output gradients
  δ of every backward pass the estimator needs (``exact``: one per class of the task, p(c|x)-weighted,
  stacked into one matmul per layer; ``empirical`` and ``sampled``: one), and (δ²)ᵀ(a²) once per layer.
  The floor's estimates are checked against the package's (``exact``, ``empirical``). Each side keeps
  the fastest of its rounds, which alternate. The cost against one training epoch, the target the
  landed bench could not meet (``exact`` does 5 backward passes to the epoch's one), is in the details.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from bench.common import Row, Settings, sync, timed, work_clock
from bench.data import QUICK_SAMPLES, package_benchmark

SAMPLES = 2048  # compared samples: the vmap reference holds one gradient per sample, so it is slow
QUICK_COMPARED = 128
VMAP_CHUNK = 128  # per-sample gradients at once in the reference: 128 x 269k floats = 138 MB
COMPARED = ("exact", "empirical")
TIMED = ("exact", "empirical", "sampled")
TARGET_SPEEDUP = 30.0
TARGET_ERROR = 1e-5
TARGET_OVER_FLOOR = 1.2  # each estimator over the whole task at most this many times its floor


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


def _best_of(settings: Settings, rounds: int, fn, clock=time.perf_counter) -> tuple[float, object]:  # noqa: ANN001
    best, value = float("inf"), None
    for _ in range(rounds):
        sync(settings.device)
        started = clock()
        value = fn()
        sync(settings.device)
        best = min(best, clock() - started)
    return best, value


def fisher_floor(model: nn.Module, x: Tensor, y: Tensor, mask: Tensor, estimator: str, chunk: int,
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The per-sample Fisher of the MLP 784-256-256-10 on (x, y) as bare arithmetic: no hooks, no autograd.

    Per chunk: the forward pass (z = aWᵀ + b, ReLU; the head on the task's classes only), p over those
    classes, the output gradients δ of log p(c|x) for every class c the estimator weighs (``exact``:
    each of the task's classes, δ scaled by sqrt(p_c); ``empirical``: the true label; ``sampled``: a
    label drawn from p) backpropagated by two matmuls, their squares summed per layer, and once per
    chunk (Σ δ²)ᵀ(a²) for each weight and Σ δ² for each bias. (Stacking the classes into one matmul
    per layer measured slower here than this loop.)
    """
    layers = [*model.hidden, model.head]
    if len(layers) != 3 or not all(isinstance(m, nn.Linear) for m in layers):
        raise ValueError("the floor is written for the MLP 784-256-256-10")
    classes = mask.nonzero().flatten()
    (w1, b1), (w2, b2), (w3, b3) = [(m.weight.detach(), m.bias.detach()) for m in layers]
    w3, b3 = w3[classes], b3[classes]  # the other classes' rows get no gradient (p = 0 there)
    fisher = [[torch.zeros_like(w), torch.zeros_like(b)] for w, b in ((w1, b1), (w2, b2), (w3, b3))]
    n = len(y)
    for start in range(0, n, chunk):
        a0 = _float(x[start : start + chunk]).flatten(1)
        z1 = torch.addmm(b1, a0, w1.T)
        a1 = z1.relu()
        z2 = torch.addmm(b2, a1, w2.T)
        a2 = z2.relu()
        p = torch.softmax(torch.addmm(b3, a2, w3.T), dim=1)  # (B, task classes)
        active1, active2 = z1 > 0, z2 > 0
        if estimator == "exact":
            root = p.sqrt()
            seeds = []
            for k in range(len(classes)):  # δ = sqrt(p_k) (e_k − p)
                seed = -root[:, k : k + 1] * p
                seed[:, k] += root[:, k]
                seeds.append(seed)
        else:
            if estimator == "empirical":
                target = torch.searchsorted(classes, y[start : start + chunk])
            else:
                target = torch.multinomial(p, 1, generator=generator).squeeze(1)
            seed = -p
            seed[torch.arange(len(p), device=p.device), target] += 1
            seeds = [seed]
        squares: list[Tensor] = []
        for k, d3 in enumerate(seeds):
            d2 = (d3 @ w3) * active2
            d1 = (d2 @ w2) * active1
            if k == 0:
                squares = [d1.square(), d2.square(), d3.square()]
            else:
                for total, d in zip(squares, (d1, d2, d3)):
                    total.addcmul_(d, d)
        for (fw, fb), sq, a in zip(fisher, squares, (a0, a1, a2)):
            fw.addmm_(sq.T, a.square())
            fb.add_(sq.sum(0))
    head_w, head_b = torch.zeros_like(layers[2].weight), torch.zeros_like(layers[2].bias)
    head_w[classes], head_b[classes] = fisher[2]
    values = [*fisher[0], *fisher[1], head_w, head_b]
    return {name: f / n for (name, _), f in zip(model.named_parameters(), values)}


def run(settings: Settings) -> list[Row]:
    from sweep.strategies.fisher import MAX_CHUNK, fisher_diagonal, task_fisher

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

    # every per-sample estimator over the whole task, against its floor: rounds alternate the two sides,
    # timed on this thread's CPU time (bench.common.work_clock)
    whole_x, whole_y = split.split.x, split.split.y
    clock = work_clock(settings)
    clock_name = "thread CPU time" if clock is time.thread_time else "wall time"
    floors: dict[str, dict[str, float]] = {}
    for estimator in TIMED:
        def package(estimator: str = estimator) -> dict[str, Tensor]:
            return task_fisher(ctx, estimator)

        def bare(estimator: str = estimator) -> dict[str, Tensor]:
            return fisher_floor(model, whole_x, whole_y, mask, estimator, MAX_CHUNK, torch.Generator().manual_seed(0))

        package(), bare()  # warm-up: first-call allocations
        ours_rounds, floor_rounds = [], []
        for _ in range(rounds):
            seconds, got = _best_of(settings, 1, package, clock)
            ours_rounds.append(seconds)
            seconds, want = _best_of(settings, 1, bare, clock)
            floor_rounds.append(seconds)
        entry = {"ours_s": min(ours_rounds), "floor_s": min(floor_rounds), "ours_rounds_s": ours_rounds,
                 "floor_rounds_s": floor_rounds}
        if estimator in COMPARED:  # the floor computes the same numbers (sampled: other draws)
            entry["floor_relative_error"] = relative_errors(got, want)[0]
        floors[estimator] = entry
    common = {"device": settings.device, "threads": torch.get_num_threads(), "quick": settings.quick,
              "model": "mlp 784-256-256-10 after one epoch of task 1", "scenario": "task"}
    worst = max(e["relative_error"] for e in errors.values())
    rows = [
        Row("fisher_speed", f"exact per-sample Fisher of {n} samples", "s", speed["exact"]["ours_s"],
            speed["exact"]["reference_s"], speed["exact"]["ratio"], "reference / ours", ">=", TARGET_SPEEDUP,
            f">= {TARGET_SPEEDUP:g}x", details={**common, "samples": n, "per_estimator": speed,
                                               "reference": "torch.func vmap(grad(log p)), 128 samples at a time"}),
        Row("fisher_error", f"largest relative error against the vmap reference ({', '.join(COMPARED)})", "",
            worst, 0.0, worst, "max relative error", "<", TARGET_ERROR, f"< {TARGET_ERROR:g}",
            details={**common, "samples": n, "per_estimator": errors, "dtype": "float32"}),
    ]
    for estimator, entry in floors.items():
        rows.append(Row(
            f"fisher_{estimator}_vs_floor", f"{estimator} Fisher over the whole task-1 training split vs its floor",
            "s", entry["ours_s"], entry["floor_s"], entry["ours_s"] / entry["floor_s"], "ours / floor", "<=",
            TARGET_OVER_FLOOR, f"<= {TARGET_OVER_FLOOR:g}x",
            details={**common, **entry, "clock": clock_name, "samples": trained["samples"], "chunk": MAX_CHUNK,
                     "epoch_s": times["epoch"], "epoch_rounds_s": trained["rounds"]["epoch_s"],
                     # the landed target (under half an epoch), on the wall clock: exact does 5 backward passes
                     "exact_fisher_wall_s": times["fisher_exact_task"],
                     "exact_fisher_per_epoch": times["fisher_exact_task"] / times["epoch"],
                     "evaluation_s": times["evaluation"],
                     "floor": "bare matmuls on the MLP's weights, chunk by chunk; exact: one backward pass per class"}))
    return rows
