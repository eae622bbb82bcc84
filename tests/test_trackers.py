"""``sweep run --log mlflow,wandb,tensorboard``: Ray Tune's own logger callbacks, writing inside the study folder.

One real sweep (split-digits, 1 seed, 1 epoch) starts a study without ``--log`` and is resumed with every
tracker installed here (trackers are not part of the study): each tracker's files are read back
(TensorBoard's event records, MLflow's store through its client, W&B's offline run) for both objectives and
the per-task metrics; ``sweep clean`` removes them. A misspelt or missing tracker is one line, exit 2,
nothing written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sweep.errors import ConfigError, SweepError
from sweep.results.schema import METRICS, SPLITS, metric_column
from sweep.results.store import check_study_folder
from sweep.tune.trackers import MODULES, TRACKERS, logged, prepare_folders, trackers
from tests.helpers import REPO, cli_env

INSTALLED = tuple(name for name in TRACKERS if importlib.util.find_spec(MODULES[name]) is not None)
PER_TASK = ("stability", "plasticity", "tasks_done", "val_stability_mean", "test_plasticity_std",
            "val_bwt_mean", "test_acc_mean")


def _installed(name: str) -> None:
    if name not in INSTALLED:
        pytest.skip(f"{MODULES[name]} is not installed (make install installs it)")


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --- a real sweep: started without --log, resumed with every tracker installed
@pytest.fixture(scope="module")
def study(ray_session: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sweep.tune.driver import SweepOptions, run_sweep

    results, cwd = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("cwd")
    options = dict(strategy="ewc", seeds=1, epochs=1, references=False, results_dir=str(results), study="logged",
                   quiet=True)
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("WANDB_MODE", "WANDB_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
            patch.delenv(variable, raising=False)
        patch.chdir(cwd)
        first = run_sweep(SweepOptions(trials=1, **options))  # type: ignore[arg-type]
        assert first.counts["finished"] == 1
        study = results / "logged"
        assert json.loads((study / "study.json").read_text())["writes"]["in_study"] == ["cache", "ray"]
        assert not (study / "trackers").exists()
        # a resume may log where the study did not: trackers are not part of the study
        resumed = run_sweep(SweepOptions(trials=2, resume=True, log=INSTALLED, **options))  # type: ignore[arg-type]
        assert resumed.counts["finished"] == 2
    assert not any(cwd.iterdir()), "nothing in the working folder (MLflow's default ./mlruns)"
    return study


def _trial_ids(study: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(study / "trials.parquet").column("trial_id").to_pylist()


def _events(path: Path) -> dict[str, dict[int, float]]:
    """A TensorBoard event file's scalars: tag -> step -> value (its TFRecord framing read by hand)."""
    from tensorboardX.proto import event_pb2

    data, offset, scalars = path.read_bytes(), 0, {}
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[offset + 12:offset + 12 + length])  # after the length and its CRC
        offset += 12 + length + 4
        for value in event.summary.value:
            if value.WhichOneof("value") == "simple_value":
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


@pytest.mark.ray
@pytest.mark.slow
def test_tensorboard_gets_both_objectives_after_every_task_inside_the_study(study: Path) -> None:
    folder = study / "trackers" / "tensorboard"
    assert [p.name for p in folder.iterdir()] == _trial_ids(study)[1:]  # the resumed sweep's trial
    for trial in folder.iterdir():
        (events,) = trial.glob("events.out.tfevents.*")
        scalars = _events(events)
        for key in PER_TASK:
            assert set(scalars[f"ray/tune/{key}"]) == {1, 2}, key  # step: tasks done, after each of the 2 tasks
        assert scalars["ray/tune/tasks_done"] == {1: 1.0, 2: 2.0}
        assert 0 <= scalars["ray/tune/stability"][2] <= 1 and 0 <= scalars["ray/tune/plasticity"][2] <= 1
        assert not any("accuracy" in tag or "wrote" in tag or "config" in tag for tag in scalars), sorted(scalars)


