"""Benchmarks: task sequences built from MNIST-like data, CIFAR-10 or scikit-learn's 8x8 digits.

Every task keeps its own ``uint8`` copy of its images, shape (N, C, H, W), with int64 targets
already remapped for the scenario (:mod:`sweep.data.plans` says how). Each entry of
:data:`BENCHMARKS` plans its tasks from ``num_tasks`` and ``class_order``; the datasets are read by
:mod:`sweep.data.readers` (from a data root in torchvision's layout, downloaded when missing and
online, or offline for the digits).

Validation is carved per class from the training data with a fixed seed (``split_seed``) over the
whole training set, so a given image is in validation or not regardless of ``num_tasks``,
``class_order`` or scenario. A ``module:function`` name builds a user's tasks instead
(:mod:`sweep.data.user`).
"""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from sweep import hparams
from sweep.data.holdout import check_holdout, holdout_mask, resolve_data_root
from sweep.data.idx import read_idx
from sweep.data.plans import TaskPlan, build_task, plan_fashion_mnist, plan_mnist_fashion, plan_permuted, plan_split
from sweep.data.readers import load_dataset
from sweep.data.tasks import Benchmark, Split, Task
from sweep.errors import ConfigError, SweepError, did_you_mean

__all__ = ["BENCHMARKS", "BenchmarkSpec", "build_benchmark", "read_idx", "resolve_data_root", "seed_class_order",
           "shuffle_classes"]


@dataclass(frozen=True)
class BenchmarkSpec:
    """One entry of :data:`BENCHMARKS`."""

    name: str
    description: str
    datasets: tuple[str, ...]  # what it reads; IDX datasets come from the data root, "digits" is offline
    default_num_tasks: int
    class_split: bool  # tasks are chunks of a class order, so class_order applies
    natural_scenario: str  # the scenario it is usually reported in; build_benchmark's default stays "task"
    plan: Callable[[int, tuple[int, ...] | None], tuple[TaskPlan, ...]]  # (num_tasks, class_order) -> tasks


# explicit registry; tests run over every entry
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "split-digits": BenchmarkSpec(
        name="split-digits",
        description="scikit-learn's 8x8 digits split by class; offline, for quick starts and tests",
        datasets=("digits",),
        default_num_tasks=2,
        class_split=True,
        natural_scenario="class",
        plan=functools.partial(plan_split, "split-digits", "digits", "digits"),
    ),
    "split-mnist": BenchmarkSpec(
        name="split-mnist",
        description="MNIST split by class (T=2: 0-4 then 5-9; T=5: pairs)",
        datasets=("mnist",),
        default_num_tasks=2,
        class_split=True,
        natural_scenario="class",
        plan=functools.partial(plan_split, "split-mnist", "mnist", "digits"),
    ),
    "permuted-mnist": BenchmarkSpec(
        name="permuted-mnist",
        description="MNIST, then MNIST under T-1 fixed pixel permutations",
        datasets=("mnist",),
        default_num_tasks=2,
        class_split=False,
        natural_scenario="domain",
        plan=plan_permuted,
    ),
    "mnist-fashion": BenchmarkSpec(
        name="mnist-fashion",
        description="MNIST, then Fashion-MNIST (domain: one shared 10-way head)",
        datasets=("mnist", "fashion"),
        default_num_tasks=2,
        class_split=False,
        natural_scenario="domain",
        plan=plan_mnist_fashion,
    ),
    "fashion-mnist": BenchmarkSpec(
        name="fashion-mnist",
        description="Fashion-MNIST, then MNIST: mnist-fashion's source and target swapped",
        datasets=("fashion", "mnist"),
        default_num_tasks=2,
        class_split=False,
        natural_scenario="domain",
        plan=plan_fashion_mnist,
    ),
    "split-cifar10": BenchmarkSpec(
        name="split-cifar10",
        description="CIFAR-10 split by class (T=2: 0-4 then 5-9; T=5: pairs), 3x32x32 images",
        datasets=("cifar10",),
        default_num_tasks=2,
        class_split=True,
        natural_scenario="class",
        plan=functools.partial(plan_split, "split-cifar10", "cifar10", "classes"),
    ),
    "split-fashion": BenchmarkSpec(
        name="split-fashion",
        description="Fashion-MNIST split by class (T=2: 0-4 then 5-9)",
        datasets=("fashion",),
        default_num_tasks=2,
        class_split=True,
        natural_scenario="class",
        plan=functools.partial(plan_split, "split-fashion", "fashion", "fashion"),
    ),
}


