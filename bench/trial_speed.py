"""Trial speed: a 2-task Split-MNIST EWC trial through the package against the plain way.

Both sides: MLP 784-256-256-10 from the same seed (so the same initial weights), Adam 1e-3, one
epoch per task, batch 64, task-incremental, the batched Fisher (squared gradient of each batch's
mean loss) with the same λ, the same training/validation/test images, and the same evaluations
(validation and test of every task, before training and after each task). Both times include
reading the data, from the same uncompressed IDX files (torchvision reads no other). Rounds
alternate ours/reference and each side keeps its fastest round, so a burst of load from other
processes on a shared machine hits both sides alike.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from bench.common import Row, Settings, sync, torchvision_root
from bench.data import QUICK_SAMPLES, check_same_data, package_benchmark, task_indices
from bench.reference_plain import run_reference

EWC_LAMBDA = 1e5  # the batched Fisher is ~64x smaller than the per-sample one; 1e5 keeps task 1 (R[2,1] ~98%)
TARGET_SPEEDUP = 8.0
ACCURACY_POINTS = 1.0  # "must agree within about a point": final average test accuracy, in points


def _package_trial(settings: Settings, limit: int | None) -> tuple[dict, float, float]:
    from sweep.config import TrainConfig
    from sweep.data.idx import clear_idx_cache
    from sweep.train.trainer import run_config

    config = TrainConfig(benchmark="split-mnist", scenario="task", strategy="ewc", fisher="batched",
                         ewc_lambda=EWC_LAMBDA, epochs=1, batch_size=64, lr=1e-3, seed=0,
                         data_root=str(settings.data_root))
    clear_idx_cache()  # the package reads the files inside the timed region, as the reference does
    started = time.perf_counter()
    benchmark = package_benchmark(settings, limit)
    loaded = time.perf_counter() - started
    result = run_config(config, benchmark, device=settings.device)
    sync(settings.device)
    seconds = time.perf_counter() - started
    matrices = {"val": result.val, "test": result.test, "initial_val": result.initial_val,
                "initial_test": result.initial_test}
    return matrices, seconds, loaded


def compute_floor(indices: list[Any], device: str, batch_size: int = 64, eval_batch: int = 1000) -> float:
    """Seconds of the trial's bare arithmetic: no data handling, no masking, no EWC penalty, no checks.

    On ready-made float batches: every training step (forward, backward, fused Adam) of both tasks,
    the forward and backward of every batch of the one Fisher a 2-task EWC trial needs (after task
    1), and the forward of the three evaluations (before training, after each task). With torch's
    float32 kernels at batch 64 and this thread count, no implementation of the trial takes less,
    so reference / floor bounds the speed-up such an implementation can show on this machine.
    """
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.rand(batch_size, 784, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    xe = torch.rand(eval_batch, 784, device=device)
    steps = sum(-(-len(t.train) // batch_size) for t in indices)
    fisher_batches = -(-len(indices[0].train) // batch_size)
    evaluated = 3 * sum(len(t.val) + len(t.test) for t in indices)
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    params = list(model.parameters())
    for _ in range(fisher_batches):
        torch.autograd.grad(F.cross_entropy(model(x), y), params)
    with torch.no_grad():
        for _ in range(-(-evaluated // eval_batch)):
            model(xe)
    sync(device)
    return time.perf_counter() - started


def _acc(test: np.ndarray) -> float:
    return float(test[-1].mean())  # ACC: mean over tasks of R[T, i]


def _all_cores(settings: Settings, limit: int | None, root: Any, indices: Any) -> dict[str, Any] | None:
    """The same pair at torch's default thread count (every core): what a lone ``sweep train`` gets.

    The row itself is at ``--threads`` (1: what each trial of a sweep gets with ``--cpus-per-trial 1``).
    """
    cores = os.cpu_count() or 1
    if settings.quick or settings.device != "cpu" or cores <= settings.threads:
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        _, ours_s, _ = _package_trial(settings, limit)
        ref_s = run_reference(root, indices, ewc_lambda=EWC_LAMBDA, device=settings.device)["seconds"]
    finally:
        torch.set_num_threads(before)
    return {"threads": cores, "ours_s": ours_s, "reference_s": ref_s, "ratio": ref_s / ours_s}


def run(settings: Settings) -> list[Row]:
    limit = QUICK_SAMPLES if settings.quick else None
    indices = task_indices(settings, limit)
    same_data = check_same_data(settings, package_benchmark(settings, limit), indices)
    root = torchvision_root(settings)
    same_files = replace(settings, data_root=root)  # both sides parse the same uncompressed files
    ours_times, ref_times, loads, floors = [], [], [], []
    ours = ref = None
    for _ in range(1 if settings.quick else 2):
        floors.append(compute_floor(indices, settings.device))
        ours, seconds, loaded = _package_trial(same_files, limit)
        ours_times.append(seconds)
        loads.append(loaded)
        ref = run_reference(root, indices, ewc_lambda=EWC_LAMBDA, device=settings.device)
        ref_times.append(ref["seconds"])
    assert ours is not None and ref is not None
    ours_s, ref_s = min(ours_times), min(ref_times)
    all_cores = _all_cores(same_files, limit, root, indices)
    trained = np.tril(np.ones_like(ours["test"], dtype=bool))  # R[t, i], i <= t: the tasks trained so far
    entry_gap = float(np.abs(ours["test"] - ref["test"])[trained].max() * 100)
    acc_gap = abs(_acc(ours["test"]) - _acc(ref["test"])) * 100
    common = {"device": settings.device, "threads": torch.get_num_threads(), "quick": settings.quick,
              "train_samples_per_task": [len(t.train) for t in indices], "same_data": same_data}
    speed = Row(
        "trial_speed", "2-task Split-MNIST EWC trial, data loading included", "s", ours_s, ref_s, ref_s / ours_s,
        "reference / ours", ">=", TARGET_SPEEDUP, f">= {TARGET_SPEEDUP:g}x",
        details={**common, "ours_rounds_s": ours_times, "reference_rounds_s": ref_times,
                 "ours_data_loading_s": min(loads), "ours_in_sweep_s": ours_s - min(loads),
                 "ewc_lambda": EWC_LAMBDA, "fisher": "batched", "all_cores": all_cores,
                 "compute_floor_s": min(floors), "ours_over_floor": ours_s / min(floors),
                 "reference_over_floor": ref_s / min(floors)},
    )
    accuracy = Row(
        "trial_accuracy", "final average test accuracy (ACC) of the same trial", "%", _acc(ours["test"]) * 100,
        _acc(ref["test"]) * 100, acc_gap, "|difference|, points", "<", ACCURACY_POINTS, f"< {ACCURACY_POINTS:g} point",
        details={**common, "ours_test_R_percent": (ours["test"] * 100).round(2).tolist(),
                 "reference_test_R_percent": (ref["test"] * 100).round(2).tolist(),
                 "ours_val_R_percent": (ours["val"] * 100).round(2).tolist(),
                 "reference_val_R_percent": (ref["val"] * 100).round(2).tolist(),
                 "max_trained_entry_gap_points": entry_gap,
                 "same_initial_accuracies": bool(np.array_equal(ours["initial_test"], ref["initial_test"])
                                                 and np.array_equal(ours["initial_val"], ref["initial_val"]))},
    )
    return [speed, accuracy]