@pytest.mark.ray
@pytest.mark.slow
def test_mlflow_gets_a_run_per_trial_with_every_metric_per_task(study: Path) -> None:
    _installed("mlflow")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{study / 'trackers' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("logged")
    assert experiment is not None and experiment.artifact_location.startswith((study / "trackers").as_uri())
    runs = client.search_runs([experiment.experiment_id])
    logged_ids = {run.data.tags["trial_id"] for run in runs}
    assert len(runs) == 1 and logged_ids == set(_trial_ids(study)[1:])  # the resumed sweep's trial
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["role"] == "search"
    assert {"ewc_lambda", "fisher"} <= set(run.data.params)  # the searched hyperparameters
    expected = {metric_column(s, m, st) for s in SPLITS for m in METRICS for st in ("mean", "std")}
    assert expected | {"stability", "plasticity", "tasks_done"} <= set(run.data.metrics)
    for key in ("stability", "plasticity", "val_forgetting_mean"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
    stability = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "stability")}
    val = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_stability_mean")}
    assert stability == val  # the objective is the validation mean over seeds


@pytest.mark.ray
@pytest.mark.slow
def test_wandb_runs_offline_in_the_study_folder(study: Path) -> None:
    _installed("wandb")
    folder = study / "trackers" / "wandb"
    runs = sorted((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.rsplit("-", 1)[1] == _trial_ids(study)[1]  # W&B's run id: the trial's
    data = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in PER_TASK:
        assert key.encode() in data, key
    assert not list((folder / "wandb").glob("run-*")), "offline: never a synced run"


@pytest.mark.ray
@pytest.mark.slow
def test_the_study_records_the_trackers_folder_and_clean_removes_it(study: Path, tmp_path: Path) -> None:
    from sweep.tune.cleaning import clean_study

    meta = json.loads((study / "study.json").read_text())
    assert meta["writes"]["in_study"] == ["cache", "ray", "trackers"]  # recorded by the resume that added --log
    copy = tmp_path / "logged"
    shutil.copytree(study, copy)
    report = clean_study(copy)
    assert str(copy / "trackers") in report.removed and not (copy / "trackers").exists()
    assert {p.name for p in copy.iterdir()} >= {"trials.parquet", "study.json"}


# --- the record: a new study with --log names the folder from the start; an older study gets it added
def test_a_new_study_with_log_records_the_trackers_folder_with_or_without_storage(tmp_path: Path) -> None:
    from sweep.tune.study import new_study_writes

    assert new_study_writes(None, "s", trackers=True)["writes"]["in_study"] == ["cache", "ray", "trackers"]
    assert new_study_writes(None, "s")["writes"]["in_study"] == ["cache", "ray"]
    with_storage = new_study_writes(str(tmp_path), "s", trackers=True)["writes"]
    assert with_storage["in_study"] == ["trackers"] and with_storage["storage"].startswith(str(tmp_path))


def test_a_study_from_before_the_record_gets_the_trackers_folder_recorded_and_cleaned(tmp_path: Path) -> None:
    from sweep.tune.cleaning import clean_study
    from sweep.tune.study import record_in_study

    study = tmp_path / "old"
    shutil.copytree(REPO / "tests" / "data" / "study_v2", study)
    assert "writes" not in json.loads((study / "study.json").read_text())
    record_in_study(study, "trackers")
    record_in_study(study, "trackers")  # once
    meta = json.loads((study / "study.json").read_text())
    assert meta["writes"] == {"in_study": ["cache", "ray", "trackers"], "storage": None}
    prepare_folders(study, ("tensorboard",))
    (study / "trackers" / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")
    (study / "mine").mkdir()  # the user's own folder: never named, never removed
    report = clean_study(study)
    assert report.removed == [str(study / "trackers")] and (study / "mine").is_dir()


def test_a_link_in_place_of_the_trackers_folder_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    study = tmp_path / "s"
    study.mkdir()
    (study / "trackers").symlink_to(elsewhere)
    with pytest.raises(SweepError, match="trackers"):
        check_study_folder(study)
    (study / "trackers").unlink()
    (study / "trackers").mkdir()
    (study / "trackers" / "mlflow").symlink_to(elsewhere)
    with pytest.raises(SweepError, match="mlflow"):
        prepare_folders(study, ("mlflow",))
    assert not any(elsewhere.iterdir())


# --- what the trackers get of a report
def test_only_task_ends_with_measured_metrics_are_logged() -> None:
    report = {"stability": 0.9, "plasticity": 0.8, "objective": 0.9, "tasks_done": 2, "status": "running",
              "final": False, "reason": "", "val_stability_mean": 0.9, "val_stability_std": 0.0, "wrote": {"a": "b"},
              "accuracy": {"0": {"val": [[1.0]]}}, "training_iteration": 7, "rung_task": 2, "rung_epoch": 0}
    assert logged(report) == {"stability": 0.9, "plasticity": 0.8, "objective": 0.9, "tasks_done": 2,
                              "val_stability_mean": 0.9, "val_stability_std": 0.0, "training_iteration": 2}
    assert logged({**report, "rung_epoch": 3}) is None  # an epoch rung inside a task
    assert logged({**report, "status": "diverged", "stability": 0.0}) is None  # invented zeros, not metrics
    assert logged({**report, "status": "pruned"}) is None


# --- bad input: one line, exit 2, nothing written
def test_trackers_are_checked_and_named() -> None:
    assert trackers(("tensorboard", "tensorboard")) == ("tensorboard",)
    assert trackers("tensorboard") == ("tensorboard",)
    assert trackers(()) == ()
    with pytest.raises(ConfigError, match=r"--log 'mlfow' is unknown; allowed: mlflow, wandb, tensorboard "
                                          r"\(did you mean 'mlflow'\?\)"):
        trackers(("mlfow",))
    with pytest.raises(ConfigError, match="--log must name trackers"):
        trackers((1,))


@pytest.mark.parametrize("name", TRACKERS)
def test_a_tracker_not_installed_is_named_with_its_pip_command(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, MODULES[name], None)  # what `import` and find_spec see for a missing package
    with pytest.raises(ConfigError) as info:
        trackers((name,))
    message = str(info.value)
    assert "\n" not in message and f"--log {name} needs the Python package {MODULES[name]}" in message
    assert f"pip install -e '.[{name}]'" in message


_MISSING = """
import sys
sys.modules[sys.argv[1]] = None  # the package is not installed
from sweep.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sweep_run_refuses_a_missing_tracker_in_one_line_writing_nothing(tmp_path: Path) -> None:
    """(A misspelt one is a row of test_bad_input.py's table.)"""
    (tmp_path / "keep").write_text("x")
    before = _listing(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _MISSING, "mlflow", "run", "--strategy", "ewc", "--results",
                           str(tmp_path / "results"), "--log", "tensorboard", "--log", "mlflow"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=cli_env({"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                   os.environ.get("PYTHONPATH")]))}))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("sweep run: error: --log mlflow needs the Python package mlflow, which is not "
                                  "installed: pip install -e '.[mlflow]'"), proc.stderr
    assert _listing(tmp_path) == before  # no results folder, no study, no trackers


def test_wandb_online_without_a_key_is_refused_before_the_sweep_starts(tmp_path: Path) -> None:
    _installed("wandb")
    code = "from sweep.tune.trackers import trackers; trackers(('wandb',))"
    env = cli_env({"PYTHONPATH": str(REPO), "WANDB_MODE": "online", "HOME": str(tmp_path),
                   "WANDB_CONFIG_DIR": str(tmp_path / "config"), "NETRC": str(tmp_path / "netrc")})
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0 and "needs a W&B API key" in proc.stderr, proc.stderr
    env["WANDB_MODE"] = "offline"  # the default when unset: no key needed
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


def test_sweep_run_log_takes_commas_and_repeats_and_its_help_lists_every_tracker() -> None:
    from sweep.cli import build_parser

    args = build_parser("run").parse_args(["run", "--log", "mlflow,tensorboard", "--log", "wandb"])
    assert args.log == ["mlflow", "tensorboard", "wandb"]
    text = args._parser.format_help()
    assert "--log TRACKER[,TRACKER]" in text
    for name in TRACKERS:
        assert name in text.split("--log TRACKER[,TRACKER]")[-1], name
