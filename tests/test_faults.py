"""Fault injection: kills, interrupts, torn writes, crashing and diverging trials, concurrent drivers.

Each test starts the real ``sweep run`` in its own session (or uses the session-wide Ray), is
bounded by subprocess timeouts, and stops exactly the processes it started (by session id).
The test-only hooks are environment variables read by the driver: ``SWEEP_TEST_PAUSE_IN_WRITE``
and ``SWEEP_TEST_PAUSE_AFTER_WRITE`` (sweep/results.py), ``SWEEP_TEST_PID_DIR`` and
``SWEEP_TEST_RAISE_AT_LR`` (sweep/runner.py).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sweep.errors import SweepError
from sweep.results import LOCK_FILE, StudyStore, acquire_study_lock, release_study_lock
from tests.helpers import parquet_rows, run_cli, session_pids, start_cli, stop_session, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

T = 2  # split-digits' default number of tasks


def sweep_args(results: Path, study: str, *extra: str, trials: int = 2, epochs: int = 1) -> list[str]:
    """A small naive sweep without references: one seed, one trial at a time."""
    return ["run", "--strategy", "naive", "--trials", str(trials), "--seeds", "1", "--epochs", str(epochs),
            "--results", str(results), "--study", study, "--max-concurrent", "1", "--no-references", "--quiet",
            *extra]


def optuna_trials(study_dir: Path) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal")))
    return optuna.load_study(study_name=study_dir.name, storage=storage).trials


def check_study(study_dir: Path, search: int, seeds: int = 1) -> None:
    """Every trial exactly once, its accuracy rows complete, and Optuna's study agreeing with the Parquet files."""
    trials = pq.read_table(study_dir / "trials.parquet").to_pandas()
    assert trials.trial_id.is_unique and (trials.study == study_dir.name).all()
    assert (trials.role == "search").sum() == search
    accuracy = pq.read_table(study_dir / "accuracy.parquet").to_pandas()
    finished = set(trials.trial_id[trials.status == "finished"])
    assert set(accuracy.trial_id) <= set(trials.trial_id)  # no rows of a trial that was never committed
    sizes = accuracy.groupby("trial_id").size()
    for trial_id in finished:  # seeds x splits x (untrained + T tasks) x T evaluated tasks, none twice
        assert sizes[trial_id] == seeds * 2 * (T + 1) * T, trial_id
    assert not accuracy.duplicated(["trial_id", "seed", "split", "after_task", "eval_task"]).any()
    optuna = optuna_trials(study_dir)
    assert "RUNNING" not in {t.state.name for t in optuna}
    complete = {t.user_attrs.get("tune_trial_id"): t for t in optuna if t.state.name == "COMPLETE"}
    search_rows = trials[trials.role == "search"]
    told = search_rows[search_rows.status.isin(["finished", "diverged"])]
    assert set(complete) == set(told.trial_id)  # COMPLETE in Optuna <=> finished or diverged in Parquet
    for row in told.itertuples():
        values = complete[row.trial_id].values
        if row.status == "finished":
            assert values == pytest.approx([row.val_stability_mean, row.val_plasticity_mean])
    assert not list(study_dir.glob(".*.tmp"))  # no temporary file left behind


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# --- the driver killed at three points, then resumed
def test_sigkill_between_trials_then_resume(tmp_path: Path):
    """Killed after a trial is committed to Parquet but before Optuna was told: the resume tells it."""
    args = sweep_args(tmp_path, "between", trials=3)
    study = tmp_path / "between"
    proc = start_cli(*args, env={"SWEEP_TEST_PAUSE_AFTER_WRITE": "20"})
    try:
        assert wait_until(lambda: parquet_rows(study / "trials.parquet") >= 1, 120, proc), proc.stdout.read()
        kill(proc)  # inside the 20 s pause that follows the commit
    finally:
        stop_session(proc.pid)
    before = pq.read_table(study / "trials.parquet").to_pandas()
    assert len(before) == 1
    assert [t.state.name for t in optuna_trials(study)] == ["RUNNING"]  # the window this test is about
    assert (study / LOCK_FILE).exists()  # a stale lock, left by the killed driver
    resumed = run_cli(*args, "--resume", timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "closed 1 Optuna trial" in resumed.stdout
    check_study(study, search=3)
    after = pq.read_table(study / "trials.parquet").to_pandas()
    assert set(before.trial_id) <= set(after.trial_id)
    assert not (study / LOCK_FILE).exists()


def test_sigkill_while_trials_parquet_is_replaced_keeps_the_previous_file(tmp_path: Path):
    """A torn write: the kill lands between writing the temporary file and the rename over trials.parquet."""
    args = sweep_args(tmp_path, "torn")
    study = tmp_path / "torn"
    proc = start_cli(*args, env={"SWEEP_TEST_PAUSE_IN_WRITE": "3"})
    try:
        assert wait_until(lambda: parquet_rows(study / "trials.parquet") >= 1, 120, proc), proc.stdout.read()
        committed = (study / "trials.parquet").read_bytes()
        assert wait_until(lambda: any(p.stat().st_size for p in study.glob(".trials.parquet.*.tmp")), 120, proc)
        kill(proc)  # the second trial's row is in the temporary file, not yet renamed
    finally:
        stop_session(proc.pid)
    assert (study / "trials.parquet").read_bytes() == committed  # the previous file, untouched and readable
    assert len(list(study.glob(".trials.parquet.*.tmp"))) == 1
    store = StudyStore(study)
    assert len(store.trials) == 1
    raw_accuracy = pq.read_table(study / "accuracy.parquet").to_pandas()
    assert raw_accuracy.trial_id.nunique() == 2  # the second trial's accuracy was written first ...
    assert {r["trial_id"] for r in store.accuracy} == {store.trials[0]["trial_id"]}  # ... and is not part of it
    from sweep.analysis.io import load_study

    assert len(load_study(study).trials) == 1 and load_study(study).accuracy.trial_id.nunique() == 1

    resumed = run_cli(*args, "--resume", timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    check_study(study, search=2)
    states = sorted(t.state.name for t in optuna_trials(study))
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]  # the torn trial was never recorded: run again


# --- Ctrl-C and SIGTERM
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_flushes_finished_trials_exits_nonzero_and_leaves_no_ray(tmp_path: Path, signum: int):
    """Ctrl-C in a terminal signals the whole foreground process group: the driver and Ray's head processes."""
    args = ["run", "--strategy", "naive", "--trials", "2", "--seeds", "1", "--epochs", "40", "--results",
            str(tmp_path), "--study", "ctrl-c", "--max-concurrent", "1", "--quiet"]  # with the references
    study = tmp_path / "ctrl-c"
    proc = start_cli(*args)
    try:
        # the naive reference recorded, the joint one running: the search has not started
        assert wait_until(lambda: parquet_rows(study / "trials.parquet") >= 1, 120, proc), proc.stdout.read()
        committed = pq.read_table(study / "trials.parquet").to_pandas()
        os.killpg(proc.pid, signum)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signum, out
        assert "Traceback" not in out
        resume = next(line for line in out.splitlines() if "Resume with:" in line)
        assert "--resume" in resume and "--study ctrl-c" in resume and str(tmp_path) in resume
        assert wait_until(lambda: session_pids(proc.pid) == [], 30), session_pids(proc.pid)  # no Ray left
    finally:
        stop_session(proc.pid)
    after = pq.read_table(study / "trials.parquet").to_pandas()
    assert set(committed.trial_id) <= set(after.trial_id)  # finished trials kept
    assert "search" not in set(after.role)  # the sweep stopped: it did not go on to the search
    assert not (study / LOCK_FILE).exists()  # released on the way out
    assert not list(study.glob(".*.tmp"))


# --- a trial's worker process killed
def test_killed_trial_worker_is_retried_and_the_sweep_goes_on(tmp_path: Path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    args = sweep_args(tmp_path, "worker", epochs=40)
    study = tmp_path / "worker"
    proc = start_cli(*args, env={"SWEEP_TEST_PID_DIR": str(pid_dir)})
    try:
        assert wait_until(lambda: any(pid_dir.iterdir()), 120, proc), proc.stdout.read()
        first = next(pid_dir.iterdir())
        worker = int(first.name.split("-")[0])
        assert worker in session_pids(proc.pid)  # a process of the sweep we started, nothing else
        time.sleep(1.0)  # mid-trial
        os.kill(worker, signal.SIGKILL)
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:]
    finally:
        stop_session(proc.pid)
    check_study(study, search=2)
    trials = pq.read_table(study / "trials.parquet").to_pandas()
    killed = first.read_text()
    starts = [p.read_text() for p in pid_dir.iterdir()]
    assert killed in set(trials.trial_id)
    row = trials[trials.trial_id == killed].iloc[0]
    if row.status == "finished":  # retried (FailureConfig(max_failures=1)): it started twice
        assert starts.count(killed) == 2
    else:
        assert row.status == "error" and row.reason
    assert (trials.status == "finished").sum() >= 1  # the other trial ran


# --- a trial that raises and one that diverges
@pytest.mark.ray
def test_raising_and_diverging_trials_are_recorded_and_left_off_the_front(ray_session, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    import optuna

    from sweep.analysis.io import load_study
    from sweep.analysis.pareto import pareto_front
    from sweep.runner import SweepOptions, run_sweep

    lrs = [0.05, 0.02, 1.0e9, 0.01]  # finished, raises, diverges (sgd), finished

    class Cycle(optuna.samplers.BaseSampler):
        """Deterministic: trial n gets lrs[n]."""

        def infer_relative_search_space(self, study, trial):  # noqa: ANN001, ANN201
            return {}

        def sample_relative(self, study, trial, search_space):  # noqa: ANN001, ANN201
            return {}

        def sample_independent(self, study, trial, name, distribution):  # noqa: ANN001, ANN201
            return lrs[trial.number % len(lrs)]

    monkeypatch.setattr(optuna.samplers, "TPESampler", lambda **kwargs: Cycle())
    monkeypatch.setenv("SWEEP_TEST_RAISE_AT_LR", "0.02")
    space = tmp_path / "space.yaml"
    space.write_text("strategy: naive\nfixed: {optimizer: sgd, epochs: 1}\n"
                     f"params:\n  lr: {{type: categorical, choices: {lrs}}}\n")
    summary = run_sweep(SweepOptions(strategy="naive", space_file=str(space), trials=4, seeds=1,
                                     results_dir=str(tmp_path), study="faulty", quiet=True, max_concurrent=1))
    study_dir = tmp_path / "faulty"
    check_study(study_dir, search=4)
    df = pq.read_table(study_dir / "trials.parquet").to_pandas()
    search = df[df.role == "search"].set_index("hp_lr")
    assert summary.counts == {"finished": 4, "error": 1, "diverged": 1}  # the references too
    assert search.loc[0.02, "status"] == "error" and "injected fault" in search.loc[0.02, "reason"]
    assert search.loc[1.0e9, "status"] == "diverged" and "loss became" in search.loc[1.0e9, "reason"]
    assert (search.loc[[0.05, 0.01], "status"] == "finished").all()  # the sweep went on after both
    front = set(pareto_front(load_study(study_dir)).trial_id)
    assert front and front <= set(search.loc[[0.05, 0.01], "trial_id"])
    assert {r["trial_id"] for r in summary.front} <= set(search.loc[[0.05, 0.01], "trial_id"])
    states = {t.user_attrs["tune_trial_id"]: t.state.name for t in optuna_trials(study_dir)}
    assert states[search.loc[0.02, "trial_id"]] == "FAIL"


# --- concurrent drivers and the lock
def test_two_studies_at_once_and_a_second_driver_on_a_running_study_is_refused(tmp_path: Path):
    a_args, b_args = sweep_args(tmp_path, "a", epochs=30), sweep_args(tmp_path, "b", epochs=30)
    a, b = start_cli(*a_args), start_cli(*b_args)
    try:
        assert wait_until(lambda: (tmp_path / "a" / "study.json").exists(), 120, a)
        for extra in (["--resume"], []):  # same settings, with and without --resume: refused either way
            second = run_cli(*a_args, *extra, timeout=120)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in second.stderr
            assert f"already being run by process {a.pid} on" in lines[0] and "--resume" in lines[0]
        out_a, _ = a.communicate(timeout=300)
        out_b, _ = b.communicate(timeout=300)
        assert a.returncode == 0, out_a[-2000:]
        assert b.returncode == 0, out_b[-2000:]
    finally:
        stop_session(a.pid)
        stop_session(b.pid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    check_study(tmp_path / "a", search=2)
    check_study(tmp_path / "b", search=2)
    ids_a = set(pq.read_table(tmp_path / "a" / "trials.parquet").column("trial_id").to_pylist())
    ids_b = set(pq.read_table(tmp_path / "b" / "trials.parquet").column("trial_id").to_pylist())
    assert not ids_a & ids_b


def _race_for_lock(study_dir: str, start_at: float, results: multiprocessing.Queue) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    try:
        fd = acquire_study_lock(study_dir)
    except SweepError:
        results.put("refused")
        return
    time.sleep(1.0)
    release_study_lock(study_dir, fd)
    results.put("won")


def test_stale_lock_does_not_block_and_a_race_for_it_has_one_winner(tmp_path: Path):
    """A lock file naming a dead driver, or a live process that is not a driver, is no lock."""
    lock = tmp_path / LOCK_FILE
    for holder in (f"process {os.getpid()} on this-host", "process 999999 on elsewhere", "garbage"):
        lock.write_text(holder)
        fd = acquire_study_lock(tmp_path)
        with pytest.raises(SweepError, match=f"already being run by process {os.getpid()} on"):
            acquire_study_lock(tmp_path)  # while held, even by this very process, it is held
        release_study_lock(tmp_path, fd)
        assert not lock.exists()
    lock.write_text("process 999999 on elsewhere")  # stale, and six drivers resume at once
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 3.0
    racers = [ctx.Process(target=_race_for_lock, args=(str(tmp_path), start_at, results)) for _ in range(6)]
    for racer in racers:
        racer.start()
    try:
        outcomes = sorted(results.get(timeout=30) for _ in racers)
    finally:
        for racer in racers:
            racer.join(timeout=10)
    assert outcomes == ["refused"] * 5 + ["won"]


def test_clean_refuses_a_study_that_is_running(tmp_path: Path):
    from sweep.analysis.testing import make_study

    study = make_study(tmp_path, "busy", n_trials=2)
    (study / "ray").mkdir()
    fd = acquire_study_lock(study)
    try:
        result = run_cli("clean", str(study), timeout=60)
    finally:
        release_study_lock(study, fd)
    assert result.returncode == 2 and "already being run" in result.stderr and "Traceback" not in result.stderr
    assert (study / "ray").is_dir()
