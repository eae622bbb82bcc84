"""A user's tasks: ``--benchmark mypkg.tasks:build`` (see :mod:`sweep.data.entry_points` for the format)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sweep.data.entry_points import call_function, first_line, load_function
from sweep.data.holdout import check_holdout, holdout_mask, resolve_data_root
from sweep.data.tasks import Benchmark, Split, Task
from sweep.errors import SweepError

TASK_KEYS = ("name", "train", "val", "test", "classes")
DATASET_MAX_SAMPLES = 5_000_000  # a Dataset is read sample by sample once; beyond this, pass tensors



def build_user_benchmark(
    spec: str,
    scenario: str,
    num_tasks: int | None,
    class_order: Sequence[int] | None,
    data_root: str | os.PathLike[str] | None,
    val_fraction: float,
    split_seed: int,
) -> Benchmark:
    """Call the user's benchmark function and turn its tasks into a :class:`Benchmark` (``scenario``
    already checked by ``build_benchmark``)."""
    if class_order is not None:
        raise SweepError(f"class_order does not apply to benchmark {spec!r}: its function decides the tasks")
    function = load_function(spec, "benchmark")
    result = call_function(function, spec, "benchmark", data_root=resolve_data_root(data_root), scenario=scenario)
    if isinstance(result, Benchmark):
        if result.scenario != scenario:
            raise SweepError(f"benchmark {spec!r} returned a {result.scenario}-incremental Benchmark; "
                             f"scenario is {scenario!r}")
        tasks = result.tasks
        for t, task in enumerate(tasks):
            _check_splits(f"benchmark {spec!r}, task {t + 1}", task.train, task.val, task.test)
    else:
        if isinstance(result, Mapping) or not isinstance(result, Sequence) or isinstance(result, (str, bytes)):
            raise SweepError(f"benchmark {spec!r} returned {type(result).__name__}; expected a list of tasks, "
                             "each a dict with train and test splits")
        if len(result) < 2:  # before any task is checked: the count is the first thing wrong
            raise SweepError(f"benchmark {spec!r} returned {len(result)} task(s); forgetting needs at least 2")
        tasks = tuple(_task(spec, t, raw, val_fraction, split_seed) for t, raw in enumerate(result))
    if len(tasks) < 2:
        raise SweepError(f"benchmark {spec!r} returned {len(tasks)} task(s); forgetting needs at least 2")
    if num_tasks is not None and num_tasks != len(tasks):
        raise SweepError(f"num_tasks={num_tasks} but benchmark {spec!r} returns {len(tasks)} tasks")
    shapes = {tuple(task.train.x.shape[1:]) for task in tasks}
    if len(shapes) != 1:
        raise SweepError(f"benchmark {spec!r}: tasks have different input shapes {sorted(shapes)}; one model "
                         "needs one shape")
    if isinstance(result, Benchmark):
        return result
    num_classes = max(c for task in tasks for c in task.classes) + 1
    digest = hashlib.sha256()
    for task in tasks:
        for split in (task.train, task.val, task.test):
            for tensor in (split.x, split.y):
                digest.update(tensor.contiguous().numpy().tobytes())
    return Benchmark(
        name=spec,
        scenario=scenario,
        tasks=tasks,
        num_classes=num_classes,
        input_shape=shapes.pop(),
        info={"entry_point": spec, "task_names": [task.name for task in tasks], "val_fraction": val_fraction,
              "split_seed": split_seed, "num_tasks": len(tasks), "data_sha256": digest.hexdigest()},
    )


def _task(spec: str, t: int, raw: Any, val_fraction: float, split_seed: int) -> Task:
    where = f"benchmark {spec!r}, task {t + 1}"
    if not isinstance(raw, Mapping):
        raise SweepError(f"{where} is {type(raw).__name__}; expected a dict with keys {', '.join(TASK_KEYS)}")
    unknown = [k for k in raw if k not in TASK_KEYS]
    if unknown:
        raise SweepError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(TASK_KEYS)}")
    for key in ("train", "test"):
        if raw.get(key) is None:
            raise SweepError(f"{where} has no {key!r} split")
    name = str(raw.get("name") or f"task {t + 1}")
    train = _split(raw["train"], f"{where} train")
    test = _split(raw["test"], f"{where} test")
    if raw.get("val") is not None:
        val = _split(raw["val"], f"{where} val")
    else:  # carved per class with a fixed seed, as the built-in benchmarks do
        if len(train):
            check_holdout(train.y.numpy(), val_fraction, f"the training data of {where}")
        is_val = torch.from_numpy(holdout_mask(train.y.numpy(), val_fraction, split_seed))
        train, val = Split(train.x[~is_val], train.y[~is_val]), Split(train.x[is_val], train.y[is_val])
    _check_splits(where, train, val, test)
    shapes = {tuple(s.x.shape[1:]) for s in (train, val, test)}
    if len(shapes) != 1:
        raise SweepError(f"{where}: train, val and test have different sample shapes {sorted(shapes)}")
    present = sorted({int(c) for s in (train, val, test) for c in s.y.unique().tolist()})
    if raw.get("classes") is None:
        classes = tuple(present)
    else:
        given = raw["classes"]
        if isinstance(given, (str, bytes)) or not isinstance(given, Sequence) or not all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in given
        ):
            raise SweepError(f"{where}: classes must be a list of class ids >= 0, got {given!r}")
        classes = tuple(int(c) for c in given)
        outside = sorted(set(present) - set(classes))
        if outside:
            raise SweepError(f"{where}: labels {outside[:5]} are not among its classes {list(classes)}")
    return Task(name, classes, train, val, test)


def _check_splits(where: str, train: Split, val: Split, test: Split) -> None:
    """Refuse a task with an empty split: no training data, nothing to validate or test on."""
    for split_name, split in (("train", train), ("val", val), ("test", test)):
        if len(split) == 0:
            raise SweepError(f"{where}: the {split_name} split is empty"
                             + (" (no training data: a task must have samples to learn from)"
                                if split_name == "train" else "")
                             + (" (too few samples to carve a validation split: give 'val')"
                                if split_name == "val" else ""))


def _split(raw: Any, where: str) -> Split:
    if isinstance(raw, torch.utils.data.TensorDataset) and len(raw.tensors) == 2:
        x, y = raw.tensors
    elif isinstance(raw, torch.utils.data.Dataset) or (hasattr(raw, "__getitem__") and hasattr(raw, "__len__")
                                                        and not isinstance(raw, (tuple, list))):
        x, y = _read_dataset(raw, where)
    elif isinstance(raw, (tuple, list)) and len(raw) == 2:
        x, y = raw
    else:
        raise SweepError(f"{where} is {type(raw).__name__}; expected (x, y) tensors or arrays, or a torch Dataset")
    inputs = _inputs(x, where)
    return Split(inputs, _labels(y, where, len(inputs)))


def _read_dataset(dataset: Any, where: str) -> tuple[Tensor, Tensor]:
    n = len(dataset)
    if n > DATASET_MAX_SAMPLES:
        raise SweepError(f"{where}: a Dataset of {n} samples is read one by one; pass (x, y) tensors instead")
    xs, ys = [], []
    for i in range(n):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise SweepError(f"{where}: sample {i} is {type(item).__name__}; expected an (x, y) pair")
        try:
            xs.append(torch.as_tensor(np.asarray(item[0]) if not isinstance(item[0], Tensor) else item[0]))
        except (TypeError, ValueError, RuntimeError) as err:
            raise SweepError(f"{where}: sample {i}'s x is not array-like ({first_line(err)}); "
                             "add a transform such as torchvision's ToTensor()") from None
        ys.append(int(item[1]))
    if not xs:  # no sample: an empty split, named as such by the task's check
        return torch.empty(0, 1), torch.empty(0, dtype=torch.long)
    try:
        return torch.stack(xs), torch.tensor(ys, dtype=torch.long)
    except RuntimeError as err:
        raise SweepError(f"{where}: samples differ in shape ({first_line(err)})") from None


def _inputs(x: Any, where: str) -> Tensor:
    try:
        tensor = x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as err:
        raise SweepError(f"{where}: x is not array-like ({first_line(err)})") from None
    if tensor.ndim < 2:
        raise SweepError(f"{where}: x has shape {list(tensor.shape)}; expected (N, ...) with one row per sample")
    if tensor.dtype == torch.uint8:
        return tensor.contiguous()  # images in 0..255: kept 4x smaller, scaled per batch
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise SweepError(f"{where}: x has dtype {tensor.dtype}; expected uint8 images or numbers")
    return tensor.to(torch.float32).contiguous()  # the models run in float32


def _labels(y: Any, where: str, n: int) -> Tensor:
    try:
        tensor = y.detach().cpu() if isinstance(y, Tensor) else torch.as_tensor(np.asarray(y))
    except (TypeError, ValueError, RuntimeError) as err:
        raise SweepError(f"{where}: y is not array-like ({first_line(err)})") from None
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.is_complex():
        raise SweepError(f"{where}: y has dtype {tensor.dtype}; expected integer class ids")
    tensor = tensor.flatten() if tensor.ndim == 2 and tensor.shape[1] == 1 else tensor
    if tensor.ndim != 1 or len(tensor) != n:
        raise SweepError(f"{where}: y has shape {list(tensor.shape)}; expected ({n},), one label per sample")
    if n and int(tensor.min()) < 0:
        raise SweepError(f"{where}: y holds negative labels ({int(tensor.min())}); class ids start at 0")
    return tensor.to(torch.int64).contiguous()
