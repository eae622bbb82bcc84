"""Task-prefix reuse: trials that agree on everything that decides the state after task 1
share one computation of it (the task-1 model, its evaluations, the strategy's state such as
the Fisher, the random generator's state and, for ``optimizer_state: keep``, the optimizer's state; an
entry a ``reset`` trial wrote lacks it, so a ``keep`` trial computes task 1 again and writes it whole).

The key is a hash of every config field *except* those the hyperparameter table marks as acting
from task 2 on (``first_task == 2`` in :mod:`sweep.hparams`: EWC's λ, distillation's T and α,
replay's ratio, L2-SP's λ, the frozen-layer count, the fine-tuning learning rate, ...) for this
strategy, plus the benchmark's identity and the code and torch versions. Anything the table does
not mark is in the key. Entries hold tensors and numbers only (replay
keeps sample *indices*, never samples), are written atomically, and are read with
``torch.load(weights_only=True)``. Concurrent trials racing for one entry both compute it and
the last rename wins; the two are identical.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from sweep.atomic import NotARegularFile, atomic_write
from sweep.config import TrainConfig
from sweep.data.tasks import Benchmark
from sweep.hparams import BY_NAME, prefix_free

WEIGHT_FILES = ("init_weights", "pretrained")  # config fields naming files: their contents are in the key too
NOT_IN_KEY = ("threads",)  # how many threads computed the state, not what it is: the key of before it existed
# fields added later, at the value that trains as before they existed: left out, so earlier entries still match;
# left out too where they cannot act (class_outputs outside class-incremental form: the same task-1 state)
KEY_AS_BEFORE = (("class_shuffle", "none"), ("class_outputs", "all"))
_ADDED_LATER = {name for name, _ in KEY_AS_BEFORE}


def prefix_free_fields(strategy_spec: str) -> set[str]:
    """Fields that cannot change the state after task 1, for this (composite) strategy."""
    from sweep.strategies.registry import parse_strategy

    return prefix_free(parse_strategy(strategy_spec))


# bumped whenever the trainer's arithmetic changes, so a study's old entries are not reused by code
# that would compute another task-1 model or entry (2: fused Adam; 3: optimizer_state keep stores the optimizer's
# state in the entry)
TRAINER_NUMERICS = 3


def prefix_key(config: TrainConfig, benchmark: Benchmark) -> str:
    from sweep import __version__

    free = prefix_free_fields(config.strategy)
    values = config.to_dict()
    fields = {k: v for k, v in values.items() if k not in free and k not in NOT_IN_KEY
              and (k, v) not in KEY_AS_BEFORE and not (k in _ADDED_LATER and BY_NAME[k].inert_because(values))}
    from sweep.strategies.registry import strategy_components

    identity = {
        "config": fields,
        # frozen_layers is prefix-free, but whether freeze is built changes the strategy's state layout
        "components": list(strategy_components(config)),
        "benchmark": {"name": benchmark.name, "scenario": benchmark.scenario, "num_classes": benchmark.num_classes,
                      "input_shape": list(benchmark.input_shape), "sizes": [[len(t.train), len(t.val), len(t.test)]
                                                                            for t in benchmark.tasks],
                      "info": {k: v for k, v in benchmark.info.items() if k != "data_root"}},
        "versions": [__version__, TRAINER_NUMERICS, torch.__version__],
    }
    files = {name: file_digest(getattr(config, name)) for name in WEIGHT_FILES if getattr(config, name) is not None}
    if files:  # the same path may hold another checkpoint next time
        identity["files"] = files
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def file_digest(path: str) -> str:
    """sha256 of a file's bytes; "unreadable" when it cannot be read (loading it fails later, with its own message)."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return "unreadable"


class PrefixCache:
    """One entry: the state after task 1 for one key, in ``<directory>/<key>.pt``."""

    def __init__(self, directory: str | os.PathLike[str], key: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{key}.pt"

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt entry is recomputed, never trusted
            return None

    def save(self, state: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.directory.is_symlink():  # the tool never makes it one: writing through it would land elsewhere
            raise NotARegularFile(f"the task-prefix cache {self.directory} is a symbolic link; refusing to write "
                                  "through it (remove it)")
        atomic_write(self.path, lambda handle: torch.save(state, handle))
