"""The built-in datasets as arrays: MNIST and Fashion-MNIST (IDX), CIFAR-10, scikit-learn's 8x8 digits.

MNIST and Fashion-MNIST are read from a data root in torchvision's raw layout
(``<root>/MNIST/raw/train-images-idx3-ubyte[.gz]``), downloaded with torchvision when missing and
online, and never replaced by anything else. CIFAR-10 is read from torchvision's
``<root>/cifar-10-batches-py/`` (unpickled with numpy arrays as the only allowed objects). The
digits ship with scikit-learn (offline), split 80/20 per class with a fixed seed. A downloaded file
reaches the data root only complete (a temporary name, then a rename). Every failure is a one-line
:class:`~sweep.errors.DataError` naming the file and what to do.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import importlib.util
import pickle
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sweep.atomic import NotARegularFile, atomic_write
from sweep.data.holdout import DATA_ROOT_ENV, holdout_mask
from sweep.data.idx import read_idx
from sweep.errors import DataError
from sweep.reading import open_regular

DOWNLOAD_TIMEOUT_S = 5.0  # per socket operation: offline, an unanswered connect would hang for minutes

CLASSES = tuple(range(10))  # every dataset here has labels 0..9
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
class Arrays:
    """A dataset as read: images (N, H, W) or (N, C, H, W) uint8, labels (N,) int64; shared, read-only."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_dataset(dataset: str, root: Path | None) -> Arrays:
    """One dataset ("digits", "mnist", "fashion" or "cifar10"); ``root`` is the data root (None for the digits)."""
    if dataset == "digits":
        return _load_digits()
    assert root is not None
    if dataset == "cifar10":
        return _load_cifar10(root)
    return _load_idx_dataset(root, IDX_FOLDERS[dataset])


@functools.lru_cache(maxsize=1)
def _load_digits() -> Arrays:
    """load_digits as uint8 (N, 8, 8) in 0..255, split 80/20 per class with a fixed seed."""
    table = _digits_table()
    images = np.rint(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    labels = table[:, -1].astype(np.int64)
    is_test = holdout_mask(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    arrays = Arrays(images[~is_test], labels[~is_test], images[is_test], labels[is_test])
    for array in (arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y):
        array.flags.writeable = False  # cached and shared
    return arrays


def _digits_table() -> np.ndarray:
    """scikit-learn's bundled digits as ``load_digits`` parses them: (1797, 65) floats, 64 pixels (0..16) then the
    label. Read from the package's own file without importing scikit-learn, whose import costs about 4 s of every
    process that trains on split-digits; the import is the fallback if that file ever moves."""
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, mode="rt") as lines:
                return np.loadtxt(lines, delimiter=",")
    from sklearn.datasets import load_digits  # optional dependency, imported where used

    digits = load_digits()
    return np.column_stack([digits.data, digits.target])


def _load_cifar10(root: Path) -> Arrays:
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
    return Arrays(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test_x, test_y)


class ArraysOnly(pickle.Unpickler):
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
        with open_regular(path, "CIFAR-10 batch", "cifar", DataError) as handle:
            batch = ArraysOnly(handle, encoding="latin1").load()
        images = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
    except DataError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {str(err)[:120]})") from None
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(images) != len(labels):
        raise DataError(f"{path}: expected data (N, 3072) with N labels, found {images.shape} and {labels.shape}")
    if len(images) == 0:
        raise DataError(f"{path}: holds 0 images; every split needs samples of every class")
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
                        _copy_in(Path(scratch) / CIFAR10_FOLDER / name, target / name)
            except (OSError, NotARegularFile) as err:
                return f"downloaded but could not write into {target}: {getattr(err, 'strerror', None) or err}"
            return None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _find_files(raw_dir: Path) -> dict[str, Path | None]:
    """Each IDX file's path in raw_dir, the uncompressed one when both exist (faster to read)."""
    found: dict[str, Path | None] = {}
    for key, base in IDX_FILES.items():
        candidates = [raw_dir / base, raw_dir / f"{base}.gz"]
        # any file there, regular or not: read_idx names a device or a folder as such, not as missing
        found[key] = next((path for path in candidates if path.exists() or path.is_symlink()), None)
    return found


def _load_idx_dataset(root: Path, folder: str) -> Arrays:
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
    return Arrays(train_x, train_y, test_x, test_y)


def _read_images(path: Path) -> np.ndarray:
    images = read_idx(path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SIZE:
        raise DataError(
            f"{path}: expected uint8 images of shape (N, {IMAGE_SIZE[0]}, {IMAGE_SIZE[1]}), "
            f"found {images.dtype} of shape {images.shape}"
        )
    if len(images) == 0:
        raise DataError(f"{path}: holds 0 images; every split needs samples of every class")
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
            _copy_in(source / name, raw_dir / name)
    except (OSError, NotARegularFile) as err:
        return f"downloaded but could not write into {raw_dir}: {getattr(err, 'strerror', None) or err}"
    return None


def _copy_in(source: Path, dest: Path) -> None:
    """Copy a downloaded file into the data root atomically (parallel trials may race: the last rename wins, the
    two are identical), never through a link (:func:`sweep.atomic.atomic_write`)."""
    with open(source, "rb") as src:
        atomic_write(dest, lambda handle: shutil.copyfileobj(src, handle))
