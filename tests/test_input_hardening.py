"""Issue 13, items 7-13: what the bad-input table cannot hold.

Reads bounded by type and size (a named pipe, a file over its kind's cap), duplicate YAML keys,
hyperparameters made inert by others, the validation hold-out's minimum, the constraint parser's
linear time and infinities, a torn Optuna journal on resume, and a full or unwritable disk at start,
mid-sweep and under ``sweep clean`` (root only: tmpfs, read-only bind mounts, ``chattr``).
The bad inputs themselves, one line each, are rows of ``tests/test_bad_input.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweep.errors import ConfigError, DataError, SweepError
from tests.faults import PAUSE_AFTER_WRITE_ENV, fault_env
from tests.helpers import REPO, parquet_rows, run_cli, start_cli, stop_session, wait_until

IS_ROOT = os.geteuid() == 0


def in_subprocess(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter, bounded: a read that blocks fails the test instead of hanging it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


# --- item 7: every read of a user file is bounded by type and size
def test_a_named_pipe_is_refused_at_once_by_every_reader(tmp_path: Path):
    """Opening a named pipe for reading waits for a writer; each reader opens without blocking and refuses it."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code = f"""
from pathlib import Path
from sweep.errors import SweepError
fifo = Path({str(fifo)!r})
calls = {{
    "yaml": lambda: __import__("sweep.config", fromlist=["x"]).TrainConfig.from_yaml(fifo),
    "space": lambda: __import__("sweep.tune.search_space", fromlist=["x"]).load_space(fifo),
    "checkpoint": lambda: __import__("sweep.models.weights", fromlist=["x"]).read_state_dict(fifo),
    "idx": lambda: __import__("sweep.data.idx", fromlist=["x"]).read_idx(fifo),
    "parquet": lambda: __import__("sweep.analysis.io", fromlist=["x"]).load_study(fifo.parent),
}}
for name, call in calls.items():
    try:
        call()
    except SweepError as err:
        print(name, err)
