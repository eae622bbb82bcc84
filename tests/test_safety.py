"""Safety: no unsafe deserialisation, Ray's dashboard local or off, no training data left in a study."""

from __future__ import annotations

import ast
import io
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers import REPO, run_cli

PACKAGE = REPO / "sweep"
SOURCES = sorted(PACKAGE.rglob("*.py"))
ANALYSIS = PACKAGE / "analysis"
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> object:
    value = next((k.value for k in call.keywords if k.arg == name), None)
    return value.value if isinstance(value, ast.Constant) else value


def unsafe_calls(path: Path, analysis: bool) -> list[str]:
    """Every call in ``path`` that could run code from a file it reads (``analysis``: stricter rules)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name.endswith("torch.load") and _keyword(node, "weights_only") is not True:
                found.append(f"{where}: {name}( without weights_only=True")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
                found.append(f"{where}: {name}( (use yaml.safe_load)")
            if name.endswith("read_pickle") or (name.endswith("np.load") and _keyword(node, "allow_pickle") is True):
                found.append(f"{where}: {name}( unpickles")
            if analysis and name.endswith("torch.load"):
                found.append(f"{where}: the analysis side reads only Parquet and YAML")
        if analysis and isinstance(node, ast.Import | ast.ImportFrom):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}: imports {m} on the analysis side" for m in modules if m.split(".")[0] in UNPICKLERS]
    return found


def test_the_scan_finds_what_it_looks_for(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport yaml, torch\nyaml.load(s)\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
                   "import pandas as pd\npd.read_pickle(p)\ntorch.load(f, weights_only=True)\nyaml.safe_load(s)\n")
    assert len(unsafe_calls(bad, analysis=False)) == 4  # yaml.load, torch.load twice, read_pickle
    assert len(unsafe_calls(bad, analysis=True)) == 8  # and pickle, and torch.load at all (three times)


def test_no_unsafe_deserialisation_anywhere_in_the_package():
    assert SOURCES and any(p.parent == ANALYSIS for p in SOURCES)
    found = [problem for path in SOURCES for problem in unsafe_calls(path, analysis=ANALYSIS in path.parents)]
    assert found == []


# --- Ray's dashboard
@pytest.mark.parametrize("dashboard", [False, True])
@pytest.mark.parametrize("address", [None, "127.0.0.1:6379"])
def test_dashboard_is_off_by_default_and_local_when_on(monkeypatch: pytest.MonkeyPatch, dashboard: bool,
                                                        address: str | None):
    import ray

    from sweep.tune import ray_session

    calls = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_session, "check_reachable", lambda address: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_session.init_ray(address, dashboard)
    [kwargs] = calls
    assert kwargs["include_dashboard"] is dashboard
    if dashboard:
        assert kwargs["dashboard_host"] == "127.0.0.1"
    else:
        assert kwargs.get("dashboard_host", "127.0.0.1") == "127.0.0.1"


def test_dashboard_flag():
    from sweep.cli import build_parser

    parser = build_parser("run")
    assert parser.parse_args(["run"]).dashboard is False
    assert parser.parse_args(["run", "--dashboard"]).dashboard is True


# --- no training data under results/<study>; `sweep clean` removes checkpoints and caches
def sample_patterns(images: torch.Tensor) -> list[bytes]:
    """The ways an image could be stored: raw uint8, float32 in [0, 1] and in [0, 255], float64 in [0, 1]."""
    patterns = []
    for image in images:
        pixels = image.reshape(-1).numpy()
        for values in (pixels, pixels.astype("<f4") / 255, pixels.astype("<f4"), pixels.astype("<f8") / 255):
            patterns.append(np.ascontiguousarray(values).tobytes())
    return patterns


def contents(path: Path) -> list[bytes]:
    """A file's bytes, plus each member of a zip (torch.save writes one) as stored uncompressed."""
    data = path.read_bytes()
    out = [data]
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            out += [archive.read(name) for name in archive.namelist()]
    return out


def files_holding(folder: Path, patterns: list[bytes]) -> list[str]:
    return sorted({str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                   for blob in contents(p) for pattern in patterns if pattern in blob})


def distinctive_images(split_x: torch.Tensor, count: int = 3) -> torch.Tensor:
    """Images with the most distinct pixel values: no chance match in other bytes."""
    distinct = torch.tensor([len(torch.unique(x)) for x in split_x])
    return split_x[torch.argsort(distinct, descending=True)[:count]]


