"""User entry points: ``--benchmark mypkg.tasks:build`` and ``--model mypkg.models:build``.

A benchmark function returns the tasks, in order (at least two), each a mapping::

    {"name": "source", "train": (x, y), "test": (x, y), "val": (x, y), "classes": (0, 1, 2)}

``train`` and ``test`` are required; ``val`` is carved from ``train`` (per class, fixed seed) when
absent; ``name`` and ``classes`` default to ``task t`` and the labels present. A split is a pair
``(x, y)`` of tensors or numpy arrays, or a ``torch.utils.data.Dataset`` of ``(x, y)`` samples
(read once, at build time). ``x`` is (N, ...) — uint8 images in 0..255, or floats used as they
are; ``y`` holds integer class ids in one label space shared by every task (give disjoint ids to
tasks with different classes; the same ids when, as in domain-incremental form, every task has
the same classes). The function may declare ``data_root`` and ``scenario`` parameters to get them.

A model function is called with whichever of ``input_shape`` (C, H, W) and ``num_classes`` it
declares, and returns an ``nn.Module`` whose forward gives (batch, num_classes) logits. Its
layers, which ``frozen_layers`` and ``lr_decay`` count, are its ``layers()`` method if it has one,
else its top-level children that hold parameters (see :func:`sweep.models.named_layers`).

Modules are imported like ``python -m`` would: from ``sys.path``, and from the current folder.
Ray trials get the module's folder from the driver (:func:`import_paths`), so a module next to
the command line's folder imports in every trial without PYTHONPATH.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sweep.config import ENTRY_POINT
from sweep.errors import ConfigError, SweepError
from sweep.tasks import SCENARIOS, Benchmark, Split, Task

TASK_KEYS = ("name", "train", "val", "test", "classes")
DATASET_MAX_SAMPLES = 5_000_000  # a Dataset is read sample by sample once; beyond this, pass tensors


def is_entry_point(name: str) -> bool:
    return ":" in name


def _parse(spec: str, what: str) -> tuple[str, str]:
    if ENTRY_POINT.match(spec) is None:
        raise ConfigError(f"{what} {spec!r} is not module:function (e.g. mypkg.tasks:build)")
    module, _, function = spec.partition(":")
    return module, function


def _import(module_name: str, spec: str, what: str) -> Any:
    top = module_name.split(".")[0]
    for attempt in range(2):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            ours = err.name is not None and (module_name == err.name or module_name.startswith(err.name + "."))
            cwd = os.getcwd()
            if ours and attempt == 0 and cwd not in sys.path and "" not in sys.path:
                sys.path.insert(0, cwd)  # as `python -m` does: the current folder's modules import
                continue
            if ours:
                raise ConfigError(
                    f"{what} {spec!r}: module {err.name!r} not found (run from the folder that holds {top}, "
                    "or add that folder to PYTHONPATH)"
                ) from None
            raise ConfigError(f"{what} {spec!r}: importing {module_name} failed: {_first_line(err)}") from None
        except Exception as err:  # the user's module raised while importing: a SyntaxError, an ImportError
            raise ConfigError(f"{what} {spec!r}: importing {module_name} failed: {_first_line(err)}") from None
    raise AssertionError("unreachable")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def load_function(spec: str, what: str) -> Callable[..., Any]:
    """The function ``module:function`` names, imported; one-line ConfigError when it is not there."""
    module_name, function_name = _parse(spec, what)
    module = _import(module_name, spec, what)
    function = getattr(module, function_name, None)
    if function is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                        and getattr(v, "__module__", None) == module.__name__)
        raise ConfigError(f"{what} {spec!r}: module {module_name} has no function {function_name!r}"
                          + (f" (it has: {', '.join(public[:8])})" if public else ""))
    if not callable(function):
        raise ConfigError(f"{what} {spec!r}: {function_name} is a {type(function).__name__}, not a function")
    return function


def import_paths(*names: str) -> list[str]:
    """Folders to put on a Ray trial's ``sys.path`` so that each entry point among ``names`` imports there."""
    paths: list[str] = []
    for name in names:
        if not isinstance(name, str) or not is_entry_point(name) or ENTRY_POINT.match(name) is None:
            continue
        module_name = name.partition(":")[0]
        try:
            found = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.origin or not Path(found.origin).is_file():
            continue
        origin = Path(found.origin).resolve()
        base = origin.parent if origin.name == "__init__.py" else origin.with_suffix("")
        root = base.parents[len(module_name.split(".")) - 1]
        if str(root) not in paths:
            paths.append(str(root))
    return paths


