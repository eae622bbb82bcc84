"""The local Ray a sweep starts: token authentication on, its own (never another Ray on the machine), and its
trials at the niceness asked for.

Each test runs the real ``sweep run`` in its own session and holds its trial running (tests/faults:
``SWEEP_TEST_TRIAL_INFO_DIR`` writes the trial's GCS address and niceness, ``SWEEP_TEST_HOLD_FILE`` keeps it
running until the test removes the file); every process it starts is bounded by a timeout and stopped by
session id.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.faults import HOLD_FILE_ENV, TRIAL_INFO_DIR_ENV, fault_env
from tests.helpers import cli_env, start_cli, stop_session, wait_until

pytestmark = [pytest.mark.slow]

# a client of the cluster: joins it, then runs a task that writes a file
CLIENT = textwrap.dedent("""
    import sys
    import ray

    address, target = sys.argv[1], sys.argv[2]
    try:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    except BaseException as err:
        print("REFUSED", type(err).__name__, str(err).splitlines()[0] if str(err) else "", flush=True)
        sys.exit(3)
    print("JOINED", flush=True)

    @ray.remote(num_cpus=0)
    def write(path):
        open(path, "w").write("a task ran")
        return True

    print("TASK RAN", ray.get(write.remote(target), timeout=60), flush=True)
""")


def sweep_args(results: Path, study: str, *extra: str) -> list[str]:
    return ["run", "--strategy", "naive", "--trials", "1", "--seeds", "1", "--epochs", "1", "--results",
            str(results), "--study", study, "--no-references", "--quiet", *extra]


def start_held_sweep(results: Path, study: str, *extra: str, env: dict[str, str] | None = None
                     ) -> tuple[subprocess.Popen[str], Path, Path]:
    """A sweep whose one trial, once started, waits for its hold file to go; returns (process, info dir, hold file)."""
    info_dir, hold = results / f"{study}-info", results / f"{study}-hold"
    info_dir.mkdir()
    hold.write_text("hold")
    proc = start_cli(*sweep_args(results, study, *extra),
                     env={**(env or {}), **fault_env(**{TRIAL_INFO_DIR_ENV: str(info_dir), HOLD_FILE_ENV: str(hold)})})
    return proc, info_dir, hold


def trial_info(proc: subprocess.Popen[str], info_dir: Path) -> dict:
    assert wait_until(lambda: any(info_dir.glob("*.json")), 240, proc), proc.stdout.read() if proc.stdout else ""
    return json.loads(next(info_dir.glob("*.json")).read_text())


def finish(proc: subprocess.Popen[str], hold: Path) -> str:
    hold.unlink()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def client(address: str, target: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CLIENT, address, str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def outcome(proc: subprocess.Popen[str], timeout: float = 150) -> str:
    """The client's output; a client still trying after ``timeout`` seconds is stopped (and has not joined)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_session(proc.pid)
        out, _ = proc.communicate(timeout=30)
        out += "\n(timed out)"
    finally:
        stop_session(proc.pid)
    return out


