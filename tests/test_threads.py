"""Threads: ``sweep train``, ``sweep pretrain`` and the API run on a thread count that cannot oversubscribe a
busy machine (``threads``, a setting of the hyperparameter table, default 1); a trial runs on its CPUs.

The speed this buys under load is measured by ``make bench`` (row ``threads_under_load``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sweep import api
from sweep.config import TrainConfig
from sweep.hparams import BY_NAME, HYPERPARAMETERS, SETTING, UNRECORDED


@pytest.fixture
def many_threads() -> Iterator[None]:
    """torch's default on a machine of three cores (one thread per core), put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_seen(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """torch's thread count each time the trainer starts a task sequence (train and pretrain both do)."""
    from sweep.train import trainer

    seen: list[int] = []
    original = trainer.iter_sequence

    def iter_sequence(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "iter_sequence", iter_sequence)
    return seen


SMALL = ["--benchmark", "split-digits", "--epochs", "1", "--hidden", "16"]


@pytest.mark.usefixtures("many_threads")
def test_train_and_pretrain_run_on_one_thread_unless_threads_says_otherwise(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path):
    from sweep.cli import main

    seen = threads_seen(monkeypatch)
    assert main(["train", *SMALL, "--no-progress", "--json"]) == 0
    assert main(["train", *SMALL, "--no-progress", "--json", "--threads", "2"]) == 0
    assert main(["pretrain", *SMALL, "--out", str(tmp_path / "source.pt")]) == 0
    assert seen == [1, 2, 1]


def test_threads_is_a_setting_kept_out_of_the_results_and_the_prefix_key():
    from sweep.data.benchmarks import build_benchmark
    from sweep.tune.prefix_cache import prefix_key

    row = BY_NAME["threads"]
    assert row.kind == SETTING and row.default == 1 and row.first_task == 1
    assert "threads" not in HYPERPARAMETERS  # no hp_threads column
    assert "threads" in UNRECORDED  # not in the results' config column either
    bench = build_benchmark("split-digits", "task")
    assert prefix_key(TrainConfig(threads=1), bench) == prefix_key(TrainConfig(threads=4), bench)


def test_threads_flags(capsys: pytest.CaptureFixture[str]):
    """``sweep train``/``pretrain`` take --threads (generated from the table); ``sweep run`` does not: a trial runs
    on its --cpus-per-trial."""
    from sweep.cli import build_parser

    for command, has in (("train", True), ("pretrain", True), ("run", False)):
        with pytest.raises(SystemExit):
            build_parser(command).parse_args([command, "--help"])
        assert ("--threads" in capsys.readouterr().out) is has, command


@pytest.mark.usefixtures("many_threads")
def test_the_api_computes_the_fisher_on_one_thread_and_puts_torch_back(monkeypatch: pytest.MonkeyPatch):
    seen: list[int] = []
    original = api.fisher_diagonal

    def fisher_diagonal(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(api, "fisher_diagonal", fisher_diagonal)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    api.compute_fisher(model, x, y)
    api.compute_fisher(model, x, y, threads=2)
    api.compute_fisher(model, x, y, threads=None)  # torch's own setting
    api.Chosen(TrainConfig(threads=2)).fisher(model, x, y)
    assert seen == [1, 2, 3, 2]
    assert torch.get_num_threads() == 3  # put back after each
    with api.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
