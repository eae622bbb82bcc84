"""Hand-made studies in the exact results schema, for tests and for running the notebooks offline.

:func:`make_study` writes a realistic study (search trials, the naive and joint references, an
errored and a diverged trial, accuracy matrices for T=2 tasks over several seeds) whose metrics are
computed from its own accuracy matrices, so the two files agree as a real sweep's do.
:func:`write_study` writes any hand-made rows, filling the columns a test does not care about.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sweep.analysis.io import ACCURACY_FILE, TRIALS_FILE, write_parquet_atomic
from sweep.hparams import BY_NAME
from sweep.results import schema

# hyperparameter columns hold one type each, as the sweep writes them; nullable ints keep 3 an int
_INT_HPS = tuple(name for name in schema.HYPERPARAMETERS if BY_NAME[name].type is int)
_STR_HPS = tuple(name for name in schema.HYPERPARAMETERS if BY_NAME[name].type is str)


def trial_row(**values: object) -> dict[str, object]:
    """One trials.parquet row: sensible defaults for a finished EWC search trial, overridden by ``values``.

    Metric values are given by column name (``val_stability_mean=0.9``); unspecified metrics are NaN.
    """
    row: dict[str, object] = {column: math.nan for column in schema.TRIALS_COLUMNS}
    row.update(
        study="demo",
        trial_id="t000",
        status="finished",
        reason="",
        role="search",
        strategy="ewc",
        benchmark="split-digits",
        scenario="task",
        model="mlp",
        num_tasks=2,
        n_seeds=3,
        seeds="0,1,2",
        config=None,  # a hand-made row: sweep choose builds the config from the columns alone
        duration_s=1.0,
        node="127.0.0.1",
        finished_at="2025-01-01T00:00:00+00:00",
        code_version="0.1.0",
        torch_version="2.14.1",
        ray_version="2.60.0",
        optuna_version="4.0.0",
        schema_version=schema.SCHEMA_VERSION,
    )
    for name in schema.HYPERPARAMETERS:
        row[f"hp_{name}"] = None
    unknown = set(values) - set(schema.TRIALS_COLUMNS)
    if unknown:
        raise KeyError(f"not trials columns: {', '.join(sorted(unknown))}")
    row.update(values)
    return row


def trials_frame(rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """Rows (see :func:`trial_row`) -> a DataFrame with every schema column, one dtype per column."""
    frame = pd.DataFrame([trial_row(**row) for row in rows], columns=list(schema.TRIALS_COLUMNS))
    for name in schema.HYPERPARAMETERS:
        column = f"hp_{name}"
        if name in _INT_HPS:
            frame[column] = pd.array(frame[column].tolist(), dtype="Int64")
        elif name in _STR_HPS:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        else:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
    for column in ("num_tasks", "n_seeds", "schema_version"):
        frame[column] = frame[column].astype("int64")
    frame["config"] = pd.array([json.dumps(dict(v)) if isinstance(v, Mapping) else None if _missing(v) else str(v)
                                for v in frame["config"]], dtype="string")
    return frame


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def write_study(
    folder: str | os.PathLike[str],
    trials: Sequence[Mapping[str, object]] | pd.DataFrame,
    accuracy: pd.DataFrame | None = None,
) -> Path:
    """Write hand-made trials (and optional accuracy rows) as a study folder, atomically.

    Args:
        folder: The study folder, created if missing.
        trials: Rows for :func:`trial_row`, or a ready DataFrame (written as it is).
        accuracy: Rows in :data:`sweep.schema.ACCURACY_COLUMNS`; no ``accuracy.parquet`` when ``None``.

    Returns:
        The study folder.
    """
    folder = Path(folder)
    frame = trials if isinstance(trials, pd.DataFrame) else trials_frame(trials)
    write_parquet_atomic(frame, folder / TRIALS_FILE)
    if accuracy is not None:
        write_parquet_atomic(accuracy, folder / ACCURACY_FILE)
    return folder


def matrix_metrics(matrix: np.ndarray) -> dict[str, float]:
    """The metrics of docs/design.md from one ``(T+1, T)`` accuracy matrix whose row 0 is the untrained model."""
    tasks = matrix.shape[1]
    final, diagonal = matrix[tasks], np.array([matrix[t + 1, t] for t in range(tasks)])
    old = range(tasks - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        retention = float(np.mean([final[i] / diagonal[i] for i in old]))
    return {
        "stability": float(np.mean([final[i] for i in old])),
        "plasticity": float(np.mean(diagonal[1:])),
        "acc": float(np.mean(final)),
        "bwt": float(np.mean([final[i] - diagonal[i] for i in old])),
        "fwt": float(np.mean([matrix[i, i] - matrix[0, i] for i in range(1, tasks)])),
        "forgetting": float(np.mean([np.max(matrix[1:tasks, i]) - final[i] for i in old])),
        "retention": retention,
    }


# per strategy: the searched hyperparameter, its range (log-uniform when log), how much stability
# it can buy over naive and how much plasticity it costs at full strength
_RESPONSES: dict[str, tuple[str, float, float, bool, float, float]] = {
    "ewc": ("ewc_lambda", 1e-2, 1e6, True, 0.80, 0.25),
    "l2sp": ("l2sp_lambda", 1e-4, 1e2, True, 0.70, 0.35),
    "distill": ("distill_alpha", 0.05, 0.95, False, 0.60, 0.15),
    "replay": ("replay_size", 10, 2000, True, 0.85, 0.05),
    "freeze": ("frozen_layers", 0, 3, False, 0.75, 0.60),
}


def make_study(
    path: str | os.PathLike[str],
    name: str = "demo",
    n_trials: int = 12,
    seed: int = 0,
    strategy: str = "ewc",
    *,
    flat: bool = False,
    scenario: str = "task",
    n_seeds: int = 3,
) -> Path:
    """Write a realistic hand-made study ``<path>/<name>`` for a strategy on 2 tasks.

    The study has ``n_trials`` search trials (two of them errored and diverged), the naive and joint
    references, and per-seed accuracy matrices on ``val`` and ``test`` whose metrics are the table's.

    Args:
        path: The results folder (the study is written to ``path / name``).
        name: Study name.
        n_trials: Search trials, at least 3 (one errors, one diverges).
        seed: Seed of the made-up numbers.
        strategy: One of ``ewc``, ``l2sp``, ``distill``, ``replay``, ``freeze``.
        flat: No trade-off: every setting keeps old tasks as badly as naive, as EWC does in
            class-incremental form.
        scenario: Written to the ``scenario`` column.
        n_seeds: Seeds per trial.

    Returns:
        The study folder.
    """
    if strategy not in _RESPONSES:
        raise ValueError(f"make_study knows strategies {', '.join(_RESPONSES)}, not {strategy!r}")
    if n_trials < 3:
        raise ValueError(f"make_study needs n_trials >= 3, got {n_trials}")
    rng = np.random.default_rng(seed)
    param, low, high, log, gain, cost = _RESPONSES[strategy]
    seeds = list(range(n_seeds))
    naive_stability = 0.02 if flat else 0.45

    def matrices(stability: float, plasticity: float, noise: float) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {}
        for split, shift in (("val", 0.0), ("test", -0.01)):
            out[split] = []
            for _ in seeds:
                jitter = rng.normal(0.0, noise, size=3)
                task1 = 0.97 + shift + 0.5 * jitter[0]
                matrix = np.array(
                    [
                        [
                            0.2 + rng.normal(0, 0.01),
                            0.2 + rng.normal(0, 0.01),
                        ],  # untrained: chance on 5 classes
                        [task1, 0.2 + rng.normal(0, 0.01)],
                        [stability + shift + jitter[1], plasticity + shift + jitter[2]],
                    ]
                )
                out[split].append(np.clip(matrix, 0.0, 1.0))
        return out

    rows: list[dict[str, object]] = []
    accuracy_rows: list[dict[str, object]] = []

    def add(
        trial_id: str,
        role: str,
        status: str,
        hps: dict[str, object],
        target: tuple[float, float] | None,
        noise: float = 0.01,
        reason: str = "",
    ) -> None:
        row = trial_row(
            study=name,
            trial_id=trial_id,
            status=status,
            reason=reason,
            role=role,
            strategy={"search": strategy}.get(role, role),
            scenario=scenario,
            n_seeds=n_seeds,
            seeds=",".join(map(str, seeds)),
            duration_s=float(rng.uniform(5, 30)),
            finished_at=f"2025-01-01T00:{len(rows):02d}:00+00:00",
            **{f"hp_{key}": value for key, value in hps.items()},
        )
        if target is not None:
            per_split = matrices(*target, noise)
            for split, mats in per_split.items():
                metrics = [matrix_metrics(m) for m in mats]
                for metric in schema.METRICS:
                    values = np.array([m[metric] for m in metrics])
                    row[schema.metric_column(split, metric)] = float(values.mean())
                    row[schema.metric_column(split, metric, "std")] = (
                        float(values.std(ddof=1)) if len(values) > 1 else 0.0
                    )
                for s, matrix in zip(seeds, mats):
                    for after in range(matrix.shape[0]):
                        for task in range(matrix.shape[1]):
                            accuracy_rows.append(
                                dict(
                                    study=name,
                                    trial_id=trial_id,
                                    seed=s,
                                    split=split,
                                    after_task=after,
                                    eval_task=task + 1,
                                    accuracy=float(matrix[after, task]),
                                )
                            )
            if strategy == "ewc" and role == "search":
                row["fisher_mean"], row["fisher_trace"] = 3e-4, 3e-4 * 269_322  # an MLP 64-256-256-10
        rows.append(row)

    base = {"lr": 1e-3, "epochs": 3, "batch_size": 64, "optimizer": "adam"}
    add("naive", "naive", "finished", dict(base), (naive_stability, 0.97))
    add("joint", "joint", "finished", dict(base), (0.95, 0.96))
    for i in range(n_trials):
        u = (i + 0.5) / n_trials
        value: object = (
            math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if log else low + u * (high - low)
        )
        if param in _INT_HPS:
            value = int(round(float(value)))  # type: ignore[arg-type]
        lr = float(10 ** rng.uniform(-3.5, -2.5))
        hps = {**base, "lr": lr, param: value}
        if strategy == "ewc":
            hps["fisher"] = "exact"
        strength = 1.0 / (1.0 + math.exp(-(8.0 * u - 4.0)))  # small at the low end of the range
        if flat:
            target = (naive_stability + rng.normal(0, 0.003), 0.97 - 0.1 * cost * strength)
        else:
            target = (naive_stability + gain * strength * (0.95 - naive_stability), 0.97 - cost * strength**2)
        if i == 1:
            add(
                f"t{i:03d}", "search", "error", hps, None, reason="RuntimeError: CUDA out of memory (made up)"
            )
        elif i == n_trials - 2:
            add(
                f"t{i:03d}",
                "search",
                "diverged",
                {**hps, "lr": 5.0},
                None,
                reason="loss became nan in task 2",
            )
        else:
            add(f"t{i:03d}", "search", "finished", hps, target, noise=0.005 + 0.01 * rng.random())
    folder = Path(path) / name
    accuracy = pd.DataFrame(accuracy_rows, columns=list(schema.ACCURACY_COLUMNS))
    return write_study(folder, rows, accuracy)
