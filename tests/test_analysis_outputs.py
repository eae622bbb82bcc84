"""Plots, the HTML report and the notebooks, on hand-made studies in the results schema."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from sweep.analysis import plots
from sweep.analysis.choose import choose
from sweep.analysis.io import Study, load_studies, load_study
from sweep.analysis.report import build_report, write_report
from sweep.errors import ConfigError, ResultsError
from tests.fake_study import make_study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    make_study(root, "ewc", n_trials=10, seed=0)
    make_study(root, "replay", n_trials=8, seed=1, strategy="replay")
    make_study(root, "flat", n_trials=8, seed=2, flat=True, scenario="class")
    return root


@pytest.fixture(scope="module")
def ewc(results: Path) -> Study:
    return load_study(results / "ewc")


def assert_real_png(path: Path, min_bytes: int = 15_000) -> None:
    """A PNG with content: big enough, and not one flat colour."""
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > min_bytes, path.stat().st_size
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200
    assert float(pixels[..., :3].std()) > 0.05  # white background alone would be 0
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 50  # markers, text, lines in many colours


def test_plot_front(ewc: Study, tmp_path: Path) -> None:
    plots.plot_front(ewc, tmp_path / "front.png")
    assert_real_png(tmp_path / "front.png")


def test_plot_sensitivity_log_axis_is_automatic(ewc: Study, tmp_path: Path) -> None:
    fig = plots.plot_sensitivity(ewc, "ewc_lambda", tmp_path / "lambda.png")
    assert fig.axes[0].get_xscale() == "log"  # λ spans 1e-2..1e6
    assert_real_png(tmp_path / "lambda.png")
    assert plots.plot_sensitivity(ewc, "hp_lr").axes[0].get_xscale() == "linear"  # lr spans one decade here
    assert plots.plot_sensitivity(ewc, "ewc_lambda", log=False).axes[0].get_xscale() == "linear"
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        plots.plot_sensitivity(ewc, "lambda")
    with pytest.raises(ConfigError, match="no finished trial with replay_size"):
        plots.plot_sensitivity(ewc, "replay_size")


def test_plot_accuracy_matrix(ewc: Study, tmp_path: Path) -> None:
    fig = plots.plot_accuracy_matrix(ewc, "t005", tmp_path / "matrix.png")
    labels = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    assert labels == ["init", "after task 1", "after task 2"]
    assert_real_png(tmp_path / "matrix.png", min_bytes=10_000)
    with pytest.raises(ResultsError, match="no test rows for trial t001"):  # the errored trial
        plots.plot_accuracy_matrix(ewc, "t001")


def test_plot_fronts(results: Path, tmp_path: Path) -> None:
    studies = load_studies([results / "ewc", results / "replay"])
    plots.plot_fronts(studies, tmp_path / "fronts.png")
    assert_real_png(tmp_path / "fronts.png")


def test_report_is_self_contained(ewc: Study, tmp_path: Path) -> None:
    path = write_report(
        ewc, tmp_path / "report.html", objective="stability", constraints=["plasticity >= naive - 0.05"]
    )
    text = path.read_text()
    images = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(images) >= 4 and all(
        src.startswith("data:image/png;base64,") for src in images
    )  # front, 2x sensitivity, matrix
    assert not re.search(r"https?://", text)
    assert "<script" not in text and "<link" not in text
    for heading in ("Setup", "Pareto front", "Top trials", "References", "Sensitivity", "Chosen setting"):
        assert f"<h2>{heading}" in text
    assert "Trade-off present" in text and "No trade-off" not in text
    assert "strategy: ewc" in text  # the chosen config as YAML


def test_report_says_when_there_is_no_tradeoff(results: Path) -> None:
    text = build_report(load_study(results / "flat"))
    assert "No trade-off" in text and "replay" in text


def test_report_default_path(results: Path, tmp_path: Path) -> None:
    study = load_study(make_study(tmp_path, "small", n_trials=4))
    assert write_report(study) == study.path / "report.html"
    assert not list(study.path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("notebook", "variable", "value"),
    [
        ("study.ipynb", "SWEEP_STUDY", ["ewc"]),
        ("compare.ipynb", "SWEEP_STUDIES", ["ewc", "replay", "flat"]),
    ],
)
def test_notebook_executes(
    results: Path, monkeypatch: pytest.MonkeyPatch, notebook: str, variable: str, value: list[str]
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv(variable, ",".join(str(results / name) for name in value))
    # the kernel inherits the environment; the package may not be installed yet
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    document = nbformat.read(ROOT / "analysis" / notebook, as_version=4)
    nbclient.NotebookClient(
        document, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "analysis")}}
    ).execute()
    images = [
        o for cell in document.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert images, "the notebook showed no plot"


@pytest.mark.ray
@pytest.mark.slow
def test_plots_and_report_from_a_real_sweep(ray_session: object, tmp_path: Path) -> None:
    runner = pytest.importorskip("sweep.tune.driver", reason="sweep.tune.driver (issue 4) not written yet")
    options = runner.SweepOptions(
        strategy="ewc", trials=3, seeds=2, epochs=1, results_dir=str(tmp_path), study="real", quiet=True
    )
    runner.run_sweep(options)
    study = load_study(tmp_path / "real")
    assert len(study.finished("search")) >= 2 and study.reference("naive") is not None
    plots.plot_front(study, tmp_path / "front.png")
    assert_real_png(tmp_path / "front.png")
    for param in study.searched_params():
        plots.plot_sensitivity(study, param, tmp_path / f"{param}.png")
        assert_real_png(tmp_path / f"{param}.png")
    best = choose(study, "acc")
    assert best.trial is not None
    plots.plot_accuracy_matrix(study, best.trial["trial_id"], tmp_path / "matrix.png")
    assert_real_png(tmp_path / "matrix.png", min_bytes=10_000)
    plots.plot_fronts([study], tmp_path / "fronts.png")
    assert_real_png(tmp_path / "fronts.png")
    text = write_report(
        study, tmp_path / "report.html", constraints=["plasticity >= naive - 0.5"]
    ).read_text()
    assert text.count("data:image/png;base64,") >= 3 and not re.search(r"https?://", text)
