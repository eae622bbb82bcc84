"""``sweep reproduce`` end to end at its smoke size, the selection on validation only, and the selection
protocols (``--protocol first-tasks K``) of ``sweep run``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sweep.cli import main
from sweep.errors import ConfigError


@pytest.fixture(scope="module")
def smoke(ray_session: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``sweep reproduce hsu2018 --smoke``, once: a row with nothing searched and LwF class-IL, both protocols."""
    results = tmp_path_factory.mktemp("reproduce")
    assert main(["reproduce", "hsu2018", "--smoke", "--results", str(results), "--quiet"]) == 0
    return results / "reproduce-smoke" / "hsu2018"


def test_smoke_writes_the_table_with_every_row_and_both_protocols(smoke: Path, capsys: pytest.CaptureFixture[str]):
    table = pq.read_table(smoke / "table.parquet").to_pandas()
    assert len(table) == 22 * 2  # every row of Hsu et al.'s Table 2 the toolkit lists, both protocols
    assert set(table.protocol) == {"end", "first-tasks-2"}
    done = table[table.status == "done"]
    assert set(done.row) == {"naive-task", "lwf-class", "sgd-class"} and (done.n_seeds == 1).all()
    assert set(table.status) <= {"done", "not run yet"} | {s for s in table.status if s.startswith("not available")}
    # a row the toolkit cannot run is listed, and says why: Adagrad is not one of its optimizers
    assert set(table[table.row == "adagrad-task"].status) == {"not available yet: no optimizer adagrad"}
    lwf = done[done.row == "lwf-class"]
    assert lwf.published.iloc[0] == 24.17 and np.isfinite(lwf["mean"]).all()
    assert all("distill_temperature" in json.loads(c) for c in lwf.chosen)  # the searched value, per protocol
    text = (smoke / "table.md").read_text()
    assert "| lwf-class | LwF | class | 24.17 ± 0.33 |" in text and "Rows done: 3 of 22" in text
    assert "distill_temperature=" in text.split("| lwf-class |")[1].splitlines()[0]
    assert (smoke / "table.png").stat().st_size > 0
    # a row that fixes the optimizer and searches the learning rate the paper's setup fixes: the row wins
    sgd = json.loads((smoke / "sgd-class" / "final-end.json").read_text())
    assert sgd["config"]["optimizer"] == "sgd" and set(sgd["chosen"]) == {"lr"} and sgd["config"]["lr"] != 1e-3
    # each protocol's search is a study of its own; first-tasks 2 trained its trials on two tasks only
    first = pq.read_table(smoke / "lwf-class" / "first-tasks-2" / "trials.parquet").to_pandas()
    assert (first.num_tasks == 2).all() and (first.role == "search").all() and len(first) == 2
    meta = json.loads((smoke / "lwf-class" / "first-tasks-2" / "study.json").read_text())
    assert meta["protocol"] == {"name": "first-tasks", "tasks": 2}
    final = json.loads((smoke / "lwf-class" / "final-first-tasks-2.json").read_text())
    assert final["config"]["num_tasks"] == 5 and final["seeds"] == [1000]  # the whole sequence, a fresh seed

    # resumable row by row: a finished row is read back, not run again (nothing new is written)
    before = {p: p.stat().st_mtime_ns for p in smoke.rglob("final-*.json")}
    capsys.readouterr()
    assert main(["reproduce", "hsu2018", "--smoke", "--results", str(smoke.parent.parent), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in smoke.rglob("final-*.json")} == before
    assert "| naive-task |" in capsys.readouterr().out


def test_the_choice_reads_validation_columns_only(smoke: Path, tmp_path: Path):
    """Poison every test column of the row's study: the chosen trial does not move, and it is the best by
    validation ACC (``sweep choose``'s tie-breaks)."""
    import shutil

    from sweep.commands.reproduce import select_trial

    study = tmp_path / "end"
    shutil.copytree(smoke / "lwf-class" / "end", study, ignore=shutil.ignore_patterns("cache", "ray"))
    trials = pq.read_table(study / "trials.parquet")
    frame = trials.to_pandas()
    chosen = select_trial(study)["trial_id"]
    best = frame.sort_values(["val_acc_mean", "val_stability_mean", "trial_id"], ascending=[False, False, True])
    assert chosen == best.trial_id.iloc[0]  # the best validation ACC; ties: validation stability, then the id
    for column in [c for c in frame.columns if c.startswith("test_")]:
        if frame[column].dtype.kind == "f":  # the other trial looks far better on test, and chosen far worse
            frame[column] = np.where(frame.trial_id == chosen, 0.0, 1.0)
    pq.write_table(type(trials).from_pandas(frame, schema=trials.schema), study / "trials.parquet")
    assert select_trial(study)["trial_id"] == chosen


def test_rows_a_strategy_cannot_run_yet_are_reported_not_left_out():
    from sweep.commands.reproduce import unavailable, within
    from sweep.commands.reproductions import PAPERS, Row

    assert unavailable(Row("x", "X", "ewc", "class", 20.0)) is None
    assert unavailable(Row("x", "X", "nosuch", "class", 20.0)) == "not available yet: no strategy nosuch"
    assert unavailable(Row("x", "X", "ewc", "class", 20.0, params={"nosuch_c": {}})) == \
        "not available yet: no setting nosuch_c"
    assert {row.strategy for row in PAPERS["vandeven2019"].rows} >= {"genreplay", "replay", "ewc", "distill"}
    assert within(24.17, 22.2, 0.1) and not within(24.17, 19.7, 0.3) and within(24.17, 19.7, 2.5)
    assert within(None, 19.7, 0.3) is None


@pytest.mark.parametrize(("argv", "message"), [
    (["--protocol", "first-tasks", "5"], "K must be below the sequence's 5 tasks"),
    (["--protocol", "first-tasks", "1"], "K must be an integer >= 2"),
    (["--protocol", "first-tasks"], "--protocol first-tasks needs K"),
    (["--protocol", "last"], "--protocol 'last' is unknown; allowed: end, or first-tasks K"),
])
def test_sweep_run_refuses_a_bad_protocol_in_one_line(argv: list[str], message: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]):
    code = main(["run", "--strategy", "ewc", "--num-tasks", "5", "--results", str(tmp_path), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_study_resumes_only_under_its_own_protocol(smoke: Path, tmp_path: Path):
    import shutil

    from sweep.tune.driver import run_sweep
    from sweep.tune.options import SweepOptions

    row = tmp_path / "lwf-class"
    shutil.copytree(smoke / "lwf-class", row, ignore=shutil.ignore_patterns("cache", "ray"))
    base = json.loads((row / "end" / "study.json").read_text())["base_config"]
    options = SweepOptions(strategy="distill", study="end", results_dir=str(row), space_file=str(row / "space.yaml"),
                           trials=2, seeds=1, benchmark="split-digits", scenario="class", num_tasks=5, epochs=1,
                           references=False, resume=True, quiet=True, protocol="first-tasks", protocol_tasks=2,
                           extra={k: base[k] for k in ("hidden", "optimizer", "lr", "batch_size", "optimizer_state",
                                                          "class_outputs")})
    with pytest.raises(ConfigError, match="protocol differs from the study's"):
        run_sweep(options)


def test_van_de_ven_rows_deal_each_seed_its_own_digits(ray_session: object, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]):
    """The paper's code deals the digits to the tasks anew for every seed: so do the row's searches (both
    protocols: first-tasks cuts each seed's dealt sequence) and its final runs, whose seed 1000 is the run of
    that seed's class order; the searches run every setting of the setup the final runs do (class_outputs seen
    too: the selection once ran under `all`); a row done under another setup is refused, not shown under the new
    one, and so is a row whose search was."""
    from sweep.commands.reproductions import PAPERS, SMOKE_SETUP
    from sweep.config import TrainConfig
    from sweep.data.benchmarks import seed_class_order
    from sweep.train.trainer import run_config

    argv = ["reproduce", "vandeven2019", "--smoke", "--rows", "ewc-class", "--results", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    row = tmp_path / "reproduce-smoke" / "vandeven2019" / "ewc-class"
    final = json.loads((row / "final-end.json").read_text())
    setup = {**PAPERS["vandeven2019"].setup, **SMOKE_SETUP}
    for protocol in ("end", "first-tasks-2"):
        trials = pq.read_table(row / protocol / "trials.parquet").to_pandas()
        search = trials[trials["role"] == "search"]
        assert len(search) == 2 and (search["status"] == "finished").all(), protocol
        for config in map(json.loads, search["config"]):
            assert config["class_shuffle"] == "per-seed" and config["class_outputs"] == "seen"
            assert {k: config[k] for k in setup if k != "num_tasks"} == {
                k: final["config"][k] for k in setup if k != "num_tasks"}, protocol
    config = TrainConfig.from_mapping(final["config"], source="final-end.json")
    assert config.class_shuffle == "per-seed" and final["seeds"] == [1000]
    alone = run_config(config.replace(class_shuffle="none", class_order=seed_class_order(10, 1000), seed=1000))
    assert final["test_acc"][0] == pytest.approx(100.0 * float(alone.test[-1].mean()), abs=1e-9)

    study = row / "end" / "study.json"
    kept = study.read_text()
    meta = json.loads(kept)
    study.write_text(json.dumps(meta | {"base_config": meta["base_config"] | {"class_outputs": "all"}}))
    capsys.readouterr()
    assert main(argv) == 2  # a choice made on trials of another setup
    err = capsys.readouterr().err
    assert "search trials were run with class_outputs='all'" in err and len(err.strip().splitlines()) == 1
    study.write_text("{")
    assert main(argv) == 2  # a study file cut short: one line, not a traceback
    err = capsys.readouterr().err
    assert "is unreadable or has no base_config" in err and len(err.strip().splitlines()) == 1
    study.write_text(kept)

    record = final | {"config": final["config"] | {"class_shuffle": "none"}}  # as a row run before the shuffle
    (row / "final-end.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "class_shuffle='none'" in err and "remove" in err and len(err.strip().splitlines()) == 1


def test_a_row_done_under_another_definition_is_refused(tmp_path: Path):
    """A row whose fixed settings or searched names changed since it ran (van de Ven & Tolias's LwF once searched
    T, now runs the paper's T = 2) must be run again, not shown under the new definition."""
    from types import SimpleNamespace

    from sweep.commands.reproduce import _check_same_setup
    from sweep.commands.reproductions import PAPERS
    from sweep.errors import SweepError

    paper = PAPERS["vandeven2019"]
    row = next(r for r in paper.rows if r.key == "lwf-class")
    settings = SimpleNamespace(setup=paper.setup)
    config = {**{k: list(v) if isinstance(v, tuple) else v for k, v in paper.setup.items()}, **row.fixed}
    _check_same_setup({"config": config, "chosen": {}}, row, settings, tmp_path / "final-end.json")  # the same
    with pytest.raises(SweepError, match="searched distill_temperature, but the row now searches nothing"):
        _check_same_setup({"config": config, "chosen": {"distill_temperature": 0.56}}, row, settings,
                          tmp_path / "final-end.json")
    with pytest.raises(SweepError, match="distill_weighting='alpha'"):
        _check_same_setup({"config": {**config, "distill_weighting": "alpha"}, "chosen": {}}, row, settings,
                          tmp_path / "final-end.json")


def test_a_setting_added_since_a_row_ran_refuses_only_the_rows_it_acts_on(tmp_path: Path):
    """class_outputs seen joined van de Ven & Tolias's setup after rows had run: a class-incremental row run
    without it must run again, a task-incremental one (where it cannot act) keeps its number."""
    from types import SimpleNamespace

    from sweep.commands.reproduce import _check_same_setup
    from sweep.commands.reproductions import PAPERS
    from sweep.errors import SweepError

    paper = PAPERS["vandeven2019"]
    assert paper.setup["class_outputs"] == "seen"
    settings = SimpleNamespace(setup=paper.setup)
    before = {k: list(v) if isinstance(v, tuple) else v for k, v in paper.setup.items() if k != "class_outputs"}
    for key, refused in (("none-task", False), ("none-domain", False), ("none-class", True)):
        row = next(r for r in paper.rows if r.key == key)
        record = {"config": {**before, "scenario": row.scenario}, "chosen": {}}
        if refused:
            with pytest.raises(SweepError, match="class_outputs='all', but the row's setup is now class_outputs='seen"):
                _check_same_setup(record, row, settings, tmp_path / "final-end.json")
        else:
            _check_same_setup(record, row, settings, tmp_path / "final-end.json")
