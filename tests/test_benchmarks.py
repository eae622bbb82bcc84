"""Benchmarks: the contract over every registered benchmark, split semantics, and data errors.

MNIST tests read the real data from ``$SWEEP_DATA_ROOT`` (default ``/work/shared/data``) and
are skipped only when that folder does not exist. Error tests write small IDX files to tmp_path.
"""

from __future__ import annotations

import gzip
import os
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from sweep.data import readers
from sweep.data.benchmarks import BENCHMARKS, build_benchmark, read_idx, resolve_data_root
from sweep.data.tasks import SCENARIOS, Benchmark
from sweep.errors import DataError, SweepError

SHARED_DATA = Path("/work/shared/data")  # read-only copy of MNIST and Fashion-MNIST on the dev machine
MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
MNIST_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
IDX_NAMES = tuple(
    f"{split}-{kind}-ubyte" for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")
)


@pytest.fixture
def data_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real data root; sets SWEEP_DATA_ROOT when absent, skips only if the folder does not exist."""
    root = Path(os.environ.get("SWEEP_DATA_ROOT") or SHARED_DATA)
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"no MNIST data under {root}")
    monkeypatch.setenv("SWEEP_DATA_ROOT", str(root))
    return root


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """No download attempt (deterministic on- or offline); yields the folders that were asked for."""
    asked: list[str] = []

    def no_download(folder: str, raw_dir: Path) -> str:
        asked.append(folder)
        return "offline (test)"

    monkeypatch.setattr(readers, "_download", no_download)
    yield asked


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> Path:
    """Write ``array`` as an IDX file (gzipped if the name ends in .gz)."""
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(array).astype(array.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def make_fake_root(
    root: Path, folder: str = "MNIST", n_train: int = 50, n_test: int = 20, gz: bool = False
) -> Path:
    """A small, valid dataset in torchvision's raw layout; image i is filled with value i."""
    raw = root / folder / "raw"
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8))
    return root


def rows(x: torch.Tensor) -> list[bytes]:
    return [row.tobytes() for row in x.reshape(len(x), -1).numpy()]


def check_contract(bench: Benchmark) -> None:
    """What the trainer relies on, for any benchmark and scenario."""
    assert bench.scenario in SCENARIOS and bench.num_tasks >= 2
    assert bench.info["num_tasks"] == bench.num_tasks
    assert {"class_order", "data_root", "val_fraction", "split_seed", "num_tasks"} <= set(bench.info)
    for task in bench.tasks:
        assert len(task.classes) == len(set(task.classes)) > 0
        assert all(0 <= c < bench.num_classes for c in task.classes)
        if bench.scenario == "domain":
            assert task.classes == tuple(range(len(task.classes)))
        for split in (task.train, task.val, task.test):
            assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
            assert split.x.shape == (len(split), *bench.input_shape) and split.y.shape == (len(split),)
            assert len(split) > 0
            assert set(split.y.unique().tolist()) == set(task.classes)  # every class in every split
    masks = bench.task_masks()
    assert (masks is None) == (bench.scenario != "task")
    if masks is not None:
        assert masks.sum(1).tolist() == [len(task.classes) for task in bench.tasks]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_meets_the_contract(name: str, scenario: str, request: pytest.FixtureRequest) -> None:
    spec = BENCHMARKS[name]
    if spec.datasets != ("digits",):
        root = request.getfixturevalue("data_root")
        if "cifar10" in spec.datasets and not (root / "cifar-10-batches-py").is_dir():
            pytest.skip(f"CIFAR-10 not under {root} (tests/test_user_models.py covers its reader on fake files)")
    bench = build_benchmark(name, scenario)
    check_contract(bench)
    assert bench.name == name and bench.num_tasks == spec.default_num_tasks
    assert spec.natural_scenario in SCENARIOS


def test_registry_names() -> None:
    expected = {"split-digits", "split-mnist", "permuted-mnist", "mnist-fashion", "fashion-mnist", "split-fashion",
                "split-cifar10"}
    assert set(BENCHMARKS) == expected
    assert all(spec.name == name for name, spec in BENCHMARKS.items())


# --- split-digits (offline) -------------------------------------------------------------------


