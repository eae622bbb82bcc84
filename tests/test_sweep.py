"""The sweep end to end: Ray Tune + Optuna into Parquet, divergence, search-space files."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sweep.commands.run import end_front
from sweep.errors import ConfigError
from sweep.hparams import SPACE_SETTINGS, strategy_fields
from sweep.results.schema import ACCURACY_COLUMNS, HYPERPARAMETERS, METRICS, SPLITS, TRIALS_COLUMNS, metric_column
from sweep.strategies.registry import strategy_params
from sweep.tune.driver import SweepOptions, run_sweep
from sweep.tune.search_space import DEFAULT_SPACES_DIR, GENERAL_PARAMS, load_space

SPACE_FILES = sorted(DEFAULT_SPACES_DIR.glob("*.yaml"))


def optuna_trials(study_dir: Path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal")))
    return optuna.load_study(study_name=study_dir.name, storage=storage).trials


# --- search-space files: a contract over the folder
def test_every_required_space_exists():
    names = {p.stem for p in SPACE_FILES}
    assert {"naive", "ewc", "distill", "replay", "l2sp", "freeze", "ewc+freeze", "ewc+replay"} <= names


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_space_file_matches_its_strategy(path: Path):
    space = load_space(path)
    # quickstart.yaml is the quick start's own EWC space (make quickstart), so widening ewc.yaml never changes it
    assert space.strategy == ("ewc" if path.stem == "quickstart" else path.stem)
    allowed = set(GENERAL_PARAMS) | set(strategy_params(space.strategy))
    assert {p.name for p in space.params} <= allowed
    assert set(space.fixed) <= allowed | set(SPACE_SETTINGS)  # hidden, val_fraction: what every trial shares
    assert space.params, "a space must search something"
    # every strategy component's own knobs are searched (or fixed) somewhere in its space
    for name in space.strategy.split("+"):
        for knob in strategy_fields(name):
            if knob in ("ewc_mode", "ewc_gamma", "fisher_samples", "fisher", "replay_ratio", "feature_distill_layers",
                        "interp_last_alpha", "distill_variant", "distill_weighting", "mas_samples"):
                # secondary knobs may keep their defaults (the layers are inert at a feature weight of 0; the
                # last task's α is the free grid's; LwF's variant and weighting are the documented defaults)
                continue
            assert knob in {p.name for p in space.params} | set(space.fixed), f"{knob} not in {path.name}"


def test_ewc_lambda_spans_many_decades():
    space = load_space(DEFAULT_SPACES_DIR / "ewc.yaml")
    lam = next(p for p in space.params if p.name == "ewc_lambda")
    assert lam.log and lam.low <= 1.0 and lam.high >= 1e10
    assert any(p.name == "fisher" and p.kind == "categorical" for p in space.params)


BAD_SPACES = [
    ("unknown top key", "strategy: ewc\nparms: {}\n", "parms"),
    ("string number", "strategy: ewc\nparams:\n  ewc_lambda: {type: float, low: 1e-4, high: 10.0, log: true}\n",
     "ewc_lambda.low"),
    ("low >= high", "strategy: ewc\nparams:\n  ewc_lambda: {type: float, low: 10.0, high: 1.0}\n", "ewc_lambda"),
    ("log with low <= 0", "strategy: ewc\nparams:\n  ewc_lambda: {type: float, low: 0.0, high: 1.0, log: true}\n",
     "ewc_lambda"),
    ("parameter of another strategy", "strategy: ewc\nparams:\n  replay_size: {type: int, low: 1, high: 10}\n",
     "replay_size"),
    ("unknown distribution", "strategy: ewc\nparams:\n  ewc_lambda: {type: loguniform, low: 1.0, high: 2.0}\n",
     "loguniform"),
    ("unknown distribution key", "strategy: ewc\nparams:\n  ewc_lambda: {type: float, low: 1.0, high: 2.0, lg: 1}\n",
     "lg"),
    ("bad categorical", "strategy: ewc\nparams:\n  fisher: {type: categorical, choices: [exact, bogus]}\n", "bogus"),
    ("unknown strategy", "strategy: ewk\nparams: {}\n", "ewk"),
    ("fixed out of range", "strategy: distill\nfixed: {distill_alpha: 2.0}\nparams: {}\n", "distill_alpha"),
    ("sweep-level key", "strategy: ewc\nfixed: {benchmark: split-mnist}\n", "benchmark"),
    ("not a mapping", "- ewc\n", "mapping"),
    ("int with float bound", "strategy: replay\nparams:\n  replay_size: {type: int, low: 1.5, high: 10}\n",
     "replay_size.low"),
]


@pytest.mark.parametrize("case,text,needle", BAD_SPACES, ids=[c[0] for c in BAD_SPACES])
def test_bad_space_is_one_line_naming_file_and_key(tmp_path: Path, case: str, text: str, needle: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_space(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and needle in message


# --- the sweep itself, on one session-wide Ray
@pytest.mark.ray
def test_two_objective_sweep_end_to_end(ray_session, tmp_path: Path):
    summary = run_sweep(SweepOptions(strategy="ewc", trials=4, seeds=2, epochs=2, results_dir=str(tmp_path),
                                     study="e2e", quiet=True))
    study_dir = tmp_path / "e2e"
    assert summary.complete and summary.counts["finished"] == 6
    front = end_front(study_dir)
    assert front and {r["role"] for r in front} == {"search"}  # the end summary's front
    trials = pq.read_table(study_dir / "trials.parquet")
    assert tuple(trials.column_names) == TRIALS_COLUMNS
    df = trials.to_pandas()
    assert sorted(df.role) == ["joint", "naive", "search", "search", "search", "search"]
    assert df.trial_id.is_unique and (df.study == "e2e").all() and (df.status == "finished").all()
    assert (df.n_seeds == 2).all() and (df.seeds == "0,1").all() and (df.num_tasks == 2).all()
    for split in SPLITS:
        for metric in ("stability", "plasticity", "acc"):
            assert df[metric_column(split, metric)].between(0, 1).all(), (split, metric)
        assert df[metric_column(split, "retention")].ge(0).all()  # above 1 when a task improves later
        assert (df[[metric_column(split, m, "std") for m in METRICS]] >= 0).all().all()
    search = df[df.role == "search"]
    assert search.hp_ewc_lambda.notna().all() and search.hp_fisher.isin(["exact", "empirical", "batched"]).all()
    assert search.fisher_trace.gt(0).all() and search.fisher_mean.gt(0).all()
    refs = df[df.role != "search"]
    assert refs.hp_ewc_lambda.isna().all() and set(refs.strategy) == {"naive", "joint"}
    assert df.hp_lr.notna().all() and df.hp_epochs.eq(2).all()
    assert df.torch_version.str.len().gt(0).all() and df.ray_version.str.startswith("2.").all()
    assert df.code_version.str.len().gt(0).all() and df.duration_s.gt(0).all() and df.node.notna().all()
    # hyperparameters are their own typed columns
    assert str(df.hp_ewc_lambda.dtype) == "float64" and str(df.hp_epochs.dtype) == "int64"
    assert {f"hp_{h}" for h in HYPERPARAMETERS} <= set(df.columns)

    accuracy = pq.read_table(study_dir / "accuracy.parquet").to_pandas()
    assert tuple(accuracy.columns) == ACCURACY_COLUMNS
    # 6 trials x 2 seeds x 2 splits x (untrained + 2 tasks) x 2 evaluated tasks
    assert len(accuracy) == 6 * 2 * 2 * 3 * 2
    assert set(accuracy.trial_id) == set(df.trial_id) and accuracy.accuracy.between(0, 1).all()
    # the reported stability is the mean over seeds of R[T, 1] on validation
    row = df.iloc[0]
    final = accuracy[(accuracy.trial_id == row.trial_id) & (accuracy.split == "val") & (accuracy.after_task == 2)
                     & (accuracy.eval_task == 1)]
    assert math.isclose(final.accuracy.mean(), row.val_stability_mean, rel_tol=1e-9)

    states = [t.state.name for t in optuna_trials(study_dir)]
    assert states == ["COMPLETE"] * 4
    import duckdb

    assert duckdb.sql(f"select count(*) from '{study_dir / 'trials.parquet'}'").fetchall() == [(6,)]


@pytest.mark.ray
def test_diverged_trial_is_recorded_and_the_sweep_goes_on(ray_session, tmp_path: Path):
    space = tmp_path / "explode.yaml"
    space.write_text(
        "strategy: naive\nfixed: {optimizer: sgd, epochs: 1}\n"
        "params:\n  lr: {type: float, low: 1.0e+8, high: 1.0e+9, log: true}\n"
    )
    summary = run_sweep(SweepOptions(strategy="naive", space_file=str(space), trials=2, seeds=1,
                                     results_dir=str(tmp_path), study="boom", references=False, quiet=True))
    df = pq.read_table(tmp_path / "boom" / "trials.parquet").to_pandas()
    assert summary.counts["diverged"] == 2 and len(df) == 2
    assert (df.status == "diverged").all() and df.reason.str.contains("loss became").all()
    assert df.val_stability_mean.isna().all()  # no invented metrics for a diverged run
    states = {t.state.name for t in optuna_trials(tmp_path / "boom")}
    assert states == {"COMPLETE"}  # nothing left RUNNING in Optuna's study


@pytest.mark.ray
def test_existing_study_needs_resume(ray_session, tmp_path: Path):
    options = SweepOptions(strategy="naive", trials=1, seeds=1, results_dir=str(tmp_path), study="again",
                           references=False, quiet=True)
    run_sweep(options)
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(options)
    # resuming a complete study runs nothing more and records nothing twice
    summary = run_sweep(SweepOptions(**{**options.__dict__, "resume": True}))
    assert summary.counts["finished"] == 1
    assert len(pq.read_table(tmp_path / "again" / "trials.parquet")) == 1


@pytest.mark.ray
def test_constrained_single_objective_with_nsga2(ray_session, tmp_path: Path):
    """One number for users who want one: stability subject to plasticity >= 90% of naive's."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    summary = run_sweep(SweepOptions(strategy="l2sp", trials=3, seeds=1, epochs=2, results_dir=str(tmp_path),
                                     study="one", objective="constrained", min_plasticity=0.9, sampler="nsga2",
                                     quiet=True))
    assert summary.complete and summary.counts["finished"] == 5
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "one" / "optuna.journal")))
    study = optuna.load_study(study_name="one", storage=storage)
    assert len(study.directions) == 1 and isinstance(study.sampler, optuna.samplers.BaseSampler)
    df = pq.read_table(tmp_path / "one" / "trials.parquet").to_pandas()
    naive_plasticity = df[df.role == "naive"].val_plasticity_mean.item()
    for trial in study.trials:
        row = df[df.trial_id == trial.user_attrs["tune_trial_id"]].iloc[0]
        feasible = row.val_plasticity_mean >= 0.9 * naive_plasticity
        # feasible trials score their stability; infeasible ones score below every feasible one
        assert trial.value == pytest.approx(row.val_stability_mean) if feasible else trial.value < -1