"""
    (tmp_path / "trials.parquet").symlink_to(fifo)  # load_study's trials.parquet is the pipe too
    proc = in_subprocess(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert set(lines) == {"yaml", "space", "checkpoint", "idx", "parquet"}, proc.stdout
    assert [name for name, message in lines.items() if "named pipe" not in message] == [], lines


def test_files_over_their_kind_s_cap_are_refused_unread(tmp_path: Path):
    """Sparse files: gigabytes on paper, nothing on disk; each is refused from its size alone."""
    from sweep.config import TrainConfig
    from sweep.models.weights import read_state_dict
    from sweep.reading import LIMITS

    big_yaml = tmp_path / "big.yaml"
    with open(big_yaml, "wb") as handle:
        handle.truncate(LIMITS["yaml"] + 1)
    with pytest.raises(ConfigError, match=r"big.yaml holds 4,194,305 bytes; YAML files are read up to 4 MB"):
        TrainConfig.from_yaml(big_yaml)
    big_checkpoint = tmp_path / "big.pt"
    with open(big_checkpoint, "wb") as handle:
        handle.truncate(LIMITS["checkpoint"] + 1)
    with pytest.raises(ConfigError, match="checkpoint files are read up to 4 GB"):
        read_state_dict(big_checkpoint, "pretrained")
    big_idx = tmp_path / "train-images-idx3-ubyte"
    with open(big_idx, "wb") as handle:
        handle.truncate(LIMITS["idx"] + 1)
    from sweep.data.idx import read_idx

    with pytest.raises(DataError, match="IDX files are read up to 1 GB"):
        read_idx(big_idx)


def test_a_memory_estimate_refuses_before_allocating(monkeypatch: pytest.MonkeyPatch):
    """The check compares an estimate with the memory available; a model that fits is built as before."""
    import sweep.reading
    from sweep.models import build_model

    build_model("mlp", (1, 8, 8), 10, (64,))
    monkeypatch.setattr(sweep.reading, "available_memory", lambda: 10_000)
    with pytest.raises(ConfigError, match=r"hidden \[64\] .* would need about .* of memory; .* 9.77 kB available"):
        build_model("mlp", (1, 8, 8), 10, (64,))


# --- item 11: nonsense accepted silently
def test_duplicate_yaml_keys_are_refused_at_any_depth_and_merge_keys_still_read(tmp_path: Path):
    from sweep.config import read_yaml

    nested = tmp_path / "nested.yaml"
    nested.write_text("strategy: ewc\nfixed:\n  epochs: 1\n  batch_size: 64\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'epochs' on line 5 \(first on line 3\)"):
        read_yaml(nested, "search space")
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &b {lr: 0.1, epochs: 1}\nconfig:\n  <<: *b\n  lr: 0.2\n")
    assert read_yaml(merged, "config")["config"] == {"lr": 0.2, "epochs": 1}


def test_chosen_yaml_readers_share_the_duplicate_key_check(tmp_path: Path):
    from sweep.analysis.choose import read_chosen_config

    chosen = tmp_path / "chosen.yaml"
    chosen.write_text("config: {lr: 0.1}\nevidence: {}\nconfig: {lr: 0.2}\n")
    with pytest.raises(ConfigError, match="duplicate key 'config' on line 3"):
        read_chosen_config(chosen)
    from sweep.api import from_chosen

    with pytest.raises(ConfigError, match="duplicate key 'config'"):
        from_chosen(chosen)


def test_a_searched_parameter_is_refused_only_when_nothing_lets_it_act(tmp_path: Path):
    """ewc_gamma acts only with ewc_mode online: the table says so as data (active_when)."""
    from sweep.hparams import BY_NAME
    from sweep.tune.search_space import load_space

    assert BY_NAME["ewc_gamma"].active_when == {"ewc_mode": ("online",)}
    gamma = "  ewc_gamma: {type: float, low: 0.1, high: 0.9}\n"
    cases = {
        "default mode": ("strategy: ewc\nparams:\n" + gamma, "its default"),
        "mode searched, separate only": (
            "strategy: ewc\nparams:\n" + gamma + "  ewc_mode: {type: categorical, choices: [separate]}\n",
            "every choice of params.ewc_mode"),
        "online": ("strategy: ewc\nfixed: {ewc_mode: online}\nparams:\n" + gamma, None),
        "mode searched, online among the choices": (
            "strategy: ewc\nparams:\n" + gamma + "  ewc_mode: {type: categorical, choices: [separate, online]}\n",
            None),
    }
    for name, (text, needle) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        if needle is None:
            assert [p.name for p in load_space(path).params][0] == "ewc_gamma"
        else:
            with pytest.raises(ConfigError, match=re.escape(needle)) as info:
                load_space(path)
            assert "ewc_gamma acts only when ewc_mode is 'online'" in str(info.value), name


def test_the_hold_out_minimum_is_the_smallest_fraction_that_keeps_one_sample():
    from sweep.data.holdout import check_holdout, holdout_mask, min_fraction

    for n in (2, 3, 5, 7, 71, 143, 5421):
        minimum = min_fraction(n)
        labels = [0] * n
        check_holdout(labels, minimum, "a task")  # accepted: one sample held out, not by the clamp
        assert holdout_mask(__import__("numpy").asarray(labels), minimum, 0).sum() == 1
        with pytest.raises(SweepError, match=f"the minimum is {minimum:g}"):
            check_holdout(labels, minimum * 0.99, "a task")


def test_an_entry_point_module_that_exits_on_import_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from sweep.data.benchmarks import build_benchmark

    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(0)\ndef build():\n    return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"importing exits_on_import called sys.exit\(0\)"):
        build_benchmark("exits_on_import:build")


# --- item 12: constraints
def test_the_constraint_parser_is_linear_in_the_text():
    """60,000 characters in shapes that made the regex parser quadratic (31 s): each parsed or refused at
    once. The tokenizer's loop runs at most once per character (counted), the whole bounded loosely in time."""
    import sweep.analysis.constraints as constraints

    class Counting:
        def __init__(self, pattern: re.Pattern[str]) -> None:
            self.pattern, self.calls = pattern, 0

        def match(self, text: str, pos: int = 0) -> re.Match[str] | None:
            self.calls += 1
            return self.pattern.match(text, pos)

    n = 60_000
    texts = ["stability >= 1" + " " * n + "+", "stability >= naive" + " " * n, "stability >= " + " " * n + "x",
             "plasticity >= naive - " + "1" * n, "s" * n, "stability >= " + "+1" * (n // 2),
             "stability >= naive -" + " -" * (n // 2)]
    started = time.perf_counter()
    for text in texts:
        with contextlib.suppress(ConfigError):
            constraints.parse_constraint(text)
    assert time.perf_counter() - started < 5.0  # was 31 s for one of them
    for text in texts:
        counter = Counting(constraints._SPACE)
        original = constraints._SPACE
        constraints._SPACE = counter  # type: ignore[assignment]
        try:
            with contextlib.suppress(ConfigError):
                constraints.parse_constraint(text)
        finally:
            constraints._SPACE = original
        assert counter.calls <= len(text) + 1, (text[:30], counter.calls)  # one loop turn per token or space


def test_an_always_true_constraint_is_met_and_an_impossible_one_violated(tmp_path: Path, capsys):
    from sweep.analysis.choose import choose, parse_constraint
    from sweep.analysis.io import load_study
    from sweep.cli import main
    from tests.fake_study import make_study

    for text, value in (("stability >= -1e999", 0.0), ("stability <= 1e999", 1.0), ("stability > -1e999%", 0.5)):
        constraint = parse_constraint(text)
        threshold = constraint.threshold({})
        assert constraint.satisfied(constraint.margin(value, threshold)), text
    impossible = parse_constraint("stability >= 1e999")
    assert not impossible.satisfied(impossible.margin(1.0, impossible.threshold({})))
    assert not parse_constraint("stability >= 0").satisfied(float("nan"))  # a missing value never meets it

    study = load_study(make_study(tmp_path, "s", n_trials=4))
    choice = choose(study, constraints=["stability >= -1e999", "plasticity <= 1e999"])
    assert choice.feasible and choice.n_feasible == choice.n_candidates and all(r.satisfied for r in choice.results)
    assert main(["choose", str(tmp_path / "s"), "--constraint", "stability >= -1e999",
                 "--output", str(tmp_path / "chosen.yaml")]) == 0
    out = capsys.readouterr().out
    assert "VIOLATED" not in out and "(met)" in out, out


# --- item 10: a torn optuna.journal
def test_a_torn_last_journal_record_is_found_however_it_is_torn(tmp_path: Path):
    from sweep.tune.searcher import repair_journal, torn_tail

    records = [json.dumps({"op_code": i, "worker_id": "w"}) for i in range(3)]
    whole = "".join(r + "\n" for r in records).encode()
    journal = tmp_path / "optuna.journal"
    for tail, torn in ((b"", False), (records[0][:7].encode(), True), (b"{not json}\n", True), (b"\n", True)):
        journal.write_bytes(whole + tail)
        assert torn_tail(journal) == (len(whole) if torn else None), tail
    journal.write_bytes(whole + b'{"op_code": 4, "wor')
    backup = repair_journal(tmp_path)
    assert backup is not None and backup.name.startswith("optuna.journal.torn-")
    assert journal.read_bytes() == whole and backup.read_bytes() == whole + b'{"op_code": 4, "wor'
    assert repair_journal(tmp_path) is None  # whole now: nothing to cut


def small_sweep(results: Path, study: str, *extra: str, trials: int) -> list[str]:
    """A small naive sweep without references: one seed, one trial at a time, no task-prefix cache."""
    return ["run", "--strategy", "naive", "--trials", str(trials), "--seeds", "1", "--epochs", "1", "--results",
            str(results), "--study", study, "--max-concurrent", "1", "--no-references", "--quiet",
            "--no-prefix-cache", *extra]


@pytest.mark.slow
def test_a_torn_journal_record_is_cut_on_resume_and_the_sweep_completes(tmp_path: Path):
    """The journal's last record cut in half (a kill or a full disk during an append): the next append would
    join it and break every later read. The resume cuts it (a backup kept), completes, records each trial once."""
    from tests.test_faults import check_study

    first = run_cli(*small_sweep(tmp_path, "torn", trials=1), timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    study = tmp_path / "torn"
    journal = study / "optuna.journal"
    data = journal.read_bytes()
    last = data[:-1].rfind(b"\n") + 1
    journal.write_bytes(data[: last + (len(data) - last) // 2])  # the last record torn in the middle
    resumed = run_cli(*small_sweep(tmp_path, "torn", trials=2), "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.read_bytes() for p in study.glob("optuna.journal.torn-*")] == [data[: last + (len(data) - last) // 2]]
    check_study(study, search=2)  # each trial once; Optuna agrees with the Parquet files, nothing RUNNING


# --- item 9: a full or read-only disk, at start, mid-sweep, under `sweep clean`
@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (root only), unmounted afterwards."""
    if not IS_ROOT:
        pytest.skip("needs root to mount a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Fill ``folder``'s filesystem to the last byte with one file; returns it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:  # unbuffered: nothing left to fail at close
        for size in (1 << 16, 1 << 10, 1):  # the last partial chunks too
            with contextlib.suppress(OSError):
                while True:
                    handle.write(bytes(size))
    return filler


def one_line_error(proc: subprocess.CompletedProcess[str] | tuple[int, str]) -> str:
    code, stderr = (proc.returncode, proc.stderr) if isinstance(proc, subprocess.CompletedProcess) else proc
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in stderr and len(lines) == 1, (code, stderr[-3000:])
    return lines[0]


def test_a_full_disk_at_start_is_one_line_and_leaves_nothing(tmp_path: Path):
    with tmpfs(tmp_path / "disk", "256k") as disk:
        fill(disk)
        before = sorted(p.name for p in disk.iterdir())
        proc = run_cli(*small_sweep(disk / "results", "s", trials=1), timeout=120)
        message = one_line_error(proc)
        assert "No space left on device" in message, message
        assert sorted(p.name for p in disk.iterdir()) == before or not list((disk / "results").rglob("*")), \
            list(disk.rglob("*"))
        assert not list(disk.rglob(".lock")), list(disk.rglob("*"))


def test_clean_on_a_read_only_mount_is_one_line(tmp_path: Path):
    from tests.fake_study import make_study

    if not IS_ROOT:
        pytest.skip("needs root to bind-mount a folder read-only")
    folder = tmp_path / "ro"
    make_study(folder, "s", n_trials=3)
    (folder / "s" / "cache").mkdir()
    (folder / "s" / "cache" / "entry.pt").write_bytes(b"state")
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        proc = run_cli("clean", str(folder / "s"), timeout=120)
        message = one_line_error(proc)
        assert "Read-only file system" in message, message
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
    assert (folder / "s" / "cache" / "entry.pt").exists()  # nothing was removed


@pytest.mark.slow
@pytest.mark.faults
def test_a_full_disk_and_an_unwritable_trials_parquet_mid_sweep_lose_one_trial_and_resume(tmp_path: Path):
    """The disk fills after the first trial is committed: the second, finished but not written, is reported
    lost in one line (exit 2), the study stays readable and consistent; with space again a resume runs it.
    Then trials.parquet is made immutable (chattr +i) between two trials: the same, one line and a resume."""
    from sweep.results.store import StudyStore
    from tests.test_faults import check_study

    if shutil.which("chattr") is None:
        pytest.skip("needs chattr")
    with tmpfs(tmp_path / "disk", "64m") as disk:
        study = disk / "s"
        args = small_sweep(disk, "s", trials=3)
        proc = start_cli(*args, env=fault_env(**{PAUSE_AFTER_WRITE_ENV: "8"}))
        try:
            assert wait_until(lambda: parquet_rows(study / "trials.parquet") >= 1, 240, proc)
            filler = fill(disk)  # inside the pause after the first commit
            out, _ = proc.communicate(timeout=240)
        finally:
            stop_session(proc.pid)
        message = one_line_error((proc.returncode, out))
        assert re.search(r"trial \S+ finished but could not be written .*No space left on device.* runs again on "
                         r"--resume", message), message
        assert len(StudyStore(study).trials) == 1 and not (study / ".lock").exists()
        assert not list(study.glob(".*.tmp"))
        filler.unlink()

        proc = start_cli(*args, "--resume", env=fault_env(**{PAUSE_AFTER_WRITE_ENV: "8"}))
        try:
            assert wait_until(lambda: parquet_rows(study / "trials.parquet") >= 2, 240, proc)
            subprocess.run(["chattr", "+i", str(study / "trials.parquet")], check=True)
            out, _ = proc.communicate(timeout=240)
        finally:
            stop_session(proc.pid)
            subprocess.run(["chattr", "-i", str(study / "trials.parquet")], check=False)
        message = one_line_error((proc.returncode, out))
        assert "finished but could not be written" in message and "trials.parquet" in message, message
        assert len(StudyStore(study).trials) == 2

        resumed = run_cli(*args, "--resume", timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        check_study(study, search=3)  # each trial once, the lost ones run again; Optuna agrees


def test_a_gzip_idx_file_that_expands_to_gigabytes_is_refused_before_it_is_decompressed(tmp_path: Path):
    """1.2 GB of images in a 1.2 MB gzip file (70 members of 16.8 MB of zeros each): the header's shape is
    checked against the IDX cap before any data is decompressed, so the reader's memory stays small."""
    import gzip

    import numpy as np

    shape = (1_500_000, 28, 28)  # 1.18 GB of uint8 images
    member = gzip.compress(bytes(math.prod(shape) // 70), compresslevel=9)
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    with open(bomb, "wb") as handle:
        handle.write(gzip.compress(bytes([0, 0, 0x08, 3]) + np.asarray(shape, dtype=">u4").tobytes()))
        for _ in range(70):
            handle.write(member)  # a gzip file may hold several members; they decompress one after the other
    assert bomb.stat().st_size < 2_000_000
    code = f"""
from sweep.data.idx import read_idx
from sweep.errors import DataError
try:
    read_idx({str(bomb)!r})
    print("read")
except DataError as err:
    print(err)
# VmHWM, this process's own peak: ru_maxrss would carry over the peak of the pytest process that forked it
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(hwm.split()[1]) // 1024, "MB")
"""
    proc = in_subprocess(code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    message, peak = proc.stdout.strip().splitlines()
    assert "(1500000, 28, 28)" in message and "IDX files are read up to 1 GB" in message, message
    assert int(peak.split()[0]) < 800, peak  # the interpreter with numpy and torch; never the 1.2 GB
