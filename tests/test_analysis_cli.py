"""`sweep choose` and `sweep report` through the real command line, in a subprocess."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweep.results import schema
from tests.fake_study import make_study, trial_row, write_study

ROOT = Path(__file__).resolve().parents[1]
# until every command module of sweep.cli exists, run sweep.cli.main with only the analysis commands:
# same parser class, same error handling, same exit statuses
_ANALYSIS_ONLY = (
    "import sys, sweep.cli as cli; "
    "cli.COMMANDS = {k: v for k, v in cli.COMMANDS.items() if k in ('choose', 'report')}; "
    "sys.exit(cli.main(sys.argv[1:]))"
)


def _all_commands_exist() -> bool:
    from sweep.cli import COMMANDS

    try:
        return all(importlib.util.find_spec(module) is not None for module, _ in COMMANDS.values())
    except ModuleNotFoundError:
        return False


SWEEP = (
    [sys.executable, "-m", "sweep.cli"] if _all_commands_exist() else [sys.executable, "-c", _ANALYSIS_ONLY]
)


def sweep(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [*SWEEP, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("results")
    demo = make_study(root, "demo", n_trials=8)
    truncated = make_study(root, "truncated", n_trials=4)
    data = (truncated / "trials.parquet").read_bytes()
    (truncated / "trials.parquet").write_bytes(data[: len(data) // 3])
    future = write_study(root / "future", [trial_row(schema_version=schema.SCHEMA_VERSION + 1)])
    return {"demo": demo, "truncated": truncated, "future": future, "missing": root / "missing"}


@pytest.mark.parametrize(
    ("study", "args", "message"),
    [
        ("missing", ["choose"], "no study at"),
        ("truncated", ["choose"], "trials.parquet"),
        ("future", ["choose"], f"schema_version {schema.SCHEMA_VERSION + 1}"),
        ("demo", ["choose", "--maximize", "accuracy"], "unknown metric 'accuracy'"),
        ("demo", ["choose", "--constraint", "accuracy >= 0.9"], "unknown metric 'accuracy'"),
        ("demo", ["choose", "--constraint", "plasticity => naive - 0.01"], "bad constraint"),
        ("missing", ["report"], "no study at"),
        ("truncated", ["report"], "trials.parquet"),
        ("demo", ["report", "--constraint", "stability >="], "bad constraint"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    studies: dict[str, Path], study: str, args: list[str], message: str
) -> None:
    folder = studies[study]
    before = _files(folder)
    result = sweep(args[0], folder, *args[1:])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert _files(folder) == before


@pytest.mark.parametrize("command", ["choose", "report"])
def test_output_that_is_a_directory_is_refused(
    studies: dict[str, Path], tmp_path: Path, command: str
) -> None:
    result = sweep(command, studies["demo"], "--output", tmp_path)
    assert result.returncode == 2 and "is a directory" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_choose_writes_chosen_yaml(studies: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "chosen.yaml"
    result = sweep(
        "choose",
        studies["demo"],
        "--maximize",
        "stability",
        "--constraint",
        "plasticity >= naive - 0.05",
        "--output",
        output,
    )
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(output.read_text())
    assert document["evidence"]["trial_id"] in result.stdout
    assert "test (confirms it" in result.stdout and "margin +" in result.stdout
    assert document["config"]["strategy"] == "ewc" and isinstance(document["config"]["epochs"], int)


def test_choose_without_feasible_trial_exits_1_and_writes_nothing(studies: dict[str, Path]) -> None:
    before = _files(studies["demo"])
    result = sweep("choose", studies["demo"], "--constraint", "stability >= joint + 0.5")
    assert result.returncode == 1, result.stderr
    assert "no trial meets" in result.stdout and "closest: trial t" in result.stdout
    assert _files(studies["demo"]) == before


def test_report_writes_html(studies: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "report.html"
    result = sweep(
        "report", studies["demo"], "--output", output, "--constraint", "plasticity >= naive - 0.05"
    )
    assert result.returncode == 0, result.stderr
    assert output.stat().st_size > 20_000 and "Chosen setting" in output.read_text()
