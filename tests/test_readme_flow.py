"""The README's quick start and main use, run as written, in order, in a fresh copy of the repository
(smoke sizes): the quick start's study, its notebooks with their shipped defaults, then the first
main-use sweep (a study of its own: no collision with the quick start's), `sweep choose` and `sweep train`."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, cli_env, stop_session

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# smoke sizes, appended to the README's own commands
QUICKSTART_SMOKE = ["-o", "install", "QUICKSTART_TRIALS=3", "QUICKSTART_SEEDS=2"]  # -o install: installed already
# two trials: with the fine-tuning learning rate searched from 1e-5, the default sampler seed's two random start-up
# points both learn too little for the README's constraint; seed 3's second point meets it (checked: 84.5% against
# naive's 78.1%), so the smoke run goes on to choose and train as the README does
SWEEP_SMOKE = ["TRIALS=2", "SEEDS=1", "EPOCHS=1", "SWEEP_ARGS=--sampler-seed 3"]
_CACHES = shutil.ignore_patterns(".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
                                 "__pycache__", "*.egg-info")
# what a working tree holds besides the code, by where it is: never sweep/results or sweep/data, the packages
_OUTPUTS = {REPO / "results", REPO / "bench" / "out", REPO / "tests" / "data"}


def COPY_IGNORE(folder: str, names: list[str]) -> set[str]:
    return set(_CACHES(folder, names)) | {name for name in names if Path(folder, name) in _OUTPUTS}


def section_blocks(readme: str, title: str) -> list[list[str]]:
    """The ```bash blocks of one ``## title`` section, each as its command lines (comments cut)."""
    section = readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [[line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()] for block in blocks]


def command_for(line: str) -> list[str] | None:
    """The README line as this test runs it: at smoke size, with this interpreter; None: not run here."""
    words = shlex.split(line)
    if words[:2] == ["make", "test"]:
        return None  # the suite this test is part of
    if words[:2] == ["make", "quickstart"]:
        return ["make", *words[1:], *QUICKSTART_SMOKE, f"PYTHON={sys.executable}"]
    if words[:2] == ["make", "sweep"]:
        return ["make", *words[1:], *SWEEP_SMOKE, f"PYTHON={sys.executable}"]
    if words[0] == "sweep":
        return [sys.executable, "-m", "sweep.cli", *words[1:]]
    if words[0] == "jupyter":
        return [sys.executable, "-m", "jupyter", *words[1:]]
    raise AssertionError(f"the README runs {line!r}, which this test does not know how to run")


def run_step(command: list[str], cwd: Path, timeout: float = 900) -> str:
    proc = subprocess.Popen(command, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop_session(proc.pid)  # whatever it left running (Ray), by its session id
    assert proc.returncode == 0, f"{shlex.join(command)} exited {proc.returncode}:\n{out[-4000:]}"
    return out


def test_readme_quick_start_then_main_use_in_a_fresh_folder(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    quick, notebooks = section_blocks(readme, "Quick start")[:2]
    main_use = section_blocks(readme, "Main use")[0]
    work = tmp_path / "clone"
    shutil.copytree(REPO, work, ignore=COPY_IGNORE)
    outputs = []
    for line in quick + notebooks + main_use:
        command = command_for(line)
        if command is not None:
            outputs.append((line, run_step(command, work)))
    quickstart = next(out for line, out in outputs if line.startswith("make quickstart"))
    # the live status, as plain lines (not a terminal here), ending with every trial done
    assert re.search(r"^trials: 0/5 done, \d running, \d pending \| 0:\d\d elapsed", quickstart, re.M), quickstart
    assert "trials: 5/5 done, 0 running, 0 pending" in quickstart
    assert "Recommended setting (the default question" in quickstart  # sweep report prints its headline
    report = (work / "results" / "quickstart" / "report.html").read_text()
    assert "Recommended setting" in report and "domain-incremental" in report
    # the notebooks ran with their shipped defaults (the quick start's study) and kept their plots
    for name in ("study", "compare"):
        executed = (work / "analysis" / f"{name}.ipynb").read_text()
        assert "image/png" in executed and '"output_type": "error"' not in executed, name
    # the main use made a study of its own, and chose from it
    assert (work / "results" / "ewc-split-digits-task" / "trials.parquet").is_file()
    assert (work / "results" / "ewc-split-digits-task" / "chosen.yaml").is_file()
