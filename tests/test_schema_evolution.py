"""A study written by an earlier version still reads, and so does a file from before a hyperparameter existed.

``tests/data/study_v2`` was written by the landed version (commit 2027e86, Parquet schema version 2)
with ``sweep run --strategy ewc --trials 2 --seeds 2 --epochs 1 --study v2``: two search trials and the
two references, on split-digits (see tests/data/README.md). Only its ``trials.parquet``,
``accuracy.parquet`` and ``study.json`` are kept; they are never written to (each test works on a copy).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import run_cli

STUDY_V2 = Path(__file__).resolve().parent / "data" / "study_v2"
DROPPED = "hp_early_stop_patience"  # as if the study had been written before this hyperparameter existed


@pytest.fixture
def study(tmp_path: Path) -> Path:
    copy = tmp_path / "study_v2"
    shutil.copytree(STUDY_V2, copy)
    return copy


def test_the_landed_study_loads_and_has_a_front():
    from sweep.analysis.io import load_study
    from sweep.analysis.pareto import pareto_front

    loaded = load_study(STUDY_V2)
    assert sorted(loaded.trials.role) == ["joint", "naive", "search", "search"]
    assert set(loaded.trials.code_version) == {"0.1.0+2027e86"}  # provenance: the landed version wrote it
    assert (loaded.trials.status == "finished").all()
    assert len(loaded.accuracy) == 4 * 2 * 2 * 3 * 2  # trials x seeds x splits x (untrained + 2 tasks) x 2 tasks
    front = loaded.trials.trial_id[pareto_front(loaded.trials)]
    search = loaded.trials.trial_id[loaded.trials.role == "search"]
    assert len(front) >= 1 and set(front) <= set(search)


def test_choose_and_report_read_the_landed_study(study: Path, tmp_path: Path):
    chosen = tmp_path / "chosen.yaml"
    result = run_cli("choose", str(study), "--maximize", "stability", "--output", str(chosen), timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    document = yaml.safe_load(chosen.read_text())
    assert document["config"]["strategy"] == "ewc"
    assert document["evidence"]["trial_id"] in pq.read_table(study / "trials.parquet").column("trial_id").to_pylist()

    report = tmp_path / "report.html"
    result = run_cli("report", str(study), "--output", str(report), timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert report.stat().st_size > 0 and "Traceback" not in result.stderr


def test_a_trials_file_without_an_hp_column_reads_it_as_null(study: Path):
    from sweep.analysis.io import load_study
    from sweep.analysis.pareto import pareto_front

    path = study / "trials.parquet"
    table = pq.read_table(path)
    assert DROPPED in table.column_names
    pq.write_table(table.drop_columns([DROPPED]), path)

    loaded = load_study(study)
    assert DROPPED in loaded.trials.columns and loaded.trials[DROPPED].isna().all()
    assert len(loaded.trials) == 4 and pareto_front(loaded.trials).any()
