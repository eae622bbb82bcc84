"""Hardening against links, devices and foreign folders, and what a sweep leaves outside its study (issue 13).

- item 1: no file the tool writes is opened through a link (the lock, atomic writes' temporary files), and a
  study folder whose lock, results or temporary names are links is refused;
- item 2: ``--output``/``--out`` write only regular files: a device, a fifo, a directory or a link is refused,
  never replaced;
- item 4: ``sweep clean`` cleans only a study this tool wrote, and only what the study's records name;
- item 5: after a sweep and ``sweep clean`` no file outside the study folder holds the study's trials;
- item 17: ``--storage`` for a shared folder (object-store URIs refused), and on a two-node cluster, with a
  separate Ray temporary root per node, ``sweep clean --address`` leaves nothing of the study on the worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweep.atomic import NotARegularFile, atomic_write
from sweep.errors import ResultsError, SweepError
from sweep.results.cleaning import STORAGE_MARKER, NodeFolder, check_is_study, read_node_folders
from sweep.results.store import StudyStore, acquire_study_lock, check_study_folder, release_study_lock
from tests.fake_study import make_study
from tests.helpers import REPO, cli_env, parquet_rows, run_cli, start_cli, stop_session, wait_until

ROOT = os.geteuid() == 0
VICTIM_TEXT = "the victim's own bytes\n"
V2_STUDY = REPO / "tests" / "data" / "study_v2"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_text(VICTIM_TEXT)
    return path


def one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def listing(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``folder`` (links not followed): its mode, size and modification time."""
    out = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        out[str(path.relative_to(folder))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return out


# --- item 1: never through a link
def test_the_lock_never_follows_a_link_and_the_study_is_refused(tmp_path: Path, victim: Path):
    """The issue's reproduction: ``ln -s /tmp/victim results/s/.lock; sweep clean results/s``."""
    study = make_study(tmp_path / "results", "s", n_trials=3)
    (study / "ray").mkdir()
    (study / ".lock").symlink_to(victim)
    result = run_cli("clean", str(study), timeout=60)
    one_line_exit_2(result, ".lock", "symbolic link")
    assert victim.read_text() == VICTIM_TEXT  # the landed code truncated it and wrote its pid into it
    assert (study / ".lock").is_symlink() and (study / "ray").is_dir()  # nothing cleaned either
    with pytest.raises(SweepError, match="symbolic link"):
        acquire_study_lock(study)
    assert victim.read_text() == VICTIM_TEXT


def test_a_lock_that_is_a_hard_link_a_fifo_or_a_folder_is_refused_untouched(tmp_path: Path, victim: Path):
    study = make_study(tmp_path, "s", n_trials=3)
    os.link(victim, study / ".lock")  # a hard link: truncating "the lock" would truncate the victim
    with pytest.raises(SweepError, match="2 names"):
        acquire_study_lock(study)
    assert victim.read_text() == VICTIM_TEXT
    (study / ".lock").unlink()
    os.mkfifo(study / ".lock")  # opened for writing, a fifo would block or feed a reader
    with pytest.raises(SweepError, match="fifo"):
        acquire_study_lock(study)
    assert stat.S_ISFIFO((study / ".lock").lstat().st_mode)
    (study / ".lock").unlink()
    fd = acquire_study_lock(study)  # and a plain study still locks
    release_study_lock(study, fd)
    assert not (study / ".lock").exists()


@pytest.mark.parametrize("name", ["trials.parquet", "accuracy.parquet", "study.json", "optuna.journal",
                                  ".trials.parquet.0123456789abcdef.tmp", ".x.tmp", "cache", "ray"])
def test_a_study_whose_own_names_are_links_is_refused(tmp_path: Path, victim: Path, name: str):
    study = make_study(tmp_path, "s", n_trials=3)
    target = study / name
    if target.exists():
        target.unlink()
    target.symlink_to(victim if "." in name else tmp_path)
    with pytest.raises(SweepError, match="symbolic link"):
        check_study_folder(study)
    result = run_cli("clean", str(study), timeout=60)
    one_line_exit_2(result, name, "symbolic link")
    assert target.is_symlink() and victim.read_text() == VICTIM_TEXT and not (study / ".lock").exists()


@pytest.mark.parametrize("name", [".lock", "trials.parquet", "cache"])
def test_sweep_run_refuses_to_resume_a_study_whose_own_names_are_links(tmp_path: Path, victim: Path, name: str):
    study = tmp_path / "results" / "v2"
    shutil.copytree(V2_STUDY, study)
    target = study / name
    if target.exists():
        target.unlink()
    target.symlink_to(victim if "." in name else tmp_path)
    before = listing(tmp_path)
    result = run_cli("run", "--strategy", "ewc", "--trials", "1", "--seeds", "2", "--epochs", "1", "--study", "v2",
                     "--results", str(tmp_path / "results"), "--resume", timeout=120)
    one_line_exit_2(result, name, "symbolic link")
    assert listing(tmp_path) == before and victim.read_text() == VICTIM_TEXT


def test_atomic_write_creates_its_temporary_file_new_never_through_a_planted_link(
        tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch):
    import secrets

    tokens = iter(["0123456789abcdef", "fedcba9876543210"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(tokens))
    (tmp_path / ".out.bin.0123456789abcdef.tmp").symlink_to(victim)  # the name the first write would take
    atomic_write(tmp_path / "out.bin", lambda handle: handle.write(b"new"))
    assert (tmp_path / "out.bin").read_bytes() == b"new" and victim.read_text() == VICTIM_TEXT
    assert not (tmp_path / ".out.bin.fedcba9876543210.tmp").exists()


def test_atomic_write_refuses_a_destination_that_is_a_link(tmp_path: Path, victim: Path):
    link = tmp_path / "trials.parquet"
    link.symlink_to(victim)
    with pytest.raises(NotARegularFile, match="symbolic link"):
        atomic_write(link, lambda handle: handle.write(b"new"))
    assert link.is_symlink() and victim.read_text() == VICTIM_TEXT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.parquet", "victim"]  # no temporary file left


def test_study_store_refuses_to_write_through_a_linked_results_file(tmp_path: Path, victim: Path):
    from tests.fake_study import trial_row

    study = tmp_path / "s"
    study.mkdir()
    (study / "trials.parquet").symlink_to(tmp_path / "elsewhere.parquet")  # dangling: the store would create it
    with pytest.raises(NotARegularFile):
        StudyStore(study).add(trial_row(trial_id="t1"), [])
    assert not (tmp_path / "elsewhere.parquet").exists()


# --- item 2: --output and --out write only regular files
def _special(kind: str, path: Path, victim: Path) -> None:
    if kind == "character device":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # the same device as /dev/null
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(victim)


KINDS = ["character device", "fifo", "directory", "symbolic link"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["report", "choose"])
def test_output_that_is_not_a_regular_file_is_refused_and_kept(tmp_path: Path, victim: Path, kind: str,
                                                               command: str):
    if kind == "character device" and not ROOT:
        pytest.skip("making a device node needs root")
    study = make_study(tmp_path, "demo")
    target = tmp_path / "out"
    _special(kind, target, victim)
    before = target.lstat()
    result = run_cli(command, str(study), "--output", str(target), timeout=120)
    one_line_exit_2(result, str(target), kind)
    after = target.lstat()
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    assert victim.read_text() == VICTIM_TEXT


@pytest.mark.parametrize("kind", ["fifo", "symbolic link"])
def test_the_default_output_in_the_study_folder_is_checked_too(tmp_path: Path, victim: Path, kind: str):
    study = make_study(tmp_path, "demo")
    _special(kind, study / "chosen.yaml", victim)
    one_line_exit_2(run_cli("choose", str(study), timeout=120), "chosen.yaml", kind)
    assert victim.read_text() == VICTIM_TEXT


@pytest.mark.parametrize("kind", KINDS)
def test_pretrain_out_that_is_not_a_regular_file_is_refused_before_training(tmp_path: Path, victim: Path,
                                                                            kind: str):
    if kind == "character device" and not ROOT:
        pytest.skip("making a device node needs root")
    target = tmp_path / "source.pt"
    _special(kind, target, victim)
    before = target.lstat()
    result = run_cli("pretrain", "--benchmark", "split-digits", "--epochs", "1", "--out", str(target), timeout=120)
    one_line_exit_2(result, str(target), kind)
    assert "accuracy" not in result.stdout  # refused before training, not after
    after = target.lstat()
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    assert victim.read_text() == VICTIM_TEXT


def test_atomic_write_refuses_a_device(tmp_path: Path):
    if not ROOT:
        pytest.skip("making a device node needs root")
    device = tmp_path / "null"
    _special("character device", device, tmp_path)
    with pytest.raises(NotARegularFile, match="character device"):
        atomic_write(device, lambda handle: handle.write(b"x"))
    assert stat.S_ISCHR(device.lstat().st_mode)


# --- item 4: sweep clean removes only what a study this tool wrote names
def _junk(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "precious.bin").write_bytes(b"keep me")


def _meta(**extra: object) -> dict[str, object]:
    meta = json.loads((V2_STUDY / "study.json").read_text())
    meta.update(extra)
    return meta


FOREIGN = [
    ("a study.json of someone else's", {"study.json": '{"name": "my experiment", "lr": 0.1}'}, "lacks the key"),
    ("a study.json that is not JSON", {"study.json": "study: yes\n"}, "not JSON"),
    ("a study.json that is a list", {"study.json": "[1, 2]"}, "not a mapping"),
    ("a foreign trials.parquet", {"study.json": None, "trials.parquet": "id,lr\n1,0.1\n"}, "not a Parquet"),
    ("a record naming a results file", {"study.json": _meta(writes={"in_study": ["trials.parquet"],
                                                                    "storage": None})}, "trials.parquet"),
    ("a record naming a path", {"study.json": _meta(writes={"in_study": ["../elsewhere"], "storage": None})},
     "elsewhere"),
    ("a relative storage", {"study.json": _meta(uid="0" * 32, writes={"in_study": [], "storage": "x"})},
     "absolute"),
]


@pytest.mark.parametrize("case,files,needle", FOREIGN, ids=[c[0] for c in FOREIGN])
def test_clean_refuses_a_folder_that_is_not_a_study_of_this_tool(tmp_path: Path, case: str,
                                                                   files: dict[str, object], needle: str):
    folder = tmp_path / "not-ours"
    folder.mkdir()
    for name in ("trials.parquet", "accuracy.parquet"):
        shutil.copy(V2_STUDY / name, folder / name)
    for name, content in files.items():
        if content is None:
            continue
        text = content if isinstance(content, str) else json.dumps(content)
        (folder / name).write_text(text)
    if "study.json" in files and files["study.json"] is None:
        shutil.copy(V2_STUDY / "study.json", folder / "study.json")
    _junk(folder, "cache", "ray", "elsewhere")
    before = listing(folder)
    result = run_cli("clean", str(folder), timeout=60)
    one_line_exit_2(result, needle)
    assert listing(folder) == before  # nothing removed, and no lock file made


def test_clean_removes_exactly_what_the_study_records(tmp_path: Path):
    study = tmp_path / "s"
    shutil.copytree(V2_STUDY, study)
    (study / "study.json").write_text(json.dumps(_meta(uid="a" * 32, writes={"in_study": ["ray"], "storage": None})))
    _junk(study, "cache", "ray", "checkpoints", "notes")
    (study / ".trials.parquet.0123456789abcdef.tmp").write_bytes(b"torn")  # a temporary file of ours
    (study / ".study.json.abcd1234.tmp").write_bytes(b"torn")  # of ours, from mkstemp (before this version)
    (study / ".my-notes.tmp").write_text("not ours")
    (study / "chosen.yaml").write_text("config: {}\n")
    result = run_cli("clean", str(study), timeout=60)
    assert result.returncode == 0, result.stderr
    left = sorted(p.name for p in study.iterdir())
    # only ray/ was recorded: the cache/ folder here is not the study's (and checkpoints/ never was)
    assert left == sorted([".my-notes.tmp", "accuracy.parquet", "cache", "checkpoints", "chosen.yaml", "notes",
                           "study.json", "trials.parquet"])
    assert (study / "cache" / "precious.bin").read_bytes() == b"keep me"


def test_a_study_from_before_the_record_cleans_its_default_folders(tmp_path: Path):
    study = tmp_path / "v2"
    shutil.copytree(V2_STUDY, study)
    assert "writes" not in json.loads((study / "study.json").read_text())
    _junk(study, "cache", "ray", "notes")
    before = {name: (study / name).read_bytes() for name in ("trials.parquet", "accuracy.parquet", "study.json")}
    result = run_cli("clean", str(study), timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in study.iterdir()) == ["accuracy.parquet", "notes", "study.json", "trials.parquet"]
    assert before == {name: (study / name).read_bytes() for name in before}


def test_a_storage_folder_is_removed_only_when_its_marker_is_the_study_s(tmp_path: Path):
    study = tmp_path / "s"
    shutil.copytree(V2_STUDY, study)
    storage = tmp_path / "shared" / "s-aaaaaaaaaaaa"
    _junk(storage, "cache")
    (study / "study.json").write_text(json.dumps(_meta(uid="a" * 32,
                                                       writes={"in_study": [], "storage": str(storage)})))
    (storage / STORAGE_MARKER).write_text("b" * 32)  # another study's folder: never removed
    one_line_exit_2(run_cli("clean", str(study), timeout=60), STORAGE_MARKER)
    assert (storage / "cache" / "precious.bin").exists()
    (storage / STORAGE_MARKER).write_text("a" * 32)
    result = run_cli("clean", str(study), timeout=60)
    assert result.returncode == 0, result.stderr
    assert not storage.exists() and (tmp_path / "shared").is_dir()


def test_check_is_study_reads_only(tmp_path: Path):
    folder = tmp_path / "x"
    folder.mkdir()
    with pytest.raises(ResultsError, match="no study"):
        check_is_study(folder)
    assert not any(folder.iterdir())


# --- item 17 (options): --storage is a folder; object-store URIs are refused
@pytest.mark.parametrize("storage,needle", [("s3://bucket/studies", "object-store"),
                                            ("gs://bucket/x", "object-store"),
                                            ("{w}/missing", "not an existing folder")])
def test_storage_must_be_an_existing_folder_not_an_object_store(tmp_path: Path, storage: str, needle: str):
    results = tmp_path / "results"
    result = run_cli("run", "--strategy", "naive", "--trials", "1", "--seeds", "1", "--results", str(results),
                     "--storage", storage.format(w=tmp_path), timeout=120)
    one_line_exit_2(result, "--storage", needle)
    assert not results.exists()


def test_a_resume_must_keep_the_study_s_storage(tmp_path: Path):
    from sweep.errors import ConfigError
    from sweep.tune.driver import SweepOptions, run_sweep

    study = tmp_path / "results" / "v2"
    shutil.copytree(V2_STUDY, study)  # from before the record: it wrote its own cache/ and ray/
    before = listing(tmp_path)
    with pytest.raises(ConfigError, match="--storage"):
        # the landed ewc.yaml the study was swept with (a resume refuses a changed space before the storage)
        run_sweep(SweepOptions(strategy="ewc", trials=1, seeds=2, epochs=1, results_dir=str(tmp_path / "results"),
                               study="v2", resume=True, storage=str(tmp_path), quiet=True,
                               space_file=str(REPO / "tests" / "data" / "study_v2_ewc.yaml")))
    assert listing(tmp_path) == before


# --- items 5 and 17: what a sweep writes outside its study folder
def _trial_marks(study: Path) -> list[str]:
    """Strings only this study's trial records hold: its trial ids and Tune experiment names."""
    import pyarrow.parquet as pq

    marks = [str(t) for t in pq.read_table(study / "trials.parquet").column("trial_id").to_pylist()]
    marks += [p.name for p in (study / "ray").iterdir()] if (study / "ray").is_dir() else []
    return marks


def _holding(roots: list[Path], marks: list[str]) -> list[str]:
    """Files and folders under ``roots`` whose name or bytes hold one of ``marks``."""
    needles = [m.encode() for m in marks]
    found = []
    for root in roots:
        for path in root.rglob("*") if root.is_dir() else []:
            try:
                if any(m in path.name for m in marks):
                    found.append(str(path))
                elif path.is_file() and not path.is_symlink() and path.stat().st_size < 50 << 20:
                    data = path.read_bytes()
                    if any(n in data for n in needles):
                        found.append(str(path))
            except OSError:  # a socket, a file another sweep just removed
                continue
    return found


def _ray_roots() -> list[Path]:
    """Where Ray Tune writes by default on this machine: every Ray session's artifacts, and ~/ray_results."""
    sessions = Path(tempfile.gettempdir(), "ray")
    return [*sessions.glob("session_*/artifacts"), Path.home() / "ray_results"]


@pytest.mark.ray
@pytest.mark.slow
def test_after_a_sweep_and_clean_nothing_outside_the_study_holds_its_trials(tmp_path: Path):
    results = tmp_path / "results"
    result = run_cli("run", "--strategy", "ewc", "--trials", "2", "--seeds", "1", "--epochs", "1", "--study", "t",
                     "--results", str(results), "--quiet", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    study = results / "t"
    meta = json.loads((study / "study.json").read_text())
    assert meta["writes"] == {"in_study": ["cache", "ray"], "storage": None}  # recorded when it started
    marks = _trial_marks(study)
    assert len(marks) >= 4 + 2  # four trials, two Tune experiments
    assert _holding([study / "ray"], marks), "the scan finds the trials where they are"
    # a finished sweep already removed Tune's staging (experiment_state-*.json, searcher-state-*.pkl) from Ray's
    # session folder, and left no record of folders elsewhere
    assert _holding(_ray_roots(), marks) == []
    assert not (study / "writes.json").exists()
    cleaned = run_cli("clean", str(study), timeout=120)
    assert cleaned.returncode == 0, cleaned.stderr
    assert _holding(_ray_roots(), marks) == []
    # in the results folder, only the study's own records hold its trials
    assert {Path(p).name for p in _holding([results], marks)} <= {"trials.parquet", "accuracy.parquet",
                                                                  "optuna.journal"}


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_sweep_s_tune_state_in_ray_s_session_is_removed_by_clean(tmp_path: Path):
    results = tmp_path / "results"
    study = results / "k"
    proc = start_cli("run", "--strategy", "ewc", "--trials", "3", "--seeds", "1", "--epochs", "1", "--study", "k",
                     "--results", str(results), "--max-concurrent", "1", "--quiet")
    try:  # the references and one search trial recorded: the search is running, staged in Ray's session
        assert wait_until(lambda: parquet_rows(study / "trials.parquet") >= 3, 300, proc), proc.stdout.read()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop_session(proc.pid)
    entries = read_node_folders(study)
    assert entries and all(e.experiment.startswith("search-") for e in entries)
    staged = [p for e in entries for p in Path(e.root).glob(f"*/{e.experiment}")]
    assert staged, entries  # the killed driver's Tune staging (and its trials' working folders) is still there
    marks = _trial_marks(study) + [e.experiment for e in entries]
    assert _holding(_ray_roots(), marks)
    result = run_cli("clean", str(study), timeout=120)
    assert result.returncode == 0, result.stderr
    assert not any(p.exists() for p in staged) and not (study / "writes.json").exists()
    assert _holding(_ray_roots(), marks) == []


@pytest.mark.ray
@pytest.mark.slow
def test_storage_holds_the_cache_and_tune_and_clean_removes_its_folder(ray_session, tmp_path: Path):
    from sweep.tune.driver import SweepOptions, run_sweep

    shared = tmp_path / "shared"
    shared.mkdir()
    run_sweep(SweepOptions(strategy="ewc", trials=2, seeds=1, epochs=1, results_dir=str(tmp_path / "results"),
                           study="st", storage=str(shared), quiet=True))
    study = tmp_path / "results" / "st"
    meta = json.loads((study / "study.json").read_text())
    folder = Path(meta["writes"]["storage"])
    assert folder.parent == shared and folder.name == f"st-{meta['uid'][:12]}"
    assert (folder / STORAGE_MARKER).read_text() == meta["uid"]
    assert any((folder / "cache").glob("*.pt")) and any((folder / "ray").iterdir())
    assert not (study / "cache").exists() and not (study / "ray").exists()
    result = run_cli("clean", str(study), timeout=120)
    assert result.returncode == 0, result.stderr
    assert list(shared.iterdir()) == []


@pytest.fixture
def short_roots() -> Iterator[tuple[Path, Path]]:
    """Two short Ray temporary roots (a Unix socket path holds ~107 bytes), one per node."""
    roots = (Path(tempfile.mkdtemp(prefix="swh", dir="/tmp")), Path(tempfile.mkdtemp(prefix="sww", dir="/tmp")))
    yield roots
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_two_nodes_each_with_its_own_root_clean_leaves_nothing_on_the_worker(tmp_path: Path,
                                                                              short_roots: tuple[Path, Path]):
    """A two-node cluster, each node with its own Ray temporary root (its own "disk"). A sweep that completes
    leaves nothing of its study on the worker; one whose driver is killed while a search trial runs on the worker
    leaves that trial's folders there (recorded by the driver), and `sweep clean --address` removes them."""
    head_root, worker_root = short_roots
    results = tmp_path / "results"
    script = tmp_path / "cluster.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, pathlib, signal, subprocess, sys, time
        from ray.cluster_utils import Cluster
        worker_root = pathlib.Path({str(worker_root)!r})
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1, "include_dashboard": False,
                                                                 "temp_dir": {str(head_root)!r}}})
        cluster.add_node(num_cpus=1, temp_dir=str(worker_root))
        cluster.wait_for_nodes()
        def sweep_cmd(*args):
            return [sys.executable, "-m", "sweep.cli", *args]
        def sweep(*args):
            run = subprocess.run(sweep_cmd(*args), capture_output=True, text=True, timeout=500)
            return {{"rc": run.returncode, "out": run.stdout[-1500:], "err": run.stderr[-1500:]}}
        def on_worker():
            return sorted(str(p) for p in worker_root.glob("session_*/artifacts/**/*"))
        out = {{}}
        try:
            common = ["--strategy", "ewc", "--seeds", "1", "--epochs", "1", "--results", {str(results)!r},
                      "--address", cluster.address, "--quiet"]
            out["done"] = sweep("run", "--study", "done", "--trials", "2", *common)
            out["after_done"] = on_worker()
            killed = subprocess.Popen(sweep_cmd("run", "--study", "killed", "--trials", "4", *common),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and killed.poll() is None and not any(
                    worker_root.glob("session_*/artifacts/*/search-*/working_dirs/*")):
                time.sleep(0.05)
            os.killpg(killed.pid, signal.SIGKILL)
            killed.wait()
            import ray  # the cluster ends the killed driver's trials: wait for that, they write until they end
            ray.init(address=cluster.address, log_to_driver=False)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(a["State"] != "DEAD" for a in ray._private.state.actors().values()
                                                      if a.get("JobID") != ray.get_runtime_context().get_job_id()):
                time.sleep(0.1)
            ray.shutdown()
            out["before_clean"] = on_worker()
            out["clean"] = sweep("clean", {str(results / "killed")!r}, "--address", cluster.address)
            out["after_clean"] = on_worker()
        finally:
            cluster.shutdown()
            print(json.dumps(out))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=cli_env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        stop_session(proc.pid)
    assert out.strip(), err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    import pyarrow.parquet as pq

    assert report["done"]["rc"] == 0, report["done"]["err"]
    assert len(set(pq.read_table(results / "done" / "trials.parquet").column("node").to_pylist())) == 2
    assert report["after_done"] == [], report["after_done"]  # the finished sweep tidied the worker itself
    before = report["before_clean"]
    assert any("/search-" in p and "/working_dirs/" in p for p in before), before  # the killed one left files
    assert report["clean"]["rc"] == 0, report["clean"]
    assert report["after_clean"] == [], report["after_clean"]  # nothing of either study on the worker
    assert not (results / "killed" / "writes.json").exists()
    assert not (results / "killed" / "cache").exists() and not (results / "killed" / "ray").exists()


def test_clean_names_the_nodes_it_cannot_reach_in_one_line(tmp_path: Path):
    study = tmp_path / "s"
    shutil.copytree(V2_STUDY, study)
    far = NodeFolder(node="f" * 56, host="far-away-host", ip="198.51.100.7", root="/tmp/ray/session_x/artifacts",
                     experiment="search-20260101-000000-000000")
    (study / "writes.json").write_text(json.dumps({"folders": [far.__dict__]}))
    result = run_cli("clean", str(study), timeout=60)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "far-away-host" in lines[0] and "198.51.100.7" in lines[0] and "--address" in lines[0]
    assert read_node_folders(study) == [far]  # still recorded: a later clean on that cluster removes it
