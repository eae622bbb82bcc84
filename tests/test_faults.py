"""Fault injection: kills, interrupts, torn writes, crashing and diverging trials, concurrent drivers.

Each test starts the real ``sweep run`` in its own session (or uses the session-wide Ray), is
bounded by subprocess timeouts, and stops exactly the processes it started (by session id).
The faults (pauses inside and after a write, a pid file per trial start, a trial that raises)
are injected from tests/faults/: the package has no test-only switch (tests/test_architecture.py).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sweep.commands.run import end_front
from sweep.errors import SweepError
from sweep.results.store import LOCK_FILE, StudyStore, acquire_study_lock, release_study_lock
from tests.faults import (
    PAUSE_AFTER_WRITE_ENV,
    PAUSE_IN_WRITE_ENV,
    PHASES,
    PID_DIR_ENV,
    SIGNAL_AT_ENV,
    fault_env,
    raising_at_lr,
)
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
# (during a trial: tests/test_sweep_cli.py::test_resume_after_sigkill_records_every_trial_once)
def test_sigkill_between_trials_and_while_writing_then_resume(tmp_path: Path):
    """Two kills of one study, each resumed: one driver start fewer than two separate tests.

    1. Between trials: after a trial is committed to Parquet, before Optuna is told (a pause there).
    2. A torn write: the resumed driver killed between writing the temporary file and the rename over
       trials.parquet (a pause there); the previous file must be left as it was, readable.
    """
    args = sweep_args(tmp_path, "killed", trials=3)
    study = tmp_path / "killed"
    proc = start_cli(*args, env=fault_env(**{PAUSE_AFTER_WRITE_ENV: "20"}))
    try:
        assert wait_until(lambda: parquet_rows(study / "trials.parquet") >= 1, 120, proc), proc.stdout.read()
        kill(proc)  # inside the 20 s pause that follows the commit
    finally:
        stop_session(proc.pid)
    first = pq.read_table(study / "trials.parquet").to_pandas()
    assert len(first) == 1
    assert [t.state.name for t in optuna_trials(study)] == ["RUNNING"]  # the window this kill is about
    assert (study / LOCK_FILE).exists()  # a stale lock, left by the killed driver: it must not block

    proc = start_cli(*args, "--resume", env=fault_env(**{PAUSE_IN_WRITE_ENV: "2"}))
    try:
        assert wait_until(lambda: parquet_rows(study / "trials.parquet") >= 2, 120, proc), proc.stdout.read()
        committed = (study / "trials.parquet").read_bytes()
        assert wait_until(lambda: any(p.stat().st_size for p in study.glob(".trials.parquet.*.tmp")), 120, proc)
        kill(proc)  # the third trial's row is in the temporary file, not yet renamed
    finally:
        stop_session(proc.pid)
    assert (study / "trials.parquet").read_bytes() == committed  # the previous file, untouched and readable
    assert len(list(study.glob(".trials.parquet.*.tmp"))) == 1
    store = StudyStore(study)
    assert len(store.trials) == 2 and set(first.trial_id) <= {r["trial_id"] for r in store.trials}
    raw_accuracy = pq.read_table(study / "accuracy.parquet").to_pandas()
    assert raw_accuracy.trial_id.nunique() == 3  # the third trial's accuracy was written first ...
    assert {r["trial_id"] for r in store.accuracy} == {r["trial_id"] for r in store.trials}  # ... and is not in
    from sweep.analysis.io import load_study

    loaded = load_study(study)
    assert len(loaded.trials) == 2 and loaded.accuracy.trial_id.nunique() == 2

    resumed = run_cli(*args, "--resume", timeout=480)  # two trials and a Ray start, on a machine others share
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    check_study(study, search=3)  # the trial left RUNNING by kill 1 is COMPLETE, with its row's values
    after = pq.read_table(study / "trials.parquet").to_pandas()
    assert {r["trial_id"] for r in store.trials} <= set(after.trial_id)  # nothing committed was lost
    states = sorted(t.state.name for t in optuna_trials(study))
    assert states == ["COMPLETE"] * 3 + ["FAIL"]  # the torn trial was never recorded: closed, run again
    assert not (study / LOCK_FILE).exists()


# --- Ctrl-C and SIGTERM
def test_ctrl_c_flushes_finished_trials_exits_nonzero_and_leaves_no_ray(tmp_path: Path):
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group, Ray's head processes too."""
    args = ["run", "--strategy", "naive", "--trials", "2", "--seeds", "1", "--epochs", "20", "--results",
            str(tmp_path), "--study", "ctrl-c", "--max-concurrent", "1", "--quiet"]  # with the references
    study = tmp_path / "ctrl-c"
    proc = start_cli(*args)
    try:
        # the naive reference recorded, the joint one running: the search has not started
        assert wait_until(lambda: parquet_rows(study / "trials.parquet") >= 1, 120, proc), proc.stdout.read()
        committed = pq.read_table(study / "trials.parquet").to_pandas()
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, out
        check_interrupted(out, proc.pid, tmp_path, "ctrl-c")
    finally:
        stop_session(proc.pid)
    after = pq.read_table(study / "trials.parquet").to_pandas()
    assert set(committed.trial_id) <= set(after.trial_id)  # finished trials kept
    assert "search" not in set(after.role)  # the sweep stopped: it did not go on to the search


