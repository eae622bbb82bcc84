"""Bad input, counted: one table of bad inputs across every way in.

Each row is refused with one line that names the problem: exit status 2 and no traceback at the
command line, a typed :class:`~sweep.errors.SweepError` in the Python API; and nothing is written
(the folder listing, sizes and times, is the same before and after). Property-based tests then
check that the config, search-space and constraint parsers never fail any other way.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweep.errors import ConfigError, DataError, ResultsError, SweepError
from tests.helpers import REPO, cli_env

# --- the world every case starts from: good and bad files side by side


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes() + array.tobytes()


def fake_mnist(root: Path, **replace: bytes) -> Path:
    """A valid split-mnist data root (50 train, 20 test images), with some files' bytes replaced."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 50), ("t10k", 20)):
        images = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes((np.arange(n) % 10).astype(np.uint8)))
    for name, data in replace.items():
        if name.endswith(".gz"):
            (raw / name.removesuffix(".gz")).unlink()
        (raw / name).write_bytes(data)
    return root


def build_world(w: Path) -> None:
    from sweep.tune.driver import SweepOptions, base_config
    from sweep.tune.search_space import load_space, space_path
    from tests.fake_study import make_study

    images = idx_bytes(np.zeros((50, 28, 28), np.uint8))
    fake_mnist(w / "data" / "truncated", **{"train-images-idx3-ubyte": images[:-300]})
    fake_mnist(w / "data" / "magic", **{"train-images-idx3-ubyte": b"\x08\x03" + images[2:]})
    fake_mnist(w / "data" / "small", **{"train-images-idx3-ubyte": idx_bytes(np.zeros((50, 14, 14), np.uint8))})
    fake_mnist(w / "data" / "count", **{"train-labels-idx1-ubyte": idx_bytes(np.zeros(49, np.uint8))})
    fake_mnist(w / "data" / "gzip", **{"t10k-labels-idx1-ubyte.gz": gzip.compress(b"x" * 100)[:20]})
    # a 100 kB gzip file whose header declares 60 million 28x28 images (47 GB): refused from the header alone
    # (test_input_hardening.py has one that really expands to more than a gigabyte)
    bomb = bytes([0, 0, 0x08, 3]) + np.asarray([60_000_000, 28, 28], dtype=">u4").tobytes() + bytes(100_000)
    fake_mnist(w / "data" / "bomb", **{"train-images-idx3-ubyte.gz": gzip.compress(bomb)})
    dims255 = bytes([0, 0, 0x08, 255]) + bytes([0, 0, 0, 1]) * 255  # 255 dimensions of size 1
    fake_mnist(w / "data" / "dims255", **{"train-images-idx3-ubyte": dims255})
    fake_mnist(w / "data" / "no-images", **{"train-images-idx3-ubyte": idx_bytes(np.zeros((0, 28, 28), np.uint8)),
                                            "train-labels-idx1-ubyte": idx_bytes(np.zeros(0, np.uint8))})

    files = {
        # search spaces
        "space/bad-yaml.yaml": "strategy: naive\nparams: {lr: [\n",
        "space/params-list.yaml": "strategy: naive\nparams: [lr]\n",
        "space/type-list.yaml": "strategy: naive\nparams:\n  lr: {type: [float], low: 0.1, high: 1.0}\n",
        "space/log-step.yaml": "strategy: replay\nparams:\n"
                               "  replay_size: {type: int, low: 1, high: 99, log: true, step: 2}\n",
        "space/no-choices.yaml": "strategy: ewc\nparams:\n  fisher: {type: categorical, choices: []}\n",
        "space/freeze-fixed.yaml": "strategy: freeze\nfixed: {frozen_layers: 3}\n"
                                   "params:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2}\n",
        "space/freeze-choices.yaml": "strategy: freeze\nparams:\n"
                                     "  frozen_layers: {type: categorical, choices: [0, 9]}\n",
        "space/empty.yaml": "",
        "space/nested.yaml": "strategy: naive\nparams: " + "[" * 5000 + "]" * 5000 + "\n",
        "space/python-tag.yaml": "strategy: !!python/object/apply:os.system ['touch {w}/pwned']\n",
        "space/no-params.yaml": "strategy: naive\nfixed: {epochs: 1}\nparams: {}\n",
        "space/duplicate.yaml": "strategy: naive\nparams:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n"
                                "  lr: {type: float, low: 1.0e-3, high: 1.0e-1}\n",
        "space/inert-gamma.yaml": "strategy: ewc\nfixed: {ewc_mode: separate}\nparams:\n"
                                  "  ewc_gamma: {type: float, low: 0.1, high: 0.9}\n",
        "space/online-gamma.yaml": "strategy: ewc\nfixed: {ewc_mode: online}\nparams:\n"
                                   "  ewc_gamma: {type: float, low: 0.1, high: 0.9}\n",
        # chosen.yaml and other configs for `sweep train --config`
        "chosen/unknown-key.yaml": "config: {strategy: ewc, ewc_lamda: 10.0}\nevidence: {}\n",
        "chosen/string-number.yaml": "config: {lr: 1e-4}\n",
        "chosen/list.yaml": "- lr: 0.1\n",
        "chosen/bad-yaml.yaml": "config: {lr: 0.1\n",
        "chosen/out-of-range.yaml": "config: {strategy: distill, distill_alpha: 1.5}\n",
        "chosen/python-tag.yaml": "config: !!python/object/apply:os.system ['touch {w}/pwned']\n",
        "chosen/bool-epochs.yaml": "config: {epochs: true}\n",
        "chosen/duplicate.yaml": "config:\n  lr: 0.1\n  epochs: 2\n  lr: 0.01\n",
        # a user's benchmark whose first task has no training data, returned as a ready Benchmark
        "empty_train_tasks.py": "import torch\nfrom sweep.data.tasks import Benchmark, Split, Task\n\n\n"
                                "def build():\n"
                                "    empty = Split(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))\n"
                                "    some = Split(torch.rand(20, 4), torch.arange(20) % 2)\n"
                                "    tasks = (Task('a', (0, 1), empty, some, some),\n"
                                "             Task('b', (0, 1), some, some, some))\n"
                                "    return Benchmark(name='empty', scenario='task', tasks=tasks, num_classes=2, "
                                "input_shape=(4,), info={})\n",
    }
    for name, text in files.items():
        (w / name).parent.mkdir(parents=True, exist_ok=True)
        (w / name).write_text(text.replace("{w}", str(w)))
    (w / "space" / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81strategy")
    (w / "chosen" / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")

    studies = w / "studies"
    make_study(studies, "good", n_trials=4)
    make_study(studies, "wrong-schema", n_trials=3)
    pq.write_table(pa.table({"trial": ["a"], "score": [1.0]}), studies / "wrong-schema" / "trials.parquet")
    make_study(studies, "csv", n_trials=3)
    (studies / "csv" / "trials.parquet").write_text("study,trial_id,status\ncsv,t1,finished\n")
    make_study(studies, "empty-file", n_trials=3)
    (studies / "empty-file" / "trials.parquet").write_bytes(b"")
    make_study(studies, "torn-accuracy", n_trials=3)
    data = (studies / "torn-accuracy" / "accuracy.parquet").read_bytes()
    (studies / "torn-accuracy" / "accuracy.parquet").write_bytes(data[: len(data) // 2])
    (w / "not-a-study").mkdir()
    make_study(studies, "string-metric", n_trials=3)  # a metric column of strings: "0.93" is not a number
    table = pq.read_table(studies / "string-metric" / "trials.parquet")
    table = table.set_column(table.schema.get_field_index("val_stability_mean"), "val_stability_mean",
                             pa.array([str(v) for v in table.column("val_stability_mean").to_pylist()]))
    pq.write_table(table, studies / "string-metric" / "trials.parquet")
    make_study(studies, "schema-1", n_trials=3)  # written by the previous version: no config column
    old = pq.read_table(studies / "schema-1" / "trials.parquet").drop(["config"])
    old = old.set_column(old.schema.get_field_index("schema_version"), "schema_version",
                         pa.array([1] * old.num_rows, pa.int64()))
    pq.write_table(old, studies / "schema-1" / "trials.parquet")

    # studies `sweep run --resume` would continue, each broken in one way
    space = load_space(space_path("naive"))
    meta = {"study": "x", "strategy": "naive", "space": space.path, "objective": "pareto", "seeds": [0],
            "space_sha256": hashlib.sha256(Path(space.path).read_bytes()).hexdigest(),
            "base_config": base_config(SweepOptions(strategy="naive", epochs=1), space)}
    for name, study_json in (("torn-trials", json.dumps(meta)), ("other-seeds", json.dumps({**meta, "seeds": [0, 1]})),
                             ("list-meta", "[]"), ("binary-meta", None)):
        folder = w / "results" / name
        folder.mkdir(parents=True)
        if study_json is None:
            (folder / "study.json").write_bytes(b"\x00\xff\xfe garbage")
        else:
            (folder / "study.json").write_text(study_json)
    shutil.copy(studies / "good" / "trials.parquet", w / "results" / "torn-trials" / "trials.parquet")
    torn = (w / "results" / "torn-trials" / "trials.parquet").read_bytes()
    (w / "results" / "torn-trials" / "trials.parquet").write_bytes(torn[: len(torn) - 200])
    (w / "results" / "no-meta").mkdir()
    (w / "results" / "a-file").write_text("not a folder")
    (w / "results" / "no-meta" / "notes.txt").write_text("not a study")


# --- the table

RUN = ["run", "--strategy", "naive", "--trials", "1", "--seeds", "1", "--epochs", "1", "--results", "{w}/results"]
TRAIN_MNIST = ["train", "--benchmark", "split-mnist", "--no-progress", "--data-root"]


@dataclass(frozen=True)
class Case:
    id: str
    needle: str  # in the one-line message: the bad value, key, file or flag
    args: tuple[str, ...] = ()  # a command line (after `sweep`), {w} = the case's folder
    call: Callable[[Path], object] | None = None  # or a Python API call on the case's folder
    error: type[SweepError] = SweepError  # the typed exception the API raises


def cli(id: str, needle: str, *args: str) -> Case:
    return Case(id, needle, args=args)


def api(id: str, needle: str, error: type[SweepError], call: Callable[[Path], object]) -> Case:
    return Case(id, needle, call=call, error=error)


def _train_config(**values: object) -> object:
    from sweep.config import TrainConfig

    return TrainConfig(**values)


def _from_mapping(values: dict) -> object:
    from sweep.config import TrainConfig

    return TrainConfig.from_mapping(values)


def _build_benchmark(*args: object, **kwargs: object) -> object:
    from sweep.data.benchmarks import build_benchmark

    return build_benchmark(*args, **kwargs)  # type: ignore[arg-type]


def _load_space(path: Path) -> object:
    from sweep.tune.search_space import load_space

    return load_space(path)


def _load_study(path: Path) -> object:
    from sweep.analysis.io import load_study

    return load_study(path)


def _study_store(path: Path) -> object:
    from sweep.results.store import StudyStore

    return StudyStore(path)


def _from_yaml(path: Path) -> object:
    from sweep.config import TrainConfig

    return TrainConfig.from_yaml(path)


def _parse_constraint(text: str) -> object:
    from sweep.analysis.choose import parse_constraint

    return parse_constraint(text)


def _run_sweep(w: Path, **options: object) -> object:
    from sweep.tune.driver import SweepOptions, run_sweep

    return run_sweep(SweepOptions(results_dir=str(w / "results"), quiet=True, **options))  # type: ignore[arg-type]


def _run_sweep_without(w: Path, module: str, **options: object) -> object:
    """``run_sweep`` where ``module`` is not installed: None in ``sys.modules`` is what ``import`` sees then."""
    saved = sys.modules.get(module)
    sys.modules[module] = None  # type: ignore[assignment]
    try:
        return _run_sweep(w, **options)
    finally:
        if saved is None:
            del sys.modules[module]
        else:
            sys.modules[module] = saved


CASES = [
    # sweep (no or unknown command)
    cli("no command", "command"),
    cli("unknown command", "trian", "trian"),
    # sweep train: flags
    cli("train: lr not a number", "--lr", "train", "--lr", "abc"),
    cli("train: unknown flag", "--lamda", "train", "--lamda", "3"),
    cli("train: unknown scenario", "online", "train", "--scenario", "online"),
    cli("train: component twice", "ewc+ewc", "train", "--strategy", "ewc+ewc"),
    cli("train: hidden not integers", "--hidden", "train", "--hidden", "256,x"),
    cli("train: hidden too large", "hidden", "train", "--hidden", "1000000000"),
    cli("train: seed too large", "seed", "train", "--seed", str(2**64)),
    cli("train: infinite weight decay", "weight_decay", "train", "--weight-decay", "inf"),
    cli("train: freeze every layer", "frozen_layers=3", "train", "--frozen-layers", "3"),
    cli("train: unknown device", "tpu", "train", "--device", "tpu"),
    cli("train: unknown optimizer", "rmsprop", "train", "--optimizer", "rmsprop"),
    cli("train: class order of 3 classes", "class_order", "train", "--class-order", "0,1,2"),
    cli("train: class shuffle with a class order", "set one of them", "train", "--class-shuffle", "per-seed",
        "--class-order", "9,8,7,6,5,4,3,2,1,0"),
    cli("train: class shuffle on permuted-mnist", "not a split of its classes", "train", "--class-shuffle",
        "per-seed", "--benchmark", "permuted-mnist"),
    cli("train: class shuffle unknown", "allowed: none, per-seed", "train", "--class-shuffle", "random"),
    cli("train: class outputs unknown", "allowed: all, seen", "train", "--class-outputs", "active"),
    cli("train: per-task adapters under class outputs seen", "use class_outputs all, or adapter_mode merge", "train",
        "--strategy", "adapter", "--adapter-mode", "per-task", "--scenario", "class", "--class-outputs", "seen"),
    cli("train: meta device", "meta", "train", "--device", "meta"),
    # 8 layers of 65536: 34 billion parameters, far more memory than any test machine has (estimated, never allocated)
    cli("train: model larger than memory", "hidden", "train", "--hidden", ",".join(["65536"] * 8)),
    cli("train: val fraction under one sample per class", "minimum", "train", "--val-fraction", "0.0001"),
    cli("train: pretrained /dev/zero", "character device", "train", "--pretrained", "/dev/zero"),
    cli("train: benchmark calls sys.exit", "sys.exit", "train", "--benchmark", "sys:exit"),
    cli("train: a task without training data", "no training data", "train", "--benchmark", "empty_train_tasks:build"),
    # sweep train --config: chosen.yaml and other config files
    cli("chosen: missing file", "missing.yaml", "train", "--config", "{w}/chosen/missing.yaml"),
    cli("chosen: a folder", "chosen", "train", "--config", "{w}/chosen"),
    cli("chosen: unknown key", "ewc_lamda", "train", "--config", "{w}/chosen/unknown-key.yaml"),
    cli("chosen: 1e-4 read as a string", "1.0e-4", "train", "--config", "{w}/chosen/string-number.yaml"),
    cli("chosen: a list", "mapping", "train", "--config", "{w}/chosen/list.yaml"),
    cli("chosen: not YAML", "not valid YAML", "train", "--config", "{w}/chosen/bad-yaml.yaml"),
    cli("chosen: out of range", "distill_alpha", "train", "--config", "{w}/chosen/out-of-range.yaml"),
    cli("chosen: python tag", "not valid YAML", "train", "--config", "{w}/chosen/python-tag.yaml"),
    cli("chosen: bool for int", "epochs", "train", "--config", "{w}/chosen/bool-epochs.yaml"),
    cli("chosen: binary file", "UTF-8", "train", "--config", "{w}/chosen/binary.yaml"),
    cli("chosen: /dev/zero", "character device", "train", "--config", "/dev/zero"),
    cli("chosen: duplicate key", "duplicate key 'lr' on line 4", "train", "--config", "{w}/chosen/duplicate.yaml"),
    # data files, through sweep train --benchmark split-mnist --data-root
    cli("idx: truncated images", "truncated", *TRAIN_MNIST, "{w}/data/truncated"),
    cli("idx: wrong magic number", "magic number", *TRAIN_MNIST, "{w}/data/magic"),
    cli("idx: 14x14 images", "(50, 14, 14)", *TRAIN_MNIST, "{w}/data/small"),
    cli("idx: 49 labels for 50 images", "49 labels", *TRAIN_MNIST, "{w}/data/count"),
    cli("idx: corrupt gzip", "gzip", *TRAIN_MNIST, "{w}/data/gzip"),
    cli("idx: gzip declaring 47 GB", "IDX files are read up to 1 GB", *TRAIN_MNIST, "{w}/data/bomb"),
    cli("idx: 255 dimensions", "255 dimensions", *TRAIN_MNIST, "{w}/data/dims255"),
    cli("idx: 0 images", "0 images", *TRAIN_MNIST, "{w}/data/no-images"),
    # sweep run: flags
    cli("run: unknown objective", "best", *RUN, "--objective", "best"),
    cli("run: min plasticity 0", "--min-plasticity", *RUN, "--min-plasticity", "0"),
    cli("run: study escapes the folder", "../escape", *RUN, "--study", "../escape"),
    cli("run: zero concurrency", "--max-concurrent", *RUN, "--max-concurrent", "0"),
    cli("run: zero epochs", "--epochs", *RUN, "--epochs", "0"),
    cli("run: address without port", "localhost", *RUN, "--address", "localhost"),
    cli("run: nan CPUs per trial", "--cpus-per-trial", *RUN, "--cpus-per-trial", "nan"),
    cli("run: nan GPUs per trial", "--gpus-per-trial", *RUN, "--gpus-per-trial", "nan"),
    cli("run: 1e-300 CPUs per trial", "--cpus-per-trial", *RUN, "--cpus-per-trial", "1e-300"),
    cli("run: negative sampler seed", "--sampler-seed", *RUN, "--sampler-seed", "-1"),
    cli("run: sampler seed 2**64", "--sampler-seed", *RUN, "--sampler-seed", str(2**64)),
    cli("run: 1e11 seeds", "--seeds", *RUN, "--seeds", str(10**11)),
    cli("run: pretrained /dev/zero", "character device", *RUN, "--pretrained", "/dev/zero"),
    cli("run: class shuffle with a class order", "set one of them", *RUN, "--class-shuffle", "per-seed",
        "--class-order", "9,8,7,6,5,4,3,2,1,0"),
    cli("pretrain: class shuffle per seed", "--class-order", "pretrain", "--class-shuffle", "per-seed",
        "--out", "{w}/source.pt"),
    cli("run: study name of 300 characters", "300 characters", *RUN, "--study", "s" * 300),
    cli("run: study name with a newline", "control character", *RUN, "--study", "two\nlines"),
    cli("run: study naming a file", "a-file", *RUN, "--study", "a-file"),
    cli("run: model larger than memory", "hidden", *RUN, "--hidden", ",".join(["65536"] * 8)),
    cli("run: misspelt tracker", "--log 'tensorbord' is unknown; allowed: mlflow, wandb, tensorboard (did you mean "
        "'tensorboard'?)", *RUN, "--log", "mlflow,tensorbord"),
    # sweep run: search-space YAML
    cli("space: not YAML", "not valid YAML", *RUN, "--space", "{w}/space/bad-yaml.yaml"),
    cli("space: params a list", "params", *RUN, "--space", "{w}/space/params-list.yaml"),
    cli("space: type a list", "type", *RUN, "--space", "{w}/space/type-list.yaml"),
    cli("space: log with a step", "replay_size", "run", "--strategy", "replay", "--space", "{w}/space/log-step.yaml",
        "--results", "{w}/results"),
    cli("space: no choices", "choices", "run", "--strategy", "ewc", "--space", "{w}/space/no-choices.yaml",
        "--results", "{w}/results"),
    cli("space: fixed freezes all", "fixed.frozen_layers=3", "run", "--strategy", "freeze", "--space",
        "{w}/space/freeze-fixed.yaml", "--results", "{w}/results"),
    cli("space: a choice freezes all", "frozen_layers", "run", "--strategy", "freeze", "--space",
        "{w}/space/freeze-choices.yaml", "--results", "{w}/results"),
    cli("space: empty file", "mapping", *RUN, "--space", "{w}/space/empty.yaml"),
    cli("space: nested too deeply", "nested", *RUN, "--space", "{w}/space/nested.yaml"),
    cli("space: python tag", "not valid YAML", *RUN, "--space", "{w}/space/python-tag.yaml"),
    cli("space: binary file", "UTF-8", *RUN, "--space", "{w}/space/binary.yaml"),
    cli("space: /dev/zero", "character device", *RUN, "--space", "/dev/zero"),
    cli("space: empty params", "params is empty", *RUN, "--space", "{w}/space/no-params.yaml"),
    cli("space: duplicate key", "duplicate key 'lr' on line 4", *RUN, "--space", "{w}/space/duplicate.yaml"),
    cli("space: searched ewc_gamma inert", "ewc_gamma", "run", "--strategy", "ewc", "--space",
        "{w}/space/inert-gamma.yaml", "--results", "{w}/results"),
    cli("run: --ewc-mode makes a searched ewc_gamma inert", "--ewc-mode", "run", "--strategy", "ewc", "--space",
        "{w}/space/online-gamma.yaml", "--ewc-mode", "separate", "--results", "{w}/results"),
    cli("space: another strategy's", "'ewc'", "run", "--strategy", "naive", "--space",
        str(REPO / "search_spaces" / "ewc.yaml"), "--results", "{w}/results"),
    # sweep run --resume: study.json and Parquet files
    cli("resume: truncated trials.parquet", "trials.parquet", *RUN, "--study", "torn-trials", "--resume"),
    cli("resume: other seeds", "seeds", *RUN, "--study", "other-seeds", "--resume"),
    cli("resume: study.json a list", "study.json", *RUN, "--study", "list-meta", "--resume"),
    cli("resume: study.json binary", "study.json", *RUN, "--study", "binary-meta", "--resume"),
    cli("resume: folder without study.json", "study.json", *RUN, "--study", "no-meta", "--resume"),
    # sweep choose / report / clean: Parquet files and flags
    cli("choose: wrong schema", "lacks column", "choose", "{w}/studies/wrong-schema"),
    cli("choose: CSV named .parquet", "trials.parquet", "choose", "{w}/studies/csv"),
    cli("choose: empty trials.parquet", "trials.parquet", "choose", "{w}/studies/empty-file"),
    cli("choose: metric column of strings", "val_stability_mean", "choose", "{w}/studies/string-metric"),
    cli("choose: unknown split", "train", "choose", "{w}/studies/good", "--split", "train"),
    cli("choose: unknown reference", "nave", "choose", "{w}/studies/good", "--constraint", "plasticity >= nave"),
    cli("choose: maximize and minimize", "--minimize", "choose", "{w}/studies/good", "--maximize", "stability",
        "--minimize", "forgetting"),
    cli("report: truncated accuracy.parquet", "accuracy.parquet", "report", "{w}/studies/torn-accuracy"),
    cli("report: unknown metric", "bogus", "report", "{w}/studies/good", "--minimize", "bogus"),
    cli("clean: not a study", "not-a-study", "clean", "{w}/not-a-study"),
    cli("clean: no folder", "nowhere", "clean", "{w}/nowhere"),
    # the Python API: typed exceptions
    api("TrainConfig: negative lr", "lr", ConfigError, lambda w: _train_config(lr=-1.0)),
    api("TrainConfig: epochs a string", "epochs", ConfigError, lambda w: _train_config(epochs="3")),
    api("TrainConfig: bool batch size", "batch_size", ConfigError, lambda w: _train_config(batch_size=True)),
    api("TrainConfig: no hidden layer", "hidden", ConfigError, lambda w: _train_config(hidden=())),
    api("TrainConfig: nan gamma", "ewc_gamma", ConfigError, lambda w: _train_config(ewc_gamma=float("nan"))),
    api("TrainConfig.from_mapping: unknown key", "lamda", ConfigError, lambda w: _from_mapping({"lamda": 1.0})),
    api("TrainConfig.from_yaml: nested", "nested", ConfigError, lambda w: _from_yaml(w / "space" / "nested.yaml")),
    api("build_benchmark: bool val_fraction", "val_fraction", SweepError,
        lambda w: _build_benchmark("split-digits", val_fraction=True)),
    api("build_benchmark: 4 digit tasks", "num_tasks=4", SweepError,
        lambda w: _build_benchmark("split-digits", num_tasks=4)),
    api("build_benchmark: truncated IDX", "truncated", DataError,
        lambda w: _build_benchmark("split-mnist", data_root=w / "data" / "truncated")),
    api("load_space: missing", "does not exist", ConfigError, lambda w: _load_space(w / "space" / "none.yaml")),
    api("load_space: binary", "UTF-8", ConfigError, lambda w: _load_space(w / "space" / "binary.yaml")),
    api("load_study: wrong schema", "lacks column", ResultsError,
        lambda w: _load_study(w / "studies" / "wrong-schema")),
    api("load_study: not a study", "no study", ResultsError, lambda w: _load_study(w / "not-a-study")),
    api("load_study: metric column of strings", "val_stability_mean", ResultsError,
        lambda w: _load_study(w / "studies" / "string-metric")),
    api("StudyStore: truncated", "trials.parquet", ResultsError, lambda w: _study_store(w / "results" / "torn-trials")),
    api("StudyStore: CSV", "trials.parquet", ResultsError, lambda w: _study_store(w / "studies" / "csv")),
    api("StudyStore: previous schema version", "schema_version [1]", ResultsError,
        lambda w: _study_store(w / "studies" / "schema-1")),
    api("parse_constraint: dangling operator", "plasticity >= 1 +", ConfigError,
        lambda w: _parse_constraint("plasticity >= 1 +")),
    api("parse_constraint: 60k characters", "bad constraint", ConfigError,
        lambda w: _parse_constraint("stability >= 1" + " " * 60_000 + "+")),
    api("build_benchmark: val fraction under one sample per class", "minimum", SweepError,
        lambda w: _build_benchmark("split-digits", val_fraction=0.0001)),
    api("load_space: duplicate key", "duplicate key 'lr'", ConfigError,
        lambda w: _load_space(w / "space" / "duplicate.yaml")),
    api("run_sweep: nan CPUs per trial", "--cpus-per-trial", ConfigError,
        lambda w: _run_sweep(w, strategy="naive", cpus_per_trial=float("nan"))),
    api("run_sweep: zero trials", "--trials", ConfigError, lambda w: _run_sweep(w, trials=0)),
    api("run_sweep: nested study", "a/b", ConfigError, lambda w: _run_sweep(w, study="a/b")),
    api("run_sweep: unknown sampler", "grid", ConfigError, lambda w: _run_sweep(w, sampler="grid")),
    api("run_sweep: a tracker not installed", "--log wandb needs the Python package wandb, which is not installed: "
        "pip install -e '.[wandb]'", ConfigError, lambda w: _run_sweep_without(w, "wandb", log=("wandb",))),
]
CLI_CASES = [case for case in CASES if case.call is None]


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 30 and len({case.id for case in CASES}) == len(CASES)
    assert len(CLI_CASES) >= 30


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    template = tmp_path_factory.mktemp("world")
    build_world(template)
    return template


# One interpreter runs every command-line case through sweep.cli.main, exactly what `python -m sweep.cli`
# runs, each in its own copy of the world: 60 interpreter starts (torch, pyarrow) would cost minutes.
# An exception escaping main is printed as the interpreter would print it, with its traceback.
_BATCH = """
import contextlib, io, json, os, sys, traceback
from sweep.cli import main
outcomes = []
for folder, args in json.load(sys.stdin):
    os.chdir(folder)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    outcomes.append([code, out.getvalue(), err.getvalue()])
json.dump(outcomes, sys.__stdout__)
"""


@pytest.fixture(scope="module")
def cli_outcomes(world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    root = tmp_path_factory.mktemp("cli")
    env = cli_env({"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                   "SWEEP_DATA_ROOT": str(root / "no-data")})
    jobs, before = [], {}
    for index, case in enumerate(CLI_CASES):
        folder = root / f"case{index}"
        shutil.copytree(world, folder, symlinks=True)
        before[case.id] = listing(folder)
        jobs.append((str(folder), [a.replace("{w}", str(folder)) for a in case.args]))
    proc = subprocess.run([sys.executable, "-c", _BATCH], input=json.dumps(jobs), capture_output=True, text=True,
                          timeout=600, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = json.loads(proc.stdout)
    return {case.id: (*outcomes[i], before[case.id], listing(Path(jobs[i][0]))) for i, case in enumerate(CLI_CASES)}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(case: Case, world: Path, tmp_path: Path,
                                                              request: pytest.FixtureRequest):
    if case.call is None:
        code, stdout, stderr, before, after = request.getfixturevalue("cli_outcomes")[case.id]
        assert code == 2, (code, stdout[-500:], stderr[-2000:])
        assert "Traceback" not in stderr and stdout == ""
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr
        message = lines[0]
        assert message.startswith("sweep"), message
    else:
        folder = tmp_path / "w"
        shutil.copytree(world, folder, symlinks=True)
        before = listing(folder)
        with pytest.raises(SweepError) as info:
            case.call(folder)
        assert isinstance(info.value, case.error), type(info.value)
        message = str(info.value)
        assert "\n" not in message
        after = listing(folder)
    assert case.needle in message, message
    assert after == before  # nothing written, nothing removed, nothing touched


def test_resume_refuses_a_checkpoint_replaced_since_the_study_started(tmp_path: Path):
    """The study records the checkpoint's sha256, not only its path: a file swapped under the same
    name would otherwise mix trials fine-tuned from two different models in one study."""
    from sweep.errors import ConfigError
    from sweep.tune.driver import SweepOptions, base_config, run_sweep
    from sweep.tune.search_space import load_space, space_path

    checkpoint = tmp_path / "source.pt"
    checkpoint.write_bytes(b"the checkpoint the study started from")
    options = SweepOptions(strategy="naive", epochs=1, trials=1, seeds=1, results_dir=str(tmp_path / "results"),
                           study="s", pretrained=str(checkpoint), resume=True, quiet=True)
    space = load_space(space_path("naive"))
    meta = {"study": "s", "strategy": "naive", "space": space.path, "objective": "pareto", "seeds": [0],
            "space_sha256": hashlib.sha256(Path(space.path).read_bytes()).hexdigest(),
            "base_config": base_config(options, space),
            "weights_sha256": {"pretrained": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}}
    study = tmp_path / "results" / "s"
    study.mkdir(parents=True)
    (study / "study.json").write_text(json.dumps(meta))
    checkpoint.write_bytes(b"another model saved under the same name")
    before = listing(tmp_path)
    with pytest.raises(ConfigError, match="pretrained file .* has changed since the study started") as info:
        run_sweep(options)
    assert "\n" not in str(info.value) and listing(tmp_path) == before


# --- property-based: any input parses to a valid object or raises the typed error, never anything else

def text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=max_size)  # no lone surrogates: files are UTF-8


SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | text(12) | st.sampled_from(["1e-4", "adam", "ewc", "task", "exact", "online", "0.5"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text(5), inner, max_size=3),
                      max_leaves=8)


def _field_names() -> list[str]:
    from sweep.config import TrainConfig

    return list(TrainConfig.field_names())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_field_names()) | text(8), VALUES, max_size=6))
def test_train_config_from_mapping_parses_or_raises_config_error(values: dict):
    from sweep.config import TrainConfig

    try:
        config = TrainConfig.from_mapping(values)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    assert TrainConfig.from_mapping(config.to_dict()) == config  # what it accepted is valid and round-trips


def _dist() -> st.SearchStrategy:
    number = st.integers(-5, 100) | st.floats(-10, 1e6) | st.just(float("nan")) | text(6)
    return st.fixed_dictionaries(
        {"type": st.sampled_from(["float", "int", "categorical", "uniform"]) | SCALARS},
        optional={"low": number, "high": number, "log": st.booleans() | SCALARS, "step": st.integers(-1, 3) | SCALARS,
                  "choices": st.lists(SCALARS, max_size=3) | SCALARS, "extra": SCALARS},
    )


SPACE_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "strategy": st.sampled_from(["naive", "ewc", "replay", "freeze", "ewc+replay", "ewk", "naive+joint"]) | SCALARS,
        "description": SCALARS,
        "fixed": st.dictionaries(st.sampled_from(_field_names()), SCALARS, max_size=3) | SCALARS,
        "params": st.dictionaries(st.sampled_from(_field_names()) | text(5), _dist() | SCALARS, max_size=3)
        | SCALARS,
        "bogus": SCALARS,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(document=SPACE_DOCS | text(60))
def test_search_space_loader_parses_or_raises_config_error(document: object, tmp_path: Path):
    from sweep.tune.search_space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    try:
        space = load_space(path)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    for param in space.params:  # accepted: Optuna takes every distribution, and every end is a valid config
        param.to_optuna()


CONSTRAINT_TEXT = text(40) | st.builds(
    lambda metric, op, rhs: f"{metric} {op} {rhs}",
    st.sampled_from(["stability", "plasticity", "retention", "bwt", "Stability", "accuracy", ""]),
    st.sampled_from([">=", "<=", ">", "<", "≥", "≤", "=>", "==", ""]),
    st.text(alphabet="0123456789.%eE+-* naivejoint−", max_size=16),
)


@settings(max_examples=500, deadline=None)
@given(CONSTRAINT_TEXT)
def test_constraint_parser_parses_or_raises_config_error(text: str):
    from sweep.analysis.choose import parse_constraint

    try:
        constraint = parse_constraint(text)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    threshold = constraint.threshold({"naive": 0.9, "joint": 0.95})
    assert isinstance(threshold, float)
    constraint.satisfied(constraint.margin(0.5, threshold))