def test_a_local_sweeps_ray_refuses_a_client_without_the_token(tmp_path: Path):
    """Token authentication stays on even when the environment says ``RAY_AUTH_MODE=disabled``: a client with a
    wrong token, or with none (authentication off on its side), can neither join the cluster nor run a task.
    The same user's client, which reads the token Ray keeps in ~/.ray/auth_token, can (the control). The
    trials also run at the niceness asked for (``--trial-niceness``, added to the driver's)."""
    proc, info_dir, hold = start_held_sweep(tmp_path, "auth", "--trial-niceness", "3",
                                            env={"RAY_AUTH_MODE": "disabled"})
    try:
        info = trial_info(proc, info_dir)
        assert info["nice"] == min(19, os.nice(0) + 3)  # the driver runs at this process's niceness
        address = info["gcs_address"]
        empty_home = tmp_path / "home"
        empty_home.mkdir()
        wrong = tmp_path / "wrong_token"
        wrong.write_text("0" * 32)
        base = {k: v for k, v in cli_env().items() if not k.startswith("RAY_AUTH") and k != "PYTHONPATH"}
        without = {  # no token anywhere it could be found
            "wrong token": {**base, "HOME": str(empty_home), "RAY_AUTH_MODE": "token",
                            "RAY_AUTH_TOKEN_PATH": str(wrong)},
            "authentication off": {**base, "HOME": str(empty_home), "RAY_AUTH_MODE": "disabled"},
        }
        targets = {name: tmp_path / f"written-{i}" for i, name in enumerate(without)}
        attempts = {name: client(address, targets[name], env) for name, env in without.items()}
        control_target = tmp_path / "written-with-token"
        control = client(address, control_target, {**base, "RAY_AUTH_MODE": "token"})
        outs = {name: outcome(attempt) for name, attempt in attempts.items()}
        control_out = outcome(control)
        for name, out in outs.items():
            assert "JOINED" not in out and "TASK RAN" not in out, (name, out)
            assert "REFUSED" in out or "(timed out)" in out, (name, out)
            assert not targets[name].exists(), name  # no task of theirs ran
        assert "TASK RAN True" in control_out and control_target.exists(), control_out
        finish(proc, hold)
        token = Path.home() / ".ray" / "auth_token"  # where Ray keeps this user's token
        assert token.stat().st_mode & 0o077 == 0  # the sweep made it its owner's only
    finally:
        stop_session(proc.pid)


def test_a_sweep_starts_its_own_ray_whatever_ray_current_cluster_says(tmp_path: Path):
    """``<ray temp dir>/ray_current_cluster`` names the cluster a bare ``ray.init()`` joins. A sweep told no
    address ignores it: stale (a dead address) or naming another sweep's live Ray, each sweep starts its
    own, and two sweeps on one machine both complete. Ray's temp dir is a folder of this test's
    (``RAY_TMPDIR``; short: Unix socket paths are limited), so no other test's Ray sees the file. The
    trials run at the driver's own niceness by default, not Ray's 15."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="swr", dir="/tmp"))
    current = ray_tmp / "ray" / "ray_current_cluster"
    current.parent.mkdir()
    current.write_text("127.0.0.1:9")  # stale: nothing listens there
    env = {"RAY_TMPDIR": str(ray_tmp)}
    first = second = None
    try:
        first, info_dir_a, hold_a = start_held_sweep(tmp_path, "a", env=env)
        info_a = trial_info(first, info_dir_a)
        assert info_a["nice"] == os.nice(0)  # --trial-niceness 0: the priority of the command
        current.write_text(info_a["gcs_address"])  # a live cluster, which the second sweep was not told to join
        second, info_dir_b, hold_b = start_held_sweep(tmp_path, "b", env=env)
        info_b = trial_info(second, info_dir_b)
        assert info_b["gcs_address"] != info_a["gcs_address"]
        finish(first, hold_a)
        finish(second, hold_b)
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_session(proc.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    for study in ("a", "b"):
        assert (tmp_path / study / "trials.parquet").exists()


def test_a_sweeps_fit_skips_tunes_callback_census_and_puts_it_back():
    """Tuner.fit counts its callbacks for Ray's usage statistics by importing MLflow and W&B (4.5 s of each
    sweep's start when the --log extras are installed): inside the sweep's fit the census is skipped, and Ray's own
    function is back afterwards."""
    code = textwrap.dedent("""
        import sys
        from ray.air._internal import usage
        from ray.tune import Callback
        from sweep.tune.ray_session import without_callback_census
        census = usage.tag_callbacks
        with without_callback_census():
            usage.tag_callbacks([Callback()])
        print("mlflow" in sys.modules, "wandb" in sys.modules, usage.tag_callbacks is census)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False", "True"]