def test_sigterm_stops_the_sweep_like_ctrl_c(tmp_path: Path):
    """SIGTERM to the driver, as kill(1) or a job scheduler sends it (ray.init installs a handler of its own)."""
    proc = start_cli(*sweep_args(tmp_path, "term", epochs=20))
    try:
        assert wait_until(lambda: (tmp_path / "term" / "study.json").exists(), 120, proc), proc.stdout.read()
        time.sleep(1.0)  # a trial running
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 143, out
        check_interrupted(out, proc.pid, tmp_path, "term")
    finally:
        stop_session(proc.pid)


# a line of one of Ray's own processes, which Ray prints on the driver's stderr with their name:
# "(raylet) ...", "(pid=123) ...", "(tune_trainable pid=123, ip=...) ..."
RAY_PROCESS_LINE = re.compile(r"^\((raylet|gcs_server|pid=\d+|[\w.:]+ pid=\d+)[^)]*\) ")


def driver_lines(out: str) -> list[str]:
    """The driver's own output: without the lines Ray forwards from its processes (a SIGINT to the whole
    process group reaches Ray's workers and raylet too, and what they print of it is theirs, not the sweep's)."""
    return [line for line in out.splitlines() if not RAY_PROCESS_LINE.match(line)]


def check_interrupted(out: str, sid: int, results: Path, study: str) -> None:
    lines = driver_lines(out)
    assert not [line for line in lines if "Traceback" in line], out
    resume = next(line for line in lines if "Resume with:" in line)
    assert "--resume" in resume and f"--study {study}" in resume and str(results) in resume
    assert wait_until(lambda: session_pids(sid) == [], 30), session_pids(sid)  # no Ray process left
    assert not (results / study / LOCK_FILE).exists()  # released on the way out
    assert not list((results / study).glob(".*.tmp"))
    assert not (results / study / "optuna.journal.lock").exists()  # Optuna's own lock file, released too


