"""`sweep run` through the real command: resume after SIGKILL, a two-node cluster, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import REPO, parquet_rows, run_cli, session_pids, start_cli, stop_session, wait_until

pytestmark = pytest.mark.slow


def optuna_states(study_dir: Path) -> list[str]:
    """States of the study's Optuna trials; [] while its journal does not hold the study yet."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal")))
    try:
        study = optuna.load_study(study_name=study_dir.name, storage=storage)
    except KeyError:  # no such study (yet)
        return []
    return [t.state.name for t in study.trials]


@pytest.mark.ray
def test_resume_after_sigkill_records_every_trial_once(tmp_path: Path):
    args = ("run", "--strategy", "naive", "--trials", "5", "--seeds", "1", "--epochs", "15", "--results",
            str(tmp_path), "--study", "killed", "--max-concurrent", "1", "--quiet")
    study = tmp_path / "killed"
    proc = start_cli(*args)
    try:
        # references (2) and at least one search trial recorded, the next one running (asked of Optuna:
        # right after a trial is told there is a moment with none running, and a kill there is another test's)
        assert wait_until(lambda: parquet_rows(study / "trials.parquet") >= 3 and "RUNNING" in optuna_states(study),
                          180, proc), proc.stdout.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop_session(proc.pid)
    before = pq.read_table(study / "trials.parquet").to_pandas()
    assert "RUNNING" in optuna_states(study) or len(before) == 7
    resumed = run_cli(*args, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = pq.read_table(study / "trials.parquet").to_pandas()
    assert len(after) == 7 and after.trial_id.is_unique  # 5 search + naive + joint, each exactly once
    assert set(before.trial_id) <= set(after.trial_id)  # nothing finished was lost
    assert sorted(after.role.value_counts().items()) == [("joint", 1), ("naive", 1), ("search", 5)]
    accuracy = pq.read_table(study / "accuracy.parquet").to_pandas()
    assert set(accuracy.trial_id) == set(after.trial_id)
    assert accuracy.groupby("trial_id").size().eq(1 * 2 * 3 * 2).all()  # no duplicated accuracy rows
    states = optuna_states(study)
    assert "RUNNING" not in states and states.count("COMPLETE") == 5


@pytest.mark.ray
def test_sweep_on_a_two_node_cluster_joined_with_address(tmp_path: Path):
    """A real two-node Ray cluster on this machine; the sweep joins it with --address."""
    script = tmp_path / "cluster.py"
    script.write_text(textwrap.dedent(f"""
        import json, subprocess, sys, time
        from ray.cluster_utils import Cluster
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1, "include_dashboard": False}})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        try:
            run = subprocess.run([sys.executable, "-m", "sweep.cli", "run", "--strategy", "naive", "--trials", "4",
                                  "--seeds", "1", "--epochs", "120", "--results", {str(tmp_path)!r}, "--study", "c",
                                  "--address", cluster.address, "--no-references", "--quiet"],
                                 capture_output=True, text=True, timeout=400)
            print(json.dumps({{"rc": run.returncode, "err": run.stderr[-1500:]}}))
        finally:
            cluster.shutdown()
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=500)
    finally:
        stop_session(proc.pid)
    assert out.strip(), err[-2000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["rc"] == 0, report["err"]
    df = pq.read_table(tmp_path / "c" / "trials.parquet").to_pandas()
    assert len(df) == 4 and (df.status == "finished").all()
    assert df.node.nunique() == 2  # trials ran on both nodes; every result landed on the driver


BAD_RUNS = [
    ("unknown strategy", ["--strategy", "ewk"], "ewk"),
    ("missing space file", ["--strategy", "naive", "--space", "/nonexistent/space.yaml"], "space.yaml"),
    ("zero trials", ["--trials", "0"], "--trials"),
    ("negative seeds", ["--seeds", "-1"], "--seeds"),
    ("non-integer trials", ["--trials", "many"], "--trials"),
    ("unknown sampler", ["--sampler", "grid"], "grid"),
    ("unknown benchmark", ["--benchmark", "imagenet"], "imagenet"),
    ("unknown scenario", ["--scenario", "online"], "online"),
    ("too many gpus", ["--strategy", "naive", "--gpus-per-trial", "1"], "--gpus-per-trial"),
    ("unreachable address", ["--strategy", "naive", "--address", "127.0.0.1:1"], "127.0.0.1:1"),
    ("results not writable", ["--strategy", "naive", "--results", "{file}/sub"], "not writable"),
    ("negative cpus", ["--cpus-per-trial", "-1"], "--cpus-per-trial"),
    ("frozen layers beyond the model", ["--strategy", "freeze", "--space", "{freeze_all}"], "frozen_layers"),
]


@pytest.mark.parametrize("case,extra,needle", BAD_RUNS, ids=[c[0] for c in BAD_RUNS])
def test_bad_run_input_is_one_line_exit_2_nothing_written(tmp_path: Path, case: str, extra: list[str], needle: str):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    freeze_all = tmp_path / "freeze.yaml"
    freeze_all.write_text("strategy: freeze\nparams:\n  frozen_layers: {type: int, low: 0, high: 3}\n")
    results = tmp_path / "results"
    extra = [e.format(file=blocker, freeze_all=freeze_all) for e in extra]
    proc = start_cli("run", "--results", str(results), "--trials", "1", "--seeds", "1", *extra)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        stop_session(proc.pid)
    assert proc.returncode == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out, out
    assert needle in lines[0]
    assert not results.exists() or not any(results.iterdir())  # no half-made study folder
    assert session_pids(proc.pid) == []  # no Ray process left running
