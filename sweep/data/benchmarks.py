"""Benchmarks: task sequences built from MNIST-like data, CIFAR-10 or scikit-learn's 8x8 digits.

Every task keeps its own ``uint8`` copy of its images, shape (N, 1, H, W), with int64 targets
already remapped for the scenario (see :mod:`sweep.data.tasks`):

- class- and task-incremental: target = the *global* class id; one head over all global ids;
  ``Task.classes`` = the task's global ids (the logit mask in task-incremental).
- domain-incremental: target = the *local* id (position of the class in its task's class list);
  head = the largest number of classes in a task; ``Task.classes`` = ``(0, ..., k-1)``.

In both cases ``Task.classes[j]`` is the target of the task's j-th class. Global ids: the
original label for split benchmarks, ``10 * (t - 1) + digit`` for permuted-mnist and
``10 * dataset_index + label`` for mnist-fashion.

Validation is carved per class from the training data with a fixed seed (``split_seed``) over the
whole training set, so a given image is in validation or not regardless of ``num_tasks``,
``class_order`` or scenario. MNIST and Fashion-MNIST are read from a data root in torchvision's
raw layout (``<root>/MNIST/raw/train-images-idx3-ubyte[.gz]``), downloaded with torchvision when
missing and online, and never replaced by anything else. CIFAR-10 is read from torchvision's
``<root>/cifar-10-batches-py/`` (unpickled with numpy arrays as the only allowed objects).
A ``module:function`` name builds a user's tasks instead (:mod:`sweep.data.user`).
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
import os
import pickle
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sweep import hparams
from sweep.data.holdout import DATA_ROOT_ENV, holdout_mask, resolve_data_root
from sweep.data.idx import read_idx
from sweep.data.tasks import Benchmark, Split, Task
from sweep.errors import DataError, SweepError

__all__ = ["BENCHMARKS", "BenchmarkSpec", "build_benchmark", "read_idx", "resolve_data_root"]

DOWNLOAD_TIMEOUT_S = 5.0  # per socket operation: offline, an unanswered connect would hang for minutes

CLASSES = tuple(range(10))  # every dataset here has labels 0..9
SPLIT_NUM_TASKS = tuple(t for t in range(2, len(CLASSES) + 1) if len(CLASSES) % t == 0)  # (2, 5, 10)
DIGITS_TEST_FRACTION = 0.2  # load_digits ships no test split; 80/20 stratified, seed 0, as in most papers
DIGITS_TEST_SEED = 0

# torchvision's file names in <root>/<folder>/raw/, plain or .gz
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_FOLDERS = {"mnist": "MNIST", "fashion": "FashionMNIST"}  # dataset key -> folder under the data root
IMAGE_SIZE = (28, 28)  # MNIST and Fashion-MNIST
CIFAR10_FOLDER = "cifar-10-batches-py"  # torchvision's layout: <root>/cifar-10-batches-py/data_batch_1..5, test_batch
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"


@dataclass(frozen=True)
class TaskPlan:
    """What one task is made of, before any data is read."""

    name: str  # e.g. "digits 0-4"
    dataset: str  # "digits", "mnist", "fashion" or "cifar10"
    labels: tuple[int, ...]  # original labels, in the order that defines local ids
    global_offset: int  # global id = global_offset + original label
    permutation_seed: int | None = None  # pixel permutation of permuted-mnist; None = identity


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


@dataclass(frozen=True)
class _Arrays:
    """A dataset as read: images (N, H, W) uint8, labels (N,) int64; shared, read-only."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


# ---------------------------------------------------------------------------------------------
# task plans


def _label_text(labels: Sequence[int]) -> str:
    """(0, 1, 2, 3, 4) -> "0-4"; (3, 7) -> "3,7"."""
    if len(labels) > 2 and list(labels) == list(range(labels[0], labels[0] + len(labels))):
        return f"{labels[0]}-{labels[-1]}"
    return ",".join(str(label) for label in labels)