@pytest.mark.ray
@pytest.mark.slow
def test_no_training_sample_is_written_and_clean_keeps_only_results(ray_session, tmp_path: Path):
    from sweep.analysis.io import load_study
    from sweep.data.benchmarks import build_benchmark
    from sweep.tune.driver import SweepOptions, run_sweep

    run_sweep(SweepOptions(strategy="ewc+replay", trials=2, seeds=1, epochs=1, results_dir=str(tmp_path),
                           study="rehearsal", references=False, quiet=True))
    study = tmp_path / "rehearsal"
    benchmark = build_benchmark("split-digits")
    images = torch.cat([distinctive_images(task.train.x) for task in benchmark.tasks])
    patterns = sample_patterns(images)

    # the scan would see them: in a plain file and in a torch.save'd tensor
    control = tmp_path / "control"
    control.mkdir()
    (control / "raw.bin").write_bytes(b"header" + images[0].numpy().tobytes())
    torch.save({"buffer": images.float() / 255}, control / "buffer.pt")
    assert files_holding(control, patterns) == ["buffer.pt", "raw.bin"]

    assert (study / "ray").is_dir()  # Tune's experiment folder is there to be scanned
    assert files_holding(study, patterns) == []
    for name in ("trials.parquet", "accuracy.parquet"):  # and no column could hold an image
        schema = pq.read_schema(study / name)
        assert all(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t)
                   for t in schema.types), schema

    before = load_study(study).trials
    (study / ".trials.parquet.0123456789abcdef.tmp").write_bytes(b"a torn write")  # the pattern of sweep.atomic's
    result = run_cli("clean", str(study), timeout=120)
    assert result.returncode == 0, result.stderr
    kept = sorted(p.name for p in study.iterdir())
    assert kept == sorted({"trials.parquet", "accuracy.parquet", "study.json", "optuna.journal"} & set(kept))
    assert {"trials.parquet", "accuracy.parquet", "study.json"} <= set(kept)
    assert not (study / "ray").exists() and not (study / "cache").exists()
    assert load_study(study).trials.equals(before)
    again = run_cli("clean", str(study), timeout=120)
    assert again.returncode == 0 and "nothing to remove" in again.stdout


# --- genreplay's generator is a model of the training data: it never leaves the trial's memory
GENERATOR_NAMES = (b"log_var", b"decoder.", b"encoder.")  # its state_dict keys, as torch.save would pickle them


def generator_traces(folder: Path) -> list[str]:
    """Files under ``folder`` that hold a generator: its parameter names in any file's bytes (or a zip member's), or
    a tensor torch can read with the generator's hidden width (400; the classifiers here are narrower) in its shape."""
    from sweep.models.vae import HIDDEN

    found = set()
    for path in (p for p in folder.rglob("*") if p.is_file()):
        if any(name in blob for blob in contents(path) for name in GENERATOR_NAMES):
            found.add(str(path.relative_to(folder)))
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # not a torch file
            continue
        stack = [loaded]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list | tuple):
                stack.extend(item)
            elif isinstance(item, torch.Tensor) and HIDDEN in item.shape:
                found.add(str(path.relative_to(folder)))
    return sorted(found)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the scan tries every file of Ray's as a torch file
def test_no_generator_weights_are_written_by_a_genreplay_sweep(ray_session, tmp_path: Path):
    from sweep.analysis.io import load_study
    from sweep.models.vae import VAE
    from sweep.tune.driver import SweepOptions, run_sweep

    run_sweep(SweepOptions(strategy="genreplay", trials=2, seeds=1, epochs=1, results_dir=str(tmp_path),
                           study="generative", references=False, quiet=True))  # the prefix cache is on by default
    study = tmp_path / "generative"
    assert (load_study(study).trials["status"] == "finished").sum() == 2

    # the scan would see a generator: its state_dict, or its tensors saved without their names
    control = tmp_path / "control"
    control.mkdir()
    vae = VAE((1, 8, 8), latent=16)
    torch.save(vae.state_dict(), control / "generator.pt")
    torch.save([p.detach() for p in vae.parameters()], control / "tensors.pt")
    torch.save({"classifier": torch.zeros(256, 64)}, control / "classifier.pt")
    assert generator_traces(control) == ["generator.pt", "tensors.pt"]

    assert (study / "ray").is_dir()  # Tune's experiment folder is there to be scanned
    assert generator_traces(study) == []
    assert not [p for p in (study / "cache").rglob("*") if p.is_file()]  # genreplay trials skip the prefix cache
