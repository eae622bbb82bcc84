"""The plain way: EWC on 2-task Split-MNIST as most tutorials write it. The trial-speed baseline.

torchvision's ``MNIST`` with a ``ToTensor`` transform (a PIL image per sample), ``Subset`` for a
task's digits, a ``DataLoader(batch_size=64, shuffle=True)``, the MLP 784-256-256-10, Adam, one
epoch per task, logits masked to the task's digits (task-incremental), and the Fisher as the
squared gradient of each batch's mean loss (what the package calls ``fisher="batched"``).

It does the same work as the package's trial: a fresh Adam per task, a Fisher after every task
but the last (no task follows it, so no penalty would use it; the package skips it too), and the
validation and test accuracy of every task before training and after each task. The
samples come in as indices (``bench.data``), so both sides train and evaluate on the same images.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from bench.data import TaskIndices


def run_reference(
    root: Path, tasks: list[TaskIndices], *, ewc_lambda: float, seed: int = 0, lr: float = 1e-3, epochs: int = 1,
    batch_size: int = 64, device: str = "cpu", eval_batch_size: int = 1000,
) -> dict:
    """Train and evaluate; returns the accuracy matrices (T, T) and the wall time, data loading included."""
    started = time.perf_counter()
    torch.manual_seed(seed)  # before the model: the same initial weights as the package's MLP
    transform = transforms.ToTensor()
    train_set = datasets.MNIST(root, train=True, transform=transform)
    test_set = datasets.MNIST(root, train=False, transform=transform)

    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    ).to(device)
    masks = []
    for task in tasks:
        mask = torch.zeros(10, dtype=torch.bool)
        mask[list(task.labels)] = True
        masks.append(mask.to(device))

    def masked(logits, mask):
        return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)

    def evaluate(dataset, indices, mask):
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in DataLoader(Subset(dataset, indices), batch_size=eval_batch_size):
                x, y = x.to(device), y.to(device)
                correct += (masked(model(x), mask).argmax(1) == y).sum().item()
        model.train()
        return correct / len(indices)

    def evaluate_all():
        val = [evaluate(train_set, task.val, masks[t]) for t, task in enumerate(tasks)]
        test = [evaluate(test_set, task.test, masks[t]) for t, task in enumerate(tasks)]
        return val, test

    T = len(tasks)
    val, test = np.full((T, T), np.nan), np.full((T, T), np.nan)
    initial_val, initial_test = evaluate_all()
    fishers, anchors = [], []
    for t, task in enumerate(tasks):
        loader = DataLoader(Subset(train_set, task.train), batch_size=batch_size, shuffle=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(epochs):
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(masked(model(x), masks[t]), y)
                for fisher, anchor in zip(fishers, anchors):
                    for name, p in model.named_parameters():
                        loss = loss + ewc_lambda / 2 * (fisher[name] * (p - anchor[name]) ** 2).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        if t < T - 1:  # the Fisher: the squared gradient of each batch's mean loss, averaged over the task's batches
            fisher = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                model.zero_grad()
                F.cross_entropy(masked(model(x), masks[t]), y).backward()
                for name, p in model.named_parameters():
                    fisher[name] += p.grad.detach() ** 2
            fishers.append({name: f / len(loader) for name, f in fisher.items()})
            anchors.append({name: p.detach().clone() for name, p in model.named_parameters()})
        val[t], test[t] = evaluate_all()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return {"val": val, "test": test, "initial_val": np.array(initial_val), "initial_test": np.array(initial_test),
            "seconds": time.perf_counter() - started}