def test_split_digits_scenarios_map_targets() -> None:
    by_scenario = {s: build_benchmark("split-digits", s) for s in SCENARIOS}
    cls, task, dom = by_scenario["class"], by_scenario["task"], by_scenario["domain"]
    assert cls.input_shape == (1, 8, 8)
    assert (cls.num_classes, task.num_classes, dom.num_classes) == (10, 10, 5)
    assert [t.classes for t in cls.tasks] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert [t.classes for t in task.tasks] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert [t.classes for t in dom.tasks] == [(0, 1, 2, 3, 4)] * 2
    assert task.task_masks().tolist() == [[True] * 5 + [False] * 5, [False] * 5 + [True] * 5]
    for t in range(2):
        for split in ("train", "val", "test"):
            a, b, c = (getattr(bench.tasks[t], split) for bench in (cls, task, dom))
            assert torch.equal(a.x, b.x) and torch.equal(a.x, c.x)  # same images in every scenario
            assert torch.equal(a.y, b.y) and torch.equal(c.y, a.y - 5 * t)  # global ids vs local ids
            assert a.y.min() >= 5 * t and a.y.max() <= 5 * t + 4


def test_split_digits_is_all_of_load_digits_scaled_and_partitioned() -> None:
    from sklearn.datasets import load_digits

    expected = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    bench = build_benchmark("split-digits", "class")
    splits = [getattr(task, s) for task in bench.tasks for s in ("train", "val", "test")]
    assert sorted(r for split in splits for r in rows(split.x)) == sorted(rows(torch.from_numpy(expected)))
    assert max(int(split.x.max()) for split in splits) == 255
    test_size = sum(len(task.test) for task in bench.tasks)
    assert abs(test_size - 0.2 * len(expected)) < 10  # fixed 80/20 split, stratified
    for task in bench.tasks:  # load_digits has no duplicate images, so rows identify samples
        train, val, test = (set(rows(s.x)) for s in (task.train, task.val, task.test))
        assert not (train & val) and not (train & test) and not (val & test)
        assert abs(len(val) / (len(train) + len(val)) - 0.1) < 0.02