def _plan_split(
    benchmark: str, dataset: str, word: str, num_tasks: int, class_order: tuple[int, ...] | None
) -> tuple[TaskPlan, ...]:
    if num_tasks not in SPLIT_NUM_TASKS:
        allowed = ", ".join(map(str, SPLIT_NUM_TASKS))
        raise SweepError(
            f"num_tasks={num_tasks} is not allowed for {benchmark}: it must split its {len(CLASSES)} classes "
            f"evenly into at least 2 tasks (allowed: {allowed})"
        )
    order = CLASSES if class_order is None else class_order
    if sorted(order) != list(CLASSES):
        raise SweepError(
            f"class_order {list(order)} is not a permutation of the classes {CLASSES[0]}..{CLASSES[-1]} "
            f"of {benchmark} (each class exactly once)"
        )
    size = len(CLASSES) // num_tasks
    chunks = [tuple(order[i : i + size]) for i in range(0, len(order), size)]
    return tuple(TaskPlan(f"{word} {_label_text(c)}", dataset, c, global_offset=0) for c in chunks)


def _plan_permuted(num_tasks: int, class_order: tuple[int, ...] | None) -> tuple[TaskPlan, ...]:
    if num_tasks < 2:
        raise SweepError(f"num_tasks={num_tasks} is not allowed for permuted-mnist (allowed: integers >= 2)")
    # task 1 is plain MNIST; task t > 1 is seeded from t alone, so every trial sees the same tasks
    return tuple(
        TaskPlan(
            f"permutation {t}",
            "mnist",
            CLASSES,
            global_offset=len(CLASSES) * (t - 1),
            permutation_seed=None if t == 1 else t,
        )
        for t in range(1, num_tasks + 1)
    )


def _plan_mnist_fashion(num_tasks: int, class_order: tuple[int, ...] | None) -> tuple[TaskPlan, ...]:
    if num_tasks != 2:
        raise SweepError(f"num_tasks={num_tasks} is not allowed for mnist-fashion (allowed: 2)")
    return (
        TaskPlan("mnist", "mnist", CLASSES, global_offset=0),
        TaskPlan("fashion-mnist", "fashion", CLASSES, global_offset=len(CLASSES)),
    )


def _plan_fashion_mnist(num_tasks: int, class_order: tuple[int, ...] | None) -> tuple[TaskPlan, ...]:
    if num_tasks != 2:
        raise SweepError(f"num_tasks={num_tasks} is not allowed for fashion-mnist (allowed: 2)")
    return (
        TaskPlan("fashion-mnist", "fashion", CLASSES, global_offset=0),
        TaskPlan("mnist", "mnist", CLASSES, global_offset=len(CLASSES)),
    )


# explicit registry; tests run over every entry
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "split-digits": BenchmarkSpec(
        name="split-digits",
        description="scikit-learn's 8x8 digits split by class; offline, for quick starts and tests",
        datasets=("digits",),
        default_num_tasks=2,
        class_split=True,
        natural_scenario="class",
        plan=functools.partial(_plan_split, "split-digits", "digits", "digits"),
    ),
    "split-mnist": BenchmarkSpec(
        name="split-mnist",
        description="MNIST split by class (T=2: 0-4 then 5-9; T=5: pairs)",
        datasets=("mnist",),
        default_num_tasks=2,
        class_split=True,
        natural_scenario="class",
        plan=functools.partial(_plan_split, "split-mnist", "mnist", "digits"),
    ),
    "permuted-mnist": BenchmarkSpec(
        name="permuted-mnist",
        description="MNIST, then MNIST under T-1 fixed pixel permutations",
        datasets=("mnist",),
        default_num_tasks=2,
        class_split=False,
        natural_scenario="domain",
        plan=_plan_permuted,
    ),
    "mnist-fashion": BenchmarkSpec(
        name="mnist-fashion",
        description="MNIST, then Fashion-MNIST (domain: one shared 10-way head)",
        datasets=("mnist", "fashion"),
        default_num_tasks=2,
        class_split=False,
        natural_scenario="domain",
        plan=_plan_mnist_fashion,
    ),
    "fashion-mnist": BenchmarkSpec(
        name="fashion-mnist",
        description="Fashion-MNIST, then MNIST: mnist-fashion's source and target swapped",
        datasets=("fashion", "mnist"),
        default_num_tasks=2,
        class_split=False,
        natural_scenario="domain",
        plan=_plan_fashion_mnist,
    ),
    "split-cifar10": BenchmarkSpec(
        name="split-cifar10",
        description="CIFAR-10 split by class (T=2: 0-4 then 5-9; T=5: pairs), 3x32x32 images",
        datasets=("cifar10",),
        default_num_tasks=2,
        class_split=True,
        natural_scenario="class",
        plan=functools.partial(_plan_split, "split-cifar10", "cifar10", "classes"),
    ),
    "split-fashion": BenchmarkSpec(
        name="split-fashion",
        description="Fashion-MNIST split by class (T=2: 0-4 then 5-9)",
        datasets=("fashion",),
        default_num_tasks=2,
        class_split=True,
        natural_scenario="class",
        plan=functools.partial(_plan_split, "split-fashion", "fashion", "fashion"),
    ),
}


