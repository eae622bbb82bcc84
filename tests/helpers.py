"""Test helpers: run the real command, stop exactly the processes a test started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweep.cli", *args]


def run_cli(*args: str, timeout: float = 300, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sweep_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO,
                          env=cli_env(env))


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_USAGE_STATS_ENABLED="0", **(extra or {}))
    env.pop("RAY_ADDRESS", None)
    return env


def start_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the command in its own session, so everything it spawns (Ray too) can be stopped by session id."""
    return subprocess.Popen(sweep_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd or REPO, env=cli_env(env), start_new_session=True)


def session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    return [int(pid) for pid, s, stat in (line.split() for line in out.splitlines())
            if int(s) == sid and not stat.startswith("Z")]


def stop_session(sid: int, timeout: float = 20) -> None:
    """SIGKILL every live process of the session ``sid`` (the driver's pid), and wait until none is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    raise AssertionError(f"processes of session {sid} still alive: {session_pids(sid)}")


def parquet_rows(path: Path) -> int:
    try:
        return pq.read_table(path).num_rows
    except Exception:  # not there yet, or being replaced
        return 0


def wait_until(predicate: Callable[[], bool], timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(0.1)
    return False


def evaluate_by_hand(model: Any, bench: Any, masks: Any, t: int, val: Any, test: Any) -> None:
    """A user's evaluation after task ``t``: row ``t`` of the validation and test matrices, every task with its
    own logit mask, the model in eval mode for it and back in training mode after."""
    import torch

    from sweep.data.tasks import to_float

    with torch.no_grad():
        model.eval()
        for i, other in enumerate(bench.tasks):
            for split, matrix in ((other.val, val), (other.test, test)):
                out = model(to_float(split.x)).masked_fill(~masks[i], torch.finfo(torch.float32).min)
                matrix[t, i] = (out.argmax(1) == split.y).double().mean().item()
        model.train()


def task_context(benchmark: Any, model: Any, task_index: int) -> tuple[Any, Any]:
    """A strategy's TaskContext on ``task_index`` (CPU, batch 32, a generator of its own, the benchmark's logit
    masks) and a batch of that task's first 32 training samples: how the strategy tests call one hook by hand."""
    import torch

    from sweep.data.tasks import to_float
    from sweep.strategies.base import Batch, TaskContext
    from sweep.train.trainer import masked_logits

    masks = benchmark.task_masks()
    ctx = TaskContext(task_index, benchmark, model, torch.device("cpu"), 32, torch.Generator().manual_seed(1),
                      lambda x, ids: masked_logits(model, x, ids, masks))
    data = ctx.task_training_data()
    ids = None if data.task_ids is None else data.task_ids[:32]
    return ctx, Batch(to_float(data.split.x[:32]), data.split.y[:32], ids)