def test_split_digits_reads_load_digits_file_without_importing_scikit_learn(monkeypatch) -> None:
    """The digits come from scikit-learn's own file, parsed as load_digits parses it (pixels and labels), without
    the 4 s import in every process that trains on them; without the file, through load_digits itself."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    digits = load_digits()
    expected = np.column_stack([digits.data, digits.target])
    assert np.array_equal(readers._digits_table(), expected)
    monkeypatch.setattr(readers.importlib.util, "find_spec", lambda name: None)  # the file moved
    assert np.array_equal(readers._digits_table(), expected)
    code = ("import sys; from sweep.data.benchmarks import build_benchmark; build_benchmark('split-digits', 'class'); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_split_digits_is_deterministic_and_split_seed_moves_only_validation() -> None:
    a, b = build_benchmark("split-digits", "class"), build_benchmark("split-digits", "class")
    c = build_benchmark("split-digits", "class", split_seed=1)
    for ta, tb, tc in zip(a.tasks, b.tasks, c.tasks):
        for s in ("train", "val", "test"):
            sa, sb = getattr(ta, s), getattr(tb, s)
            assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
        assert torch.equal(ta.test.x, tc.test.x)
        assert set(rows(ta.val.x)) != set(rows(tc.val.x))
        assert set(rows(ta.train.x)) | set(rows(ta.val.x)) == set(rows(tc.train.x)) | set(rows(tc.val.x))


def test_split_digits_val_fraction_and_task_counts() -> None:
    bench = build_benchmark("split-digits", "task", num_tasks=5, val_fraction=0.3)
    assert [t.classes for t in bench.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    for task in bench.tasks:
        assert abs(len(task.val) / (len(task.train) + len(task.val)) - 0.3) < 0.02
    ten = build_benchmark("split-digits", "domain", num_tasks=10)
    assert ten.num_tasks == 10 and ten.num_classes == 1 and all(t.classes == (0,) for t in ten.tasks)


def test_class_order_is_honoured() -> None:
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    cls = build_benchmark("split-digits", "class", num_tasks=5, class_order=order)
    dom = build_benchmark("split-digits", "domain", num_tasks=5, class_order=order)
    plain = build_benchmark("split-digits", "class", num_tasks=5)
    assert [t.classes for t in cls.tasks] == [(9, 8), (7, 6), (5, 4), (3, 2), (1, 0)]
    assert cls.tasks[0].name == "digits 9,8" and cls.info["class_order"] == order
    assert cls.num_classes == 10 and dom.num_classes == 2
    first = cls.tasks[0].train
    assert set(first.y.tolist()) == {8, 9}  # global id = original label
    assert torch.equal(dom.tasks[0].train.y, (first.y == 8).long())  # local id = position in the chunk
    same_classes = plain.tasks[4]  # digits 8, 9 without the order: the same images
    assert sorted(rows(same_classes.train.x)) == sorted(rows(first.x))


# --- real MNIST / Fashion-MNIST -----------------------------------------------------------------


def test_split_mnist_sizes(data_root: Path) -> None:
    two = build_benchmark("split-mnist", "class")  # data root from SWEEP_DATA_ROOT
    assert two.info["data_root"] == str(data_root.resolve())
    assert [t.classes for t in two.tasks] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert len(two.tasks[0].train) + len(two.tasks[0].val) == 30596 == sum(MNIST_TRAIN_COUNTS[:5])
    assert len(two.tasks[1].train) + len(two.tasks[1].val) == sum(MNIST_TRAIN_COUNTS[5:])
    assert [len(t.test) for t in two.tasks] == [sum(MNIST_TEST_COUNTS[:5]), sum(MNIST_TEST_COUNTS[5:])]
    expected_val = sum(round(0.1 * n) for n in MNIST_TRAIN_COUNTS[:5])
    assert len(two.tasks[0].val) == expected_val
    assert torch.bincount(two.tasks[1].test.y, minlength=10).tolist() == [0] * 5 + list(MNIST_TEST_COUNTS[5:])

    five = build_benchmark("split-mnist", "domain", num_tasks=5, data_root=data_root)
    assert [t.classes for t in five.tasks] == [(0, 1)] * 5 and five.num_classes == 2
    assert five.info["task_labels"] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    for t, task in enumerate(five.tasks):
        assert len(task.train) + len(task.val) == sum(MNIST_TRAIN_COUNTS[2 * t : 2 * t + 2])
        assert len(task.test) == sum(MNIST_TEST_COUNTS[2 * t : 2 * t + 2])
    # validation does not depend on how classes are grouped into tasks
    assert set(rows(five.tasks[0].val.x)) <= set(rows(two.tasks[0].val.x))


def test_permuted_mnist(data_root: Path) -> None:
    bench = build_benchmark("permuted-mnist", "class", num_tasks=3)
    assert bench.num_classes == 30 and [t.classes[0] for t in bench.tasks] == [0, 10, 20]
    test_images = read_idx(data_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz")
    test_labels = read_idx(data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz")
    first, second, third = (task.test for task in bench.tasks)
    assert torch.equal(first.x, torch.from_numpy(test_images.copy()).unsqueeze(1))  # task 1 is plain MNIST
    assert torch.equal(first.y, torch.from_numpy(test_labels.astype(np.int64)))
    assert torch.equal(second.y, first.y + 10) and torch.equal(third.y, first.y + 20)
    pixels = [x.reshape(len(x), -1).numpy() for x in (first.x, second.x, third.x)]
    # one fixed permutation of the columns (pixels) for the whole task: same multiset of pixel columns
    columns = [Counter(p.T[j].tobytes() for j in range(p.shape[1])) for p in pixels]
    assert columns[0] == columns[1] == columns[2]
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[1], pixels[2])
    # permutations come from the task index alone, not from split_seed or the scenario
    other = build_benchmark("permuted-mnist", "domain", num_tasks=3, split_seed=5)
    assert other.num_classes == 10 and torch.equal(other.tasks[2].test.x, third.x)
    assert torch.equal(other.tasks[2].test.y, first.y)


def test_mnist_fashion_domain_has_one_shared_head(data_root: Path) -> None:
    bench = build_benchmark("mnist-fashion", "domain")
    assert bench.num_classes == 10 and [t.classes for t in bench.tasks] == [tuple(range(10))] * 2
    fashion = read_idx(data_root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(bench.tasks[1].test.x, torch.from_numpy(fashion.copy()).unsqueeze(1))
    cls = build_benchmark("mnist-fashion", "class")
    assert cls.num_classes == 20 and cls.tasks[1].classes == tuple(range(10, 20))
    assert torch.equal(cls.tasks[1].test.y, bench.tasks[1].test.y + 10)


def test_read_idx_caches_and_reads_plain_and_gz_alike(data_root: Path, tmp_path: Path) -> None:
    gz = data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    assert read_idx(gz) is read_idx(gz)  # parsed once per process
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    labels = read_idx(plain)
    assert labels.shape == (10000,) and labels.dtype == np.uint8 and np.array_equal(labels, read_idx(gz))
    assert not labels.flags.writeable
    plain.write_bytes(plain.read_bytes()[:8] + bytes(10000))  # replaced file: read again
    os.utime(plain, ns=(1, 1))
    assert not read_idx(plain).any()


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"name": "split-cifar"}, ["split-cifar", "split-digits", "permuted-mnist", "mnist-fashion"]),
        ({"name": "split-mnist", "scenario": "instance"}, ["instance", "class", "task", "domain"]),
        ({"name": "split-mnist", "num_tasks": 3}, ["num_tasks=3", "split-mnist", "2, 5, 10"]),
        ({"name": "split-fashion", "num_tasks": 1}, ["num_tasks=1", "2, 5, 10"]),
        ({"name": "permuted-mnist", "num_tasks": 1}, ["num_tasks=1", ">= 2"]),
        ({"name": "mnist-fashion", "num_tasks": 3}, ["num_tasks=3", "mnist-fashion"]),
        ({"name": "split-mnist", "num_tasks": 2.0}, ["num_tasks", "2.0"]),
        ({"name": "split-mnist", "class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]}, ["class_order", "8, 8"]),
        ({"name": "split-mnist", "class_order": [0, 1, 2]}, ["class_order", "[0, 1, 2]"]),
        ({"name": "split-digits", "class_order": list(range(1, 11))}, ["class_order", "10"]),
        ({"name": "split-digits", "class_order": "0123456789"}, ["class_order", "0123456789"]),
        ({"name": "permuted-mnist", "class_order": list(range(10))}, ["class_order", "permuted-mnist"]),
        ({"name": "mnist-fashion", "class_order": list(range(10))}, ["class_order", "mnist-fashion"]),
        ({"name": "split-mnist", "val_fraction": 0.0}, ["val_fraction=0.0", "0 < val_fraction < 1"]),
        ({"name": "split-mnist", "val_fraction": 1.0}, ["val_fraction=1.0"]),
        ({"name": "split-mnist", "val_fraction": float("nan")}, ["val_fraction=nan"]),
        ({"name": "split-mnist", "split_seed": -1}, ["split_seed=-1", "0..4294967295"]),
        ({"name": "split-mnist", "split_seed": 2**32}, ["split_seed=4294967296", "0..4294967295"]),
        ({"name": "split-mnist", "class_order": 5}, ["class_order 5"]),
        ({"name": "split-mnist", "num_tasks": 0}, ["num_tasks=0", "2, 5, 10"]),
    ],
)
def test_bad_arguments_are_one_line_errors_before_any_data_is_read(
    kwargs: dict[str, object], needles: list[str], tmp_path: Path, offline: list[str]
) -> None:
    with pytest.raises(SweepError) as info:
        build_benchmark(**{"data_root": tmp_path / "empty", **kwargs})  # type: ignore[arg-type]
    message = str(info.value)
    assert not isinstance(info.value, DataError) and not offline  # rejected before looking for data
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_missing_files_message(tmp_path: Path, offline: list[str]) -> None:
    with pytest.raises(DataError) as info:
        build_benchmark("split-mnist", data_root=tmp_path)
    message = str(info.value)
    assert "\n" not in message and offline == ["MNIST"]
    folder = str(tmp_path / "MNIST" / "raw")
    for needle in (*IDX_NAMES, folder, "--data-root", "SWEEP_DATA_ROOT", "split-digits"):
        assert needle in message
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_missing_files_message_names_only_the_missing_ones(tmp_path: Path, offline: list[str]) -> None:
    make_fake_root(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte ") as info:
        build_benchmark("split-mnist", data_root=tmp_path)
    assert "train-images" not in str(info.value)


def test_mnist_fashion_needs_both_folders(tmp_path: Path, offline: list[str]) -> None:
    make_fake_root(tmp_path, "MNIST")
    with pytest.raises(DataError, match="FashionMNIST"):
        build_benchmark("mnist-fashion", "domain", data_root=tmp_path)
    assert offline == ["FashionMNIST"]


@pytest.mark.parametrize("gz", [False, True])
def test_fake_root_builds_in_every_scenario(tmp_path: Path, offline: list[str], gz: bool) -> None:
    make_fake_root(tmp_path, gz=gz)
    for scenario in SCENARIOS:
        bench = build_benchmark("split-mnist", scenario, data_root=tmp_path, val_fraction=0.2)
        check_contract(bench)
        task = bench.tasks[1]  # images of the fake data carry their index: label = index % 10
        assert len(task.train) + len(task.val) == 25 and len(task.val) == 5 and len(task.test) == 10
        labels = task.train.x[:, 0, 0, 0].long() % 10
        assert torch.equal(task.train.y, labels if scenario != "domain" else labels - 5)


def test_uncompressed_file_is_preferred_over_gz(tmp_path: Path, offline: list[str]) -> None:
    make_fake_root(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    assert build_benchmark("split-mnist", data_root=tmp_path).num_tasks == 2


def corrupt_copy(tmp_path: Path, name: str, data: bytes) -> Path:
    """A fake MNIST root whose file ``name`` holds ``data``."""
    make_fake_root(tmp_path)
    path = tmp_path / "MNIST" / "raw" / name
    path.write_bytes(data)
    return path


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes() + array.tobytes()


GOOD_IMAGES = idx_bytes(np.zeros((50, 28, 28), np.uint8))  # matches make_fake_root's 50 training labels


@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        ("train-images-idx3-ubyte", GOOD_IMAGES[:-100], "truncated"),
        ("train-images-idx3-ubyte", GOOD_IMAGES + b"x", "unexpected bytes"),
        ("train-images-idx3-ubyte", b"\x00\x00", "not an IDX file"),
        ("train-images-idx3-ubyte", b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        ("train-images-idx3-ubyte", b"\x12\x34" + GOOD_IMAGES[2:], "magic"),
        ("train-images-idx3-ubyte", b"\x00\x00\x07\x03" + GOOD_IMAGES[4:], "dtype"),
        ("train-images-idx3-ubyte", idx_bytes(np.zeros((50, 20, 20), np.uint8)), "(50, 20, 20)"),
        ("train-images-idx3-ubyte", idx_bytes(np.zeros((50, 784), np.uint8)), "(50, 784)"),
        ("train-images-idx3-ubyte", idx_bytes(np.zeros((50, 28, 28), ">i4"), code=0x0C), "int32"),
        ("train-labels-idx1-ubyte", idx_bytes(np.zeros(49, np.uint8)), "49 labels"),
        ("train-labels-idx1-ubyte", idx_bytes(np.full(50, 12, np.uint8)), "out of range"),
        ("train-labels-idx1-ubyte", idx_bytes(np.zeros((50, 1), np.uint8)), "(50, 1)"),
    ],
)
def test_malformed_idx_is_a_one_line_data_error(
    tmp_path: Path, offline: list[str], name: str, data: bytes, needle: str
) -> None:
    corrupt_copy(tmp_path, name, data)
    with pytest.raises(DataError) as info:
        build_benchmark("split-mnist", data_root=tmp_path)
    message = str(info.value)
    assert "\n" not in message and needle in message and name in message


def test_truncated_copies_of_real_files(data_root: Path, tmp_path: Path) -> None:
    gz = data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress(gz.read_bytes())[:5000])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: truncated.*\(10000,\)"):
        read_idx(plain)
    cut_gz = tmp_path / "t10k-labels-idx1-ubyte.gz"
    cut_gz.write_bytes(gz.read_bytes()[:2000])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(cut_gz)
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "absent-idx1-ubyte")


# --- download ------------------------------------------------------------------------------------


class _FakeTorchvisionMNIST:
    """Stands in for torchvision.datasets.MNIST: ``succeed`` writes a small valid dataset."""

    succeed = False
    timeouts: list[float | None] = []

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        type(self).timeouts.append(socket.getdefaulttimeout())
        if not type(self).succeed:
            partial = Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
            partial.parent.mkdir(parents=True)
            partial.write_bytes(b"\x1f\x8b partial")
            raise RuntimeError("Error downloading x.gz:\nTried x, got:\n<urlopen error boom>\n")
        make_fake_root(Path(root), gz=True)


@pytest.mark.parametrize("succeed", [False, True])
def test_download_writes_only_complete_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, succeed: bool
) -> None:
    import torchvision.datasets

    monkeypatch.setattr(_FakeTorchvisionMNIST, "succeed", succeed)
    monkeypatch.setattr(_FakeTorchvisionMNIST, "timeouts", [])
    monkeypatch.setattr(torchvision.datasets, "MNIST", _FakeTorchvisionMNIST)
    before = socket.getdefaulttimeout()
    if succeed:
        bench = build_benchmark("split-mnist", data_root=tmp_path)
        assert bench.num_tasks == 2
        installed = sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir())
        assert installed == sorted(f"{n}.gz" for n in IDX_NAMES)
    else:
        with pytest.raises(DataError, match="download failed \\(<urlopen error boom>\\)"):
            build_benchmark("split-mnist", data_root=tmp_path)
        assert list(tmp_path.iterdir()) == []  # no folders, no partial files
    assert _FakeTorchvisionMNIST.timeouts == [readers.DOWNLOAD_TIMEOUT_S]
    assert socket.getdefaulttimeout() == before


def test_resolve_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SWEEP_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root(None) == tmp_path.resolve() / "data"
    monkeypatch.setenv("SWEEP_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path.resolve() / "env"
    assert resolve_data_root(tmp_path / "explicit") == tmp_path.resolve() / "explicit"
    assert resolve_data_root("rel") == tmp_path.resolve() / "rel"