def add_import_paths(paths: Sequence[str]) -> None:
    """In a trial: make the driver's entry-point modules importable (no-op for folders already there)."""
    for path in paths:
        if path not in sys.path:
            sys.path.insert(0, path)


def _call(function: Callable[..., Any], spec: str, what: str, **available: Any) -> Any:
    """Call with the keyword arguments of ``available`` that the function declares."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in available.items() if takes_all or k in parameters}
    try:
        return function(**kwargs)
    except SweepError:
        raise
    except Exception as err:
        raise SweepError(f"{what} {spec!r} raised {_first_line(err)}") from None


# --- models


def build_user_model(spec: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The user's model, wrapped so that it lists its layers, checked on a dummy batch."""
    from sweep.models import LayeredModel, Wrapped, named_layers

    function = load_function(spec, "model")
    net = _call(function, spec, "model", input_shape=tuple(input_shape), num_classes=num_classes)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model {spec!r} returned {type(net).__name__}, expected a torch.nn.Module")
    model = net if isinstance(net, LayeredModel) else Wrapped(net)
    if not named_layers(model):
        raise ConfigError(f"model {spec!r}: {type(net).__name__} has no parameters to train")
    was_training = model.training
    model.eval()  # a BatchNorm must not learn from the zeros
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as err:
        raise ConfigError(f"model {spec!r} fails on a batch of shape {[2, *input_shape]}: {_first_line(err)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, num_classes):
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"model {spec!r} outputs {shape} for a batch of 2; expected [2, {num_classes}] logits")
    return model


# --- benchmarks


def build_user_benchmark(
    spec: str,
    scenario: str,
    num_tasks: int | None,
    class_order: Sequence[int] | None,
    data_root: str | os.PathLike[str] | None,
    val_fraction: float,
    split_seed: int,
) -> Benchmark:
    """Call the user's benchmark function and turn its tasks into a :class:`Benchmark`."""
    from sweep.benchmarks import resolve_data_root

    if scenario not in SCENARIOS:
        raise SweepError(f"unknown scenario {scenario!r} (allowed: {', '.join(SCENARIOS)})")
    if class_order is not None:
        raise SweepError(f"class_order does not apply to benchmark {spec!r}: its function decides the tasks")
    function = load_function(spec, "benchmark")
    result = _call(function, spec, "benchmark", data_root=resolve_data_root(data_root), scenario=scenario)
    if isinstance(result, Benchmark):
        if result.scenario != scenario:
            raise SweepError(f"benchmark {spec!r} returned a {result.scenario}-incremental Benchmark; "
                             f"scenario is {scenario!r}")
        tasks = result.tasks
    else:
        if isinstance(result, Mapping) or not isinstance(result, Sequence) or isinstance(result, (str, bytes)):
            raise SweepError(f"benchmark {spec!r} returned {type(result).__name__}; expected a list of tasks, "
                             "each a dict with train and test splits")
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
    from sweep.benchmarks import _holdout_mask

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
        is_val = torch.from_numpy(_holdout_mask(train.y.numpy(), val_fraction, split_seed))
        train, val = Split(train.x[~is_val], train.y[~is_val]), Split(train.x[is_val], train.y[is_val])
    for split_name, split in (("train", train), ("val", val), ("test", test)):
        if len(split) == 0:
            raise SweepError(f"{where}: the {split_name} split is empty"
                             + (" (too few samples to carve a validation split: give 'val')"
                                if split_name == "val" else ""))
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
            raise SweepError(f"{where}: sample {i}'s x is not array-like ({_first_line(err)}); "
                             "add a transform such as torchvision's ToTensor()") from None
        ys.append(int(item[1]))
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    try:
        return torch.stack(xs), torch.tensor(ys, dtype=torch.long)
    except RuntimeError as err:
        raise SweepError(f"{where}: samples differ in shape ({_first_line(err)})") from None


def _inputs(x: Any, where: str) -> Tensor:
    try:
        tensor = x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as err:
        raise SweepError(f"{where}: x is not array-like ({_first_line(err)})") from None
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
        raise SweepError(f"{where}: y is not array-like ({_first_line(err)})") from None
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.is_complex():
        raise SweepError(f"{where}: y has dtype {tensor.dtype}; expected integer class ids")
    tensor = tensor.flatten() if tensor.ndim == 2 and tensor.shape[1] == 1 else tensor
    if tensor.ndim != 1 or len(tensor) != n:
        raise SweepError(f"{where}: y has shape {list(tensor.shape)}; expected ({n},), one label per sample")
    if n and int(tensor.min()) < 0:
        raise SweepError(f"{where}: y holds negative labels ({int(tensor.min())}); class ids start at 0")
    return tensor.to(torch.int64).contiguous()