@pytest.mark.parametrize("phase", PHASES)
def test_sigterm_at_each_start_up_phase_exits_143_in_one_line_and_leaves_a_resumable_study(tmp_path: Path,
                                                                                          phase: str):
    """SIGTERM sent by the driver to itself at one phase boundary (tests/faults/sitecustomize.py): deterministic,
    no sleeping. Whatever the unwinding raises, the command exits 143 with one line, releases both locks,
    stops its Ray, and the study resumes to a consistent end."""
    args = sweep_args(tmp_path, "phase", trials=1)
    if phase == "before_fit":  # the references' fit is the sweep's first
        args.remove("--no-references")
    study = tmp_path / "phase"
    proc = start_cli(*args, env=fault_env(**{SIGNAL_AT_ENV: phase}))
    try:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 143, out
        said = [line for line in driver_lines(out) if line.startswith("sweep ")]  # the command's own lines
        assert len(said) == 1 and said[0].startswith("sweep run: interrupted"), out
        check_interrupted(out, proc.pid, tmp_path, "phase")
    finally:
        stop_session(proc.pid)
    if not (study / "study.json").exists():  # stopped before the study was written: nothing is left of it,
        assert not study.exists(), sorted(p.name for p in study.iterdir())  # and `--resume` starts it anew
        return
    resumed = run_cli(*args, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    check_study(study, search=1)


# --- a trial's worker process killed
def test_killed_trial_worker_is_retried_and_the_sweep_goes_on(tmp_path: Path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    args = sweep_args(tmp_path, "worker", epochs=40)
    study = tmp_path / "worker"
    proc = start_cli(*args, env=fault_env(**{PID_DIR_ENV: str(pid_dir)}))
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
def _cycle_base() -> type:
    import optuna

    return optuna.samplers.BaseSampler


class Cycle(_cycle_base()):
    """A deterministic Optuna sampler: trial n gets ``values[n]`` (module level: Tune pickles the searcher)."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def infer_relative_search_space(self, study, trial):  # noqa: ANN001, ANN201
        return {}

    def sample_relative(self, study, trial, search_space):  # noqa: ANN001, ANN201
        return {}

    def sample_independent(self, study, trial, name, distribution):  # noqa: ANN001, ANN201
        return self.values[trial.number % len(self.values)]


@pytest.mark.ray
def test_raising_and_diverging_trials_are_recorded_and_left_off_the_front(ray_session, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    import optuna

    from sweep.analysis.io import load_study
    from sweep.analysis.pareto import pareto_front
    from sweep.tune import trainable
    from sweep.tune.driver import SweepOptions, run_sweep

    lrs = [0.05, 0.02, 1.0e9, 0.01]  # finished, raises, diverges (sgd), finished
    monkeypatch.setattr(optuna.samplers, "TPESampler", lambda **kwargs: Cycle(lrs))
    monkeypatch.setattr(trainable, "tune_trainable", raising_at_lr(0.02))  # the driver runs here, in-process
    space = tmp_path / "space.yaml"
    space.write_text("strategy: naive\nfixed: {optimizer: sgd, epochs: 1}\n"
                     f"params:\n  lr: {{type: categorical, choices: {lrs}}}\n")
    summary = run_sweep(SweepOptions(strategy="naive", space_file=str(space), trials=4, seeds=1,
                                     results_dir=str(tmp_path), study="faulty", quiet=True, max_concurrent=1,
                                     references=False))
    study_dir = tmp_path / "faulty"
    check_study(study_dir, search=4)
    df = pq.read_table(study_dir / "trials.parquet").to_pandas()
    search = df[df.role == "search"].set_index("hp_lr")
    assert summary.counts == {"finished": 2, "error": 1, "diverged": 1, "pruned": 0}
    assert search.loc[0.02, "status"] == "error" and "injected fault" in search.loc[0.02, "reason"]
    assert search.loc[1.0e9, "status"] == "diverged" and "loss became" in search.loc[1.0e9, "reason"]
    assert (search.loc[[0.05, 0.01], "status"] == "finished").all()  # the sweep went on after both
    loaded = load_study(study_dir).trials
    front = set(loaded.trial_id[pareto_front(loaded)])
    assert front and front <= set(search.loc[[0.05, 0.01], "trial_id"])
    assert {r["trial_id"] for r in end_front(study_dir)} <= set(search.loc[[0.05, 0.01], "trial_id"])
    states = {t.user_attrs["tune_trial_id"]: t.state.name for t in optuna_trials(study_dir)}
    assert states[search.loc[0.02, "trial_id"]] == "FAIL"


# --- concurrent drivers and the lock
def test_two_studies_at_once_and_a_second_driver_on_a_running_study_is_refused(tmp_path: Path):
    a_args, b_args = sweep_args(tmp_path, "a", epochs=30), sweep_args(tmp_path, "b", epochs=30)
    a, b = start_cli(*a_args), start_cli(*b_args)
    try:
        assert wait_until(lambda: (tmp_path / "a" / "study.json").exists(), 120, a)
        # same settings, with and without --resume: refused either way (both at once: a is still running)
        seconds = [start_cli(*a_args, *extra) for extra in (["--resume"], [])]
        try:
            for second in seconds:
                out, _ = second.communicate(timeout=120)
                assert second.returncode == 2, out
                lines = out.strip().splitlines()
                assert len(lines) == 1 and "Traceback" not in out
                assert f"already being run by process {a.pid} on" in lines[0] and "--resume" in lines[0]
        finally:
            for second in seconds:
                stop_session(second.pid)
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


def _race_for_lock(study_dir: str, ready: multiprocessing.Queue, go: object, release: object,
                   results: multiprocessing.Queue) -> None:
    ready.put(True)
    go.wait(60)  # type: ignore[attr-defined]
    try:
        fd = acquire_study_lock(study_dir)
    except SweepError:
        results.put("refused")
        return
    results.put("won")
    release.wait(60)  # type: ignore[attr-defined]  # held until every other driver has tried
    release_study_lock(study_dir, fd)


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
    ready, results, go, release = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    racers = [ctx.Process(target=_race_for_lock, args=(str(tmp_path), ready, go, release, results))
              for _ in range(6)]
    for racer in racers:
        racer.start()
    try:
        for _ in racers:
            ready.get(timeout=60)
        go.set()
        outcomes = sorted(results.get(timeout=60) for _ in racers)
    finally:
        go.set()
        release.set()
        for racer in racers:
            racer.join(timeout=30)
    assert outcomes == ["refused"] * 5 + ["won"]
    assert not lock.exists()  # the winner released it


def test_clean_refuses_a_study_that_is_running(tmp_path: Path):
    from tests.fake_study import make_study

    study = make_study(tmp_path, "busy", n_trials=3)
    (study / "ray").mkdir()
    fd = acquire_study_lock(study)
    try:
        result = run_cli("clean", str(study), timeout=60)
    finally:
        release_study_lock(study, fd)
    assert result.returncode == 2 and "already being run" in result.stderr and "Traceback" not in result.stderr
    assert (study / "ray").is_dir()