def build_benchmark(
    name: str,
    scenario: str = "task",
    num_tasks: int | None = None,
    class_order: Sequence[int] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> Benchmark:
    """Build a benchmark's tasks as in-memory tensors on the CPU.

    Args:
        name: a key of :data:`BENCHMARKS`.
        scenario: "class", "task" or "domain" (see :mod:`sweep.data.plans` for the targets).
        num_tasks: number of tasks; None = the benchmark's default (2 for all).
        class_order: split benchmarks only: a permutation of 0..9; task t takes its t-th chunk.
        data_root: folder holding ``MNIST/raw`` and ``FashionMNIST/raw``; see :func:`resolve_data_root`.
        val_fraction: fraction of each class's training images held out for validation, in (0, 1).
        split_seed: seed of the validation split (not of the pixel permutations).

    Raises:
        SweepError: a bad name, scenario, num_tasks, class_order or val_fraction.
        DataError: data files missing (and not downloadable) or malformed.
    """
    scenario = hparams.check("scenario", scenario)  # the config's own check
    if isinstance(name, str) and ":" in name:  # a user's module:function
        from sweep.data.user import build_user_benchmark

        return build_user_benchmark(name, scenario, num_tasks, class_order, data_root,
                                    _check_val_fraction(val_fraction),
                                    _check_int("split_seed", split_seed, minimum=0, maximum=2**32 - 1))
    spec = _lookup(name)
    val_fraction = _check_val_fraction(val_fraction)
    split_seed = _check_int("split_seed", split_seed, minimum=0, maximum=2**32 - 1)  # RandomState's range
    num_tasks = spec.default_num_tasks if num_tasks is None else _check_int("num_tasks", num_tasks)
    plans = _plan(spec, num_tasks, class_order)  # checks num_tasks and class_order before any data is read

    root = resolve_data_root(data_root) if any(d != "digits" for d in spec.datasets) else None
    arrays = {dataset: load_dataset(dataset, root) for dataset in spec.datasets}
    for dataset, a in arrays.items():
        check_holdout(a.train_y, val_fraction, f"the {dataset} training data of {name}")
    is_val = {dataset: holdout_mask(a.train_y, val_fraction, split_seed) for dataset, a in arrays.items()}
    tasks = tuple(build_task(plan, arrays[plan.dataset], is_val[plan.dataset], scenario) for plan in plans)
    info: dict[str, object] = {
        "class_order": [label for plan in plans for label in plan.labels] if spec.class_split else None,
        "data_root": None if root is None else str(root),
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "num_tasks": num_tasks,
        "task_labels": [list(plan.labels) for plan in plans],  # original labels per task
        "permutation_seeds": [plan.permutation_seed for plan in plans],
    }
    return Benchmark(name=name, scenario=scenario, tasks=tasks, num_classes=_num_classes(scenario, plans, tasks),
                     input_shape=tuple(tasks[0].train.x.shape[1:]), info=info)


def seed_class_order(num_classes: int, seed: int) -> tuple[int, ...]:
    """The order in which a seed's tasks take the classes under ``class_shuffle: per-seed``.

    As van de Ven & Tolias's code (``data.py``, ``get_multitask_experiment``): a permutation p of the
    labels is drawn, label y becomes p[y], and task k takes the permuted labels 2k, 2k+1, ...; task k's
    original labels are then ``argsort(p)[2k:2k+2]``. Drawn from ``RandomState(seed)``, a stream of its own:
    the paper's draw for the same seed (``np.random.seed(seed)`` then the permutation), but for its seed 0,
    which it keeps in natural order.
    """
    permutation = np.random.RandomState(seed).permutation(num_classes)
    return tuple(int(label) for label in np.argsort(permutation))


def check_class_split(name: str) -> BenchmarkSpec:
    """The spec of benchmark ``name``, whose tasks must be a split of its classes for ``class_shuffle per-seed``.

    Raises:
        ConfigError: they are not (or no such benchmark), naming the benchmarks where they are.
    """
    spec = BENCHMARKS.get(name)
    if spec is None or not spec.class_split:
        allowed = ", ".join(n for n, s in BENCHMARKS.items() if s.class_split)
        raise ConfigError(f"class_shuffle per-seed does not apply to benchmark {name}: its tasks are not a split of "
                          f"its classes (class_shuffle per-seed is for {allowed})")
    return spec


def shuffle_classes(benchmark: Benchmark, seed: int) -> Benchmark:
    """``benchmark``, a split benchmark, with its classes dealt to the tasks in the order
    :func:`seed_class_order` draws for ``seed``; no file is read again. The same benchmark when it is
    already dealt for ``seed``.

    Each image keeps its split (the validation hold-out is per image, whatever the order) and each task
    is ``build_benchmark(..., class_order=order)``'s, tensor for tensor: the same images, targets and
    classes, in the dataset's own order (``Split.rows``), so that a seed's run is the run of that class order.

    Raises:
        ConfigError: the benchmark's tasks are not a split of its classes.
    """
    spec = check_class_split(benchmark.name)
    if benchmark.info.get("class_shuffle_seed") == seed:
        return benchmark
    dealt = [list(labels) for labels in benchmark.info["task_labels"]]  # type: ignore[attr-defined]
    order = seed_class_order(sum(len(labels) for labels in dealt), seed)
    plans = spec.plan(benchmark.num_tasks, order)
    tasks = tuple(_dealt_task(benchmark, dealt, plan.name, plan.labels) for plan in plans)
    info = {**benchmark.info, "class_order": list(order), "task_labels": [list(plan.labels) for plan in plans],
            "class_shuffle_seed": int(seed)}
    return replace(benchmark, tasks=tasks, info=info)


def _dealt_task(benchmark: Benchmark, dealt: list[list[int]], name: str, labels: tuple[int, ...]) -> Task:
    """The task of original ``labels`` gathered from ``benchmark``'s tasks, which hold the original labels
    ``dealt`` (split benchmarks: a target is the label itself, or its position in its task's labels in
    domain-incremental form)."""
    domain = benchmark.scenario == "domain"
    target = {label: (position if domain else label) for position, label in enumerate(labels)}

    def gather(which: str) -> Split:
        xs, ys, rows = [], [], []
        for label in labels:
            t = next(i for i, task_labels in enumerate(dealt) if label in task_labels)
            split: Split = getattr(benchmark.tasks[t], which)
            assert split.rows is not None, "a built-in benchmark's splits know their dataset rows"
            at = torch.nonzero(split.y == (dealt[t].index(label) if domain else label)).flatten()
            xs.append(split.x[at])
            ys.append(torch.full((len(at),), target[label], dtype=split.y.dtype, device=split.y.device))
            rows.append(split.rows[at.to(split.rows.device)])
        order = torch.argsort(torch.cat(rows))  # the dataset's order, as a build with this class order has it
        return Split(torch.cat(xs)[order.to(xs[0].device)], torch.cat(ys)[order.to(ys[0].device)],
                     torch.cat(rows)[order])

    classes = tuple(target[label] for label in labels)
    return Task(name=name, classes=classes, train=gather("train"), val=gather("val"), test=gather("test"))


def _plan(spec: BenchmarkSpec, num_tasks: int, class_order: Sequence[int] | None) -> tuple[TaskPlan, ...]:
    """The benchmark's tasks for ``num_tasks`` and ``class_order``, both checked."""
    order = _check_class_order(class_order)
    if order is not None and not spec.class_split:
        allowed = ", ".join(n for n, s in BENCHMARKS.items() if s.class_split)
        raise SweepError(
            f"class_order {list(order)} does not apply to {spec.name}: every task has all classes "
            f"(class_order is for {allowed})"
        )
    return spec.plan(num_tasks, order)


def _num_classes(scenario: str, plans: Sequence[TaskPlan], tasks: Sequence[Task]) -> int:
    """The head's size: the largest task in domain-incremental form, else every global id."""
    if scenario == "domain":
        return max(len(plan.labels) for plan in plans)
    global_ids = {c for task in tasks for c in task.classes}
    assert global_ids == set(range(len(global_ids))), "global ids must be 0..num_classes-1"
    return len(global_ids)


# ---------------------------------------------------------------------------------------------
# argument checks (once, at the edge)


def _lookup(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise SweepError(f"unknown benchmark {name!r} (allowed: {', '.join(BENCHMARKS)})"
                         f"{did_you_mean(name, BENCHMARKS)}")
    return BENCHMARKS[name]


def _check_int(what: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool) within the bounds given; ranges specific to a benchmark are its plan's."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SweepError(f"{what} must be an integer, got {value!r}")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise SweepError(f"{what}={value} is out of range (allowed: integers {minimum}..{maximum})")
    return number


def _check_val_fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise SweepError(f"val_fraction={value!r} is out of range (allowed: 0 < val_fraction < 1)")
    return float(value)


def _check_class_order(class_order: Sequence[int] | None) -> tuple[int, ...] | None:
    if class_order is None:
        return None
    try:
        items = tuple(class_order) if not isinstance(class_order, (str, bytes)) else None
    except TypeError:
        items = None
    if items is None or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in items):
        raise SweepError(f"class_order {class_order!r} must be a sequence of integer class labels")
    return tuple(int(c) for c in items)