# ---------------------------------------------------------------------------------------------
# public entry points


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
        scenario: "class", "task" or "domain" (see the module docstring for the targets).
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
    order = _check_class_order(class_order)
    if order is not None and not spec.class_split:
        allowed = ", ".join(n for n, s in BENCHMARKS.items() if s.class_split)
        raise SweepError(
            f"class_order {list(order)} does not apply to {name}: every task has all classes "
            f"(class_order is for {allowed})"
        )
    plans = spec.plan(num_tasks, order)  # validates num_tasks and class_order before any data is read

    root = resolve_data_root(data_root) if any(d != "digits" for d in spec.datasets) else None
    arrays = {dataset: _load_dataset(dataset, root) for dataset in spec.datasets}
    is_val = {dataset: holdout_mask(a.train_y, val_fraction, split_seed) for dataset, a in arrays.items()}
    tasks = tuple(_build_task(plan, arrays[plan.dataset], is_val[plan.dataset], scenario) for plan in plans)

    if scenario == "domain":
        num_classes = max(len(plan.labels) for plan in plans)
    else:
        global_ids = {c for task in tasks for c in task.classes}
        num_classes = len(global_ids)
        assert global_ids == set(range(num_classes)), "global ids must be 0..num_classes-1"
    return Benchmark(
        name=name,
        scenario=scenario,
        tasks=tasks,
        num_classes=num_classes,
        input_shape=tuple(tasks[0].train.x.shape[1:]),
        info={
            "class_order": [label for plan in plans for label in plan.labels] if spec.class_split else None,
            "data_root": None if root is None else str(root),
            "val_fraction": val_fraction,
            "split_seed": split_seed,
            "num_tasks": num_tasks,
            "task_labels": [list(plan.labels) for plan in plans],  # original labels per task
            "permutation_seeds": [plan.permutation_seed for plan in plans],
        },
    )


# ---------------------------------------------------------------------------------------------
# argument checks (once, at the edge)


