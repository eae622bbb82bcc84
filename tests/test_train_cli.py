"""`sweep train` through the real command: output, JSON, and every bad input of the core issue."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.helpers import run_cli


def test_train_prints_the_matrix_and_metrics():
    proc = run_cli("train", "--epochs", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "after task 2" in proc.stdout and "stability" in proc.stdout and "plasticity" in proc.stdout


def test_train_json_is_machine_readable():
    proc = run_cli("train", "--epochs", "1", "--json", "--scenario", "class", "--strategy", "ewc",
                   "--ewc-lambda", "10")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert len(payload["accuracy"]["val"]) == 2 and payload["status"] == "finished"
    assert set(payload["metrics"]["val"]) >= {"stability", "plasticity", "bwt", "fwt", "forgetting"}
    assert payload["stats"]["fisher_trace"] > 0


def test_train_reads_a_config_file_and_flags_override_it(tmp_path: Path):
    config = tmp_path / "chosen.yaml"
    config.write_text("config:\n  strategy: l2sp\n  l2sp_lambda: 5.0\n  epochs: 1\n")
    proc = run_cli("train", "--config", str(config), "--json", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["config"]
    assert got["strategy"] == "l2sp" and got["l2sp_lambda"] == 5.0 and got["seed"] == 3


def _truncated_root(tmp_path: Path) -> Path:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with gzip.open(raw / f"{name}.gz", "wb") as handle:
            dims = b"\x03" if "images" in name else b"\x01"
            handle.write(b"\x00\x00\x08" + dims + b"\x00\x00\x00\x10")  # promises 16 items, holds none
    return tmp_path / "data"


BAD = [
    (["--benchmark", "imagenet"], "imagenet"),
    (["--scenario", "online"], "online"),
    (["--model", "transformer"], "transformer"),
    (["--num-tasks", "3"], "3"),
    (["--num-tasks", "1"], "num_tasks"),
    (["--lr", "0"], "lr"),
    (["--lr", "-0.1"], "lr"),
    (["--lr", "fast"], "--lr"),
    (["--epochs", "0"], "epochs"),
    (["--batch-size", "-4"], "batch_size"),
    (["--class-order", "0,1,2,3,4,5,6,7,8,8"], "class"),
    (["--class-order", "0,1,x"], "--class-order"),
    (["--strategy", "naive+ewc"], "naive"),
    (["--strategy", "ewc", "--fisher", "diagonal"], "diagonal"),
    (["--frozen-layers", "3"], "frozen_layers"),
    (["--benchmark", "split-mnist", "--data-root", "{empty}"], "split-digits"),
    (["--benchmark", "split-mnist", "--data-root", "{truncated}"], "truncated"),
    (["--config", "{missing}"], "missing.yaml"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_train_input_is_one_line_exit_2(tmp_path: Path, args: list[str], needle: str):
    empty = tmp_path / "empty"
    empty.mkdir()
    fill = {"empty": empty, "truncated": _truncated_root(tmp_path), "missing": tmp_path / "missing.yaml"}
    proc = run_cli("train", "--no-progress", *[a.format(**fill) for a in args])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in lines[0], lines[0]
    assert proc.stdout == ""