def _lookup(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise SweepError(f"unknown benchmark {name!r} (allowed: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


def _check_int(what: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool) within the bounds given; ranges specific to a benchmark are its plan's."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SweepError(f"{what} must be an integer, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise SweepError(f"{what}={value} is out of range (allowed: integers {minimum}..{maximum})")
    return int(value)


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


# ---------------------------------------------------------------------------------------------
# building tasks


def _pixel_permutation(seed: int, num_pixels: int) -> np.ndarray:
    return np.random.RandomState(seed).permutation(num_pixels)  # frozen stream: same tasks everywhere


def _build_task(plan: TaskPlan, arrays: _Arrays, is_val: np.ndarray, scenario: str) -> Task:
    # original label -> target for this task and scenario; -1 = not in the task
    lookup = np.full(max(CLASSES) + 1, -1, dtype=np.int64)
    for position, label in enumerate(plan.labels):
        lookup[label] = position if scenario == "domain" else plan.global_offset + label
    classes = tuple(int(lookup[label]) for label in plan.labels)
    in_task_train = np.isin(arrays.train_y, plan.labels)
    in_task_test = np.isin(arrays.test_y, plan.labels)
    num_pixels = math.prod(arrays.train_x.shape[1:])
    pixels = None if plan.permutation_seed is None else _pixel_permutation(plan.permutation_seed, num_pixels)

    def split(x: np.ndarray, y: np.ndarray, keep: np.ndarray) -> Split:
        rows = np.flatnonzero(keep)
        flat = x.reshape(len(x), -1)
        images = flat[rows] if pixels is None else flat[np.ix_(rows, pixels)]  # one copy, this task's own
        images = images.reshape(len(rows), *((1, *x.shape[1:]) if x.ndim == 3 else x.shape[1:]))  # (N, C, H, W)
        return Split(torch.from_numpy(images), torch.from_numpy(lookup[y[rows]]))

    return Task(
        name=plan.name,
        classes=classes,
        train=split(arrays.train_x, arrays.train_y, in_task_train & ~is_val),
        val=split(arrays.train_x, arrays.train_y, in_task_train & is_val),
        test=split(arrays.test_x, arrays.test_y, in_task_test),
    )


# ---------------------------------------------------------------------------------------------
# reading data


def _load_dataset(dataset: str, root: Path | None) -> _Arrays:
    if dataset == "digits":
        return _load_digits()
    assert root is not None
    if dataset == "cifar10":
        return _load_cifar10(root)
    return _load_idx_dataset(root, IDX_FOLDERS[dataset])


@functools.lru_cache(maxsize=1)
def _load_digits() -> _Arrays:
    """load_digits as uint8 (N, 8, 8) in 0..255, split 80/20 per class with a fixed seed."""
    from sklearn.datasets import load_digits  # optional dependency, imported where used

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    labels = digits.target.astype(np.int64)
    is_test = holdout_mask(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    arrays = _Arrays(images[~is_test], labels[~is_test], images[is_test], labels[is_test])
    for array in (arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y):
        array.flags.writeable = False  # cached and shared
    return arrays


def _load_cifar10(root: Path) -> _Arrays:
    """CIFAR-10 from torchvision's python batches: images (N, 3, 32, 32) uint8, labels int64."""
    folder = root / CIFAR10_FOLDER
    names = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    if not all((folder / n).is_file() for n in names):
        reason = _download_cifar10(root)
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DataError(
                f"CIFAR-10 data not found: missing {', '.join(missing)} in {folder}/ and the download failed "
                f"({reason}). Put torchvision's {CIFAR10_FOLDER} folder (cifar-10-python.tar.gz, extracted) under "
                f"the data root, or point --data-root or {DATA_ROOT_ENV} at a folder that holds it."
            )
    train = [_read_cifar_batch(folder / n) for n in CIFAR10_TRAIN_FILES]
    test_x, test_y = _read_cifar_batch(folder / CIFAR10_TEST_FILE)
    return _Arrays(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test_x, test_y)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's batch dicts and nothing else: only numpy's array reconstruction is callable."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return getattr(importlib.import_module(module), name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = _ArraysOnly(handle, encoding="latin1").load()
        images = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {str(err)[:120]})") from None
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(images) != len(labels):
        raise DataError(f"{path}: expected data (N, 3072) with N labels, found {images.shape} and {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > max(CLASSES)):
        raise DataError(f"{path}: labels out of range {CLASSES[0]}..{CLASSES[-1]}")
    return images.reshape(-1, 3, 32, 32), labels


def _download_cifar10(root: Path) -> str | None:
    """Try torchvision's downloader into a scratch folder, then move the batches in. Returns why it failed."""
    try:
        import torchvision.datasets  # optional dependency, imported where used
    except ImportError as err:
        return f"torchvision is not installed: {err}"
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with tempfile.TemporaryDirectory(prefix="sweep-download-") as scratch:
            try:
                torchvision.datasets.CIFAR10(scratch, train=True, download=True)
            except Exception as err:  # noqa: BLE001 - any failure here means "not downloadable"
                lines = [line.strip() for line in str(err).splitlines() if line.strip()]
                return (lines[-1] if lines else type(err).__name__)[:200]
            target = root / CIFAR10_FOLDER
            try:
                target.mkdir(parents=True, exist_ok=True)
                for name in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE):
                    if not (target / name).exists():
                        partial = target / f".{name}.{os.getpid()}.partial"  # pid: parallel trials may race
                        try:
                            shutil.copyfile(Path(scratch) / CIFAR10_FOLDER / name, partial)
                            os.replace(partial, target / name)
                        finally:
                            partial.unlink(missing_ok=True)
            except OSError as err:
                return f"downloaded but could not write into {target}: {err.strerror or err}"
            return None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _find_files(raw_dir: Path) -> dict[str, Path | None]:
    """Each IDX file's path in raw_dir, the uncompressed one when both exist (faster to read)."""
    found: dict[str, Path | None] = {}
    for key, base in IDX_FILES.items():
        candidates = [raw_dir / base, raw_dir / f"{base}.gz"]
        found[key] = next((path for path in candidates if path.is_file()), None)
    return found


def _load_idx_dataset(root: Path, folder: str) -> _Arrays:
    raw_dir = root / folder / "raw"
    found = _find_files(raw_dir)
    if any(path is None for path in found.values()):
        reason = _download(folder, raw_dir)
        found = _find_files(raw_dir)
        missing = [IDX_FILES[key] for key, path in found.items() if path is None]
        if missing:
            raise DataError(
                f"{folder} data not found: missing {', '.join(missing)} (plain or .gz) in {raw_dir}/ "
                f"and the download failed ({reason}). Put the files there, or point --data-root or "
                f"{DATA_ROOT_ENV} at a folder that holds {folder}/raw/; split-digits needs no download "
                "and runs offline."
            )
    paths = {key: path for key, path in found.items() if path is not None}
    train_x, test_x = (_read_images(paths[key]) for key in ("train_images", "test_images"))
    train_y, test_y = (_read_labels(paths[key]) for key in ("train_labels", "test_labels"))
    for images, labels, kind in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if len(images) != len(labels):
            raise DataError(
                f"{folder} {kind} files disagree: {paths[f'{kind}_images']} holds {len(images)} images "
                f"but {paths[f'{kind}_labels']} holds {len(labels)} labels"
            )
    return _Arrays(train_x, train_y, test_x, test_y)


def _read_images(path: Path) -> np.ndarray:
    images = read_idx(path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SIZE:
        raise DataError(
            f"{path}: expected uint8 images of shape (N, {IMAGE_SIZE[0]}, {IMAGE_SIZE[1]}), "
            f"found {images.dtype} of shape {images.shape}"
        )
    return images


def _read_labels(path: Path) -> np.ndarray:
    labels = read_idx(path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(
            f"{path}: expected uint8 labels of shape (N,), found {labels.dtype} of shape {labels.shape}"
        )
    if len(labels) and int(labels.max()) > max(CLASSES):
        bad = sorted({int(v) for v in labels[labels > max(CLASSES)]})[:5]
        raise DataError(f"{path}: labels out of range {CLASSES[0]}..{CLASSES[-1]} (found {bad})")
    return labels.astype(np.int64)


def _download(folder: str, raw_dir: Path) -> str | None:
    """Try torchvision's downloader; files reach raw_dir only when it succeeds. Returns why it failed."""
    try:
        import torchvision.datasets  # optional dependency, imported where used
    except ImportError as err:
        return f"torchvision is not installed: {err}"
    dataset_cls = getattr(torchvision.datasets, folder)  # the folder is the class name: MNIST, FashionMNIST
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # a scratch folder: torchvision creates folders and may leave partial files behind on failure
        with tempfile.TemporaryDirectory(prefix="sweep-download-") as scratch:
            try:
                dataset_cls(scratch, train=True, download=True)
            except Exception as err:  # noqa: BLE001 - any failure here means "not downloadable"
                lines = [line.strip() for line in str(err).splitlines() if line.strip()]
                return (lines[-1] if lines else type(err).__name__)[:200]
            return _install_files(Path(scratch) / folder / "raw", raw_dir)
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _install_files(source: Path, raw_dir: Path) -> str | None:
    """Copy downloaded files that raw_dir lacks, each atomically (temporary name, then rename)."""
    names = [n for base in IDX_FILES.values() for n in (base, f"{base}.gz") if (source / n).is_file()]
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            if (raw_dir / name).exists():
                continue
            partial = raw_dir / f".{name}.{os.getpid()}.partial"  # pid: parallel trials may race here
            try:
                shutil.copyfile(source / name, partial)
                os.replace(partial, raw_dir / name)
            finally:
                partial.unlink(missing_ok=True)
    except OSError as err:
        return f"downloaded but could not write into {raw_dir}: {err.strerror or err}"
    return None
