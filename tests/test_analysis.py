"""Analysis core: reading studies, Pareto fronts, hypervolume, the no-trade-off check, `choose`."""

from __future__ import annotations

import itertools
import json
import math
import pickle
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sweep.analysis import choose as choose_mod
from sweep.analysis import pareto
from sweep.analysis.choose import choose, format_choice, parse_constraint, read_chosen_config, write_choice
from sweep.analysis.io import load_studies, load_study
from sweep.errors import ConfigError, ResultsError
from sweep.results import schema
from tests.fake_study import make_study, trial_row, write_study

HP = {"hp_lr": 1e-3, "hp_epochs": 3, "hp_batch_size": 64, "hp_optimizer": "adam"}


def _row(
    trial_id: str,
    stability: float,
    plasticity: float,
    retention: float = math.nan,
    *,
    status: str = "finished",
    role: str = "search",
    std: float = 0.005,
    **extra: object,
) -> dict[str, object]:
    """A row with val and test metrics; test is val minus one point, so tests can tell them apart."""
    values: dict[str, object] = {}
    for split, shift in (("val", 0.0), ("test", -0.01)):
        for metric, value in (
            ("stability", stability),
            ("plasticity", plasticity),
            ("retention", retention),
            ("acc", (stability + plasticity) / 2),
        ):
            values[schema.metric_column(split, metric)] = value + shift
            values[schema.metric_column(split, metric, "std")] = std
    hps = {**HP, "hp_ewc_lambda": 10.0 ** len(trial_id), "hp_fisher": "exact"} if role == "search" else HP
    return {"trial_id": trial_id, "status": status, "role": role, **hps, **values, **extra}


# hand-made study: naive plasticity 0.97 -> "plasticity >= naive - 0.01" means >= 0.96
HAND_ROWS = [
    _row("naive", 0.40, 0.97, 0.41, role="naive", strategy="naive"),
    _row("joint", 0.95, 0.96, 0.98, role="joint", strategy="joint"),
    _row("a", 0.50, 0.965, 0.52),
    _row("b", 0.70, 0.962, 0.72),
    _row("c", 0.80, 0.955, 0.82),
    _row("d", 0.90, 0.80, 0.96),
    _row("e", 0.91, 0.85, 0.955),
    _row("err", math.nan, math.nan, status="error", reason="RuntimeError: boom"),
    # a diverged trial whose numbers would win everything: must never be chosen or on a front
    _row("div", 0.99, 0.99, 0.99, status="diverged", reason="loss became nan"),
    _row("nan", math.nan, 0.99, 0.99),
]


@pytest.fixture
def hand_study(tmp_path: Path) -> Path:
    return write_study(tmp_path / "hand", HAND_ROWS)


# --- reading ---------------------------------------------------------------------------------


def test_load_study_reads_what_make_study_wrote(tmp_path: Path) -> None:
    study = load_study(make_study(tmp_path, "demo", n_trials=6))
    assert study.name == "demo"
    assert list(study.trials.columns) == list(schema.TRIALS_COLUMNS)
    assert set(study.trials["role"]) == {"search", "naive", "joint"}
    assert set(study.trials["status"]) == {"finished", "error", "diverged"}
    assert set(study.accuracy["after_task"]) == {0, 1, 2} and set(study.accuracy["seed"]) == {0, 1, 2}
    # the table's metrics are the accuracy matrices' metrics (T=2: stability = R[2, 1])
    trial = study.finished("search").iloc[0]
    rows = study.accuracy[
        (study.accuracy["trial_id"] == trial["trial_id"]) & (study.accuracy["split"] == "val")
    ]
    r21 = rows[(rows["after_task"] == 2) & (rows["eval_task"] == 1)]["accuracy"]
    assert trial["val_stability_mean"] == pytest.approx(r21.mean())
    assert study.searched_params() == ["lr", "ewc_lambda"]


def test_load_study_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_study(tmp_path, n_trials=4)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the analysis side must not unpickle results")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pd, "read_pickle", refuse)
    assert not load_study(folder).trials.empty


def test_load_study_refuses_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no study at .*trials.parquet"):
        load_study(tmp_path / "nope")


def test_load_study_refuses_truncated_parquet(tmp_path: Path) -> None:
    folder = make_study(tmp_path, n_trials=4)
    data = (folder / "trials.parquet").read_bytes()
    (folder / "trials.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(ResultsError, match="trials.parquet") as info:
        load_study(folder)
    assert "\n" not in str(info.value)


def test_load_study_refuses_other_schema_version(tmp_path: Path) -> None:
    folder = write_study(tmp_path / "old", [trial_row(schema_version=schema.SCHEMA_VERSION + 1)])
    with pytest.raises(ResultsError, match=f"schema_version {schema.SCHEMA_VERSION + 1}"):
        load_study(folder)


def test_load_study_names_missing_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame([trial_row()]).drop(columns=["val_stability_mean", "hp_lr"])
    folder = write_study(tmp_path / "cut", frame)
    with pytest.raises(ResultsError, match=r"val_stability_mean of schema version 2 \(and optional ones: hp_lr\)"):
        load_study(folder)


def test_load_study_refuses_duplicate_trials_and_unknown_status(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="more than once"):
        load_study(write_study(tmp_path / "dup", [trial_row(), trial_row()]))
    with pytest.raises(ResultsError, match="unknown status running"):
        load_study(write_study(tmp_path / "run", [trial_row(status="running")]))


def test_load_studies_keeps_same_named_studies_apart(tmp_path: Path) -> None:
    first, second = (
        make_study(tmp_path / "x", "ewc", n_trials=4),
        make_study(tmp_path / "y", "ewc", n_trials=4),
    )
    assert [s.name for s in load_studies([first, second])] == ["x/ewc", "y/ewc"]
    with pytest.raises(ResultsError, match="no study given"):
        load_studies([])


# --- Pareto front ----------------------------------------------------------------------------


def _table(
    points: list[tuple[float, float]], status: list[str] | None = None, role: list[str] | None = None
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "s": [p[0] for p in points],
            "p": [p[1] for p in points],
            "status": status or ["finished"] * len(points),
            "role": role or ["search"] * len(points),
        }
    )


def test_pareto_front_dominated_equal_and_tied_points() -> None:
    table = _table(
        [
            (0.5, 0.9),  # front
            (0.5, 0.9),  # equal to the previous one: both on the front
            (0.8, 0.7),  # front
            (0.8, 0.6),  # same stability, worse plasticity: dominated
            (0.6, 0.7),  # same plasticity as (0.8, 0.7), worse stability: dominated
            (0.4, 0.4),  # dominated by everything
            (0.9, 0.2),  # front: best stability
        ]
    )
    assert pareto.pareto_front(table, "s", "p").tolist() == [True, True, True, False, False, False, True]


def test_pareto_front_leaves_out_nan_errored_diverged_and_references() -> None:
    table = _table(
        [(0.5, 0.5), (math.nan, 0.9), (0.9, 0.9), (0.95, 0.95), (0.99, 0.99), (0.6, math.inf)],
        status=["finished", "finished", "error", "diverged", "finished", "finished"],
        role=["search", "search", "search", "search", "joint", "search"],
    )
    assert pareto.pareto_front(table, "s", "p").tolist() == [True, False, False, False, False, False]
    # references compete only when asked to
    assert pareto.pareto_front(table, "s", "p", roles=None).tolist() == [
        False,
        False,
        False,
        False,
        True,
        False,
    ]


def test_pareto_front_matches_brute_force_on_ties() -> None:
    rng = np.random.default_rng(0)
    points = [tuple(p) for p in np.round(rng.random((60, 2)) * 5) / 5]  # coarse grid: many ties
    front = pareto.pareto_front(_table(points), "s", "p").tolist()
    for i, q in enumerate(points):
        dominated = any(p[0] >= q[0] and p[1] >= q[1] and p != q for p in points)
        assert front[i] == (not dominated), (i, q)


def test_clearly_dominated_uses_the_spread_over_seeds() -> None:
    table = _table([(0.80, 0.80), (0.79, 0.79), (0.50, 0.50), (0.90, 0.10)])
    table["s_std"] = table["p_std"] = [0.01, 0.01, 0.01, 0.0]
    table = table.rename(columns={"s": "s_mean", "p": "p_mean"})
    clear = pareto.clearly_dominated(table, "s_mean", "p_mean")
    assert clear.tolist() == [False, False, True, False]  # (0.79, 0.79) ± 0.01 overlaps (0.80, 0.80) ± 0.01


def test_fronts_across_studies(tmp_path: Path) -> None:
    ewc = load_study(make_study(tmp_path, "ewc", n_trials=6, seed=1))
    replay = load_study(make_study(tmp_path, "replay", n_trials=6, seed=2, strategy="replay"))
    combined = pareto.fronts([ewc, replay])
    assert set(combined["study"]) == {"ewc", "replay"}
    for name in ("ewc", "replay"):
        rows = combined[combined["study"] == name]
        expected = pareto.pareto_front(rows.drop(columns=["on_front", "on_combined_front"]))
        assert rows["on_front"].tolist() == expected.tolist()
    # a point on the combined front is on its own study's front
    assert not (combined["on_combined_front"] & ~combined["on_front"]).any()
    table = pareto.comparison_table([ewc, replay])
    assert table["ref_stability"].nunique() == 1 and (table["hypervolume"] > 0).all()


# --- hypervolume -----------------------------------------------------------------------------


def test_hypervolume_hand_worked() -> None:
    # boxes from ref (0.4, 0): x in (0.4, 0.5] height 0.8, (0.5, 0.7] height 0.6, (0.7, 0.9] height 0.2
    # = 0.08 + 0.12 + 0.04 = 0.24; the dominated (0.6, 0.5), the duplicate and the point left of ref
    # add nothing
    points = [(0.5, 0.8), (0.7, 0.6), (0.9, 0.2), (0.6, 0.5), (0.7, 0.6), (0.3, 0.95), (math.nan, 1.0)]
    assert pareto.hypervolume(points, (0.4, 0.0)) == pytest.approx(0.24)
    assert pareto.hypervolume([(0.3, 0.9)], (0.4, 0.0)) == 0.0
    assert pareto.hypervolume(np.empty((0, 2)), (0.4, 0.0)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        pareto.hypervolume([(1.0, 2.0, 3.0)], (0.0, 0.0))


def test_study_hypervolume_defaults_to_naive_stability(hand_study: Path) -> None:
    study = load_study(hand_study)
    assert pareto.reference_point(study) == (0.40, 0.0)
    finished = [(0.50, 0.965), (0.70, 0.962), (0.80, 0.955), (0.90, 0.80), (0.91, 0.85)]
    assert pareto.study_hypervolume(study) == pytest.approx(pareto.hypervolume(finished, (0.40, 0.0)))


def test_tradeoff_check_flat_and_not(tmp_path: Path) -> None:
    flat = pareto.tradeoff_check(load_study(make_study(tmp_path, "flat", flat=True)))
    assert flat is not None and not flat.has_tradeoff
    steep = pareto.tradeoff_check(load_study(make_study(tmp_path, "steep")))
    assert steep is not None and steep.has_tradeoff


# --- constraints and choose ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "metric", "op", "reference", "combine", "number"),
    [
        ("plasticity >= naive - 0.01", "plasticity", ">=", "naive", "-", 0.01),
        ("retention>=0.95", "retention", ">=", None, None, 0.95),
        ("retention >= 95%", "retention", ">=", None, None, 0.95),
        ("stability > 0.95 * joint", "stability", ">", "joint", "*", 0.95),
        ("stability ≥ naive * 1.5", "stability", ">=", "naive", "*", 1.5),
        ("bwt >= -0.05", "bwt", ">=", None, None, -0.05),
        ("forgetting < naive", "forgetting", "<", "naive", None, None),
    ],
)
def test_parse_constraint(
    text: str, metric: str, op: str, reference: str | None, combine: str | None, number: float | None
) -> None:
    parsed = parse_constraint(text)
    assert (parsed.metric, parsed.op, parsed.reference, parsed.combine) == (metric, op, reference, combine)
    assert parsed.number == pytest.approx(number) if number is not None else parsed.number is None


@pytest.mark.parametrize(
    "text",
    [
        "plasticity => naive",
        "plasticity >=",
        "plasticity >= naive -",
        ">= 0.9",
        "plasticity >= naive + joint",
        "plasticity >= 0.9 naive",
    ],
)
def test_parse_constraint_refuses_bad_syntax(text: str) -> None:
    with pytest.raises(ConfigError, match="bad constraint"):
        parse_constraint(text)


def test_parse_constraint_refuses_unknown_metric_and_reference() -> None:
    with pytest.raises(
        ConfigError, match="unknown metric 'accuracy': allowed metrics are stability, plasticity"
    ):
        parse_constraint("accuracy >= 0.9")
    with pytest.raises(ConfigError, match="neither a number nor a reference"):
        parse_constraint("stability >= ewc - 0.1")


@pytest.mark.parametrize(
    ("objective", "constraints", "expected"),
    [
        ("stability", [], "e"),  # no constraint: the most stable; never the diverged row
        ("stability", ["plasticity >= naive - 0.01"], "b"),  # naive-relative
        ("plasticity", ["retention >= 0.95"], "e"),  # absolute
        ("plasticity", ["retention >= 95%"], "e"),
        ("stability", ["plasticity >= naive * 0.9"], "c"),  # multiplicative: >= 0.873
        ("stability", ["plasticity >= 0.9 * naive"], "c"),
        (
            "stability",
            ["plasticity >= naive - 0.02", "stability < 0.8"],
            "b",
        ),  # AND; strict excludes c at 0.8
        ("stability", ["plasticity >= naive - 0.02", "stability <= 0.8"], "c"),
        ("stability", ["plasticity >= 0.962"], "b"),  # exactly on the bound is met
    ],
)
def test_choose_picks_the_right_trial(
    hand_study: Path, objective: str, constraints: list[str], expected: str
) -> None:
    choice = choose(load_study(hand_study), objective, constraints)
    assert choice.feasible
    assert choice.trial is not None and choice.trial["trial_id"] == expected
    assert all(result.satisfied and result.margin >= -1e-9 for result in choice.results)


def test_choose_minimize_and_margins(hand_study: Path) -> None:
    choice = choose(load_study(hand_study), "plasticity", ["stability >= 0.85"], maximize=False)
    assert choice.trial is not None and choice.trial["trial_id"] == "d"
    (result,) = choice.results
    assert result.threshold == pytest.approx(0.85) and result.margin == pytest.approx(0.05)


def test_choose_ties_go_to_the_better_partner(tmp_path: Path) -> None:
    rows = [
        _row("naive", 0.4, 0.97, role="naive"),
        _row("x", 0.8, 0.90),
        _row("y", 0.8, 0.92),
        _row("z", 0.8, 0.92),
    ]
    choice = choose(load_study(write_study(tmp_path / "tie", rows)), "stability")
    assert choice.trial is not None and choice.trial["trial_id"] == "y"  # then the smaller id
    assert set(choice.within_noise) == {"x", "z"}


def test_choose_without_feasible_trial_names_the_closest(hand_study: Path) -> None:
    choice = choose(load_study(hand_study), "plasticity", ["stability >= joint + 0.01"])
    assert not choice.feasible and choice.n_feasible == 0
    assert (
        choice.trial is not None and choice.trial["trial_id"] == "e"
    )  # 0.91 vs 0.96: the smallest violation
    assert choice.results[0].margin == pytest.approx(-0.05)
    assert "no trial meets" in choose_mod.format_choice(choice)


def test_choose_refuses_missing_reference(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path / "nojoint", [r for r in HAND_ROWS if r["role"] != "joint"]))
    with pytest.raises(ResultsError, match="refers to joint"):
        choose(study, "stability", ["stability >= joint - 0.1"])


def test_chosen_yaml_layout(hand_study: Path, tmp_path: Path) -> None:
    choice = choose(load_study(hand_study), "stability", ["plasticity >= naive - 0.01"])
    path = write_choice(choice, tmp_path / "out" / "chosen.yaml")
    document = yaml.safe_load(path.read_text())
    assert list(document) == ["config", "evidence"]
    assert document["config"] == {
        "strategy": "ewc",
        "benchmark": "split-digits",
        "scenario": "task",
        "model": "mlp",
        "num_tasks": 2,
        "lr": 0.001,
        "epochs": 3,
        "batch_size": 64,
        "optimizer": "adam",
        "ewc_lambda": 10.0,
        "fisher": "exact",
    }
    assert type(document["config"]["epochs"]) is int and type(document["config"]["ewc_lambda"]) is float
    evidence = document["evidence"]
    assert evidence["trial_id"] == "b" and evidence["maximize"] == "stability" and evidence["split"] == "val"
    assert evidence["constraints"] == [
        {"constraint": "plasticity >= naive - 0.01", "value": 0.962, "threshold": 0.96, "margin": 0.002}
    ]
    assert evidence["val"]["stability"] == {"mean": 0.70, "std": 0.005}
    assert evidence["test"]["stability"]["mean"] == pytest.approx(0.69)  # test is reported beside val
    assert read_chosen_config(path) == document["config"]
    assert not list(path.parent.glob(".*.tmp"))


def test_chosen_config_is_accepted_by_train_config(hand_study: Path, tmp_path: Path) -> None:
    config_module = pytest.importorskip("sweep.config", reason="sweep.config (issue 2) not written yet")
    choice = choose(load_study(hand_study), "stability", ["plasticity >= naive - 0.01"])
    config = read_chosen_config(write_choice(choice, tmp_path / "chosen.yaml"))
    config_module.TrainConfig.from_mapping(config)
    config_module.TrainConfig.from_yaml(tmp_path / "chosen.yaml")  # what `sweep train --config` reads


def test_chosen_config_carries_the_trials_whole_config(hand_study: Path, tmp_path: Path) -> None:
    """What the search did not vary (hidden sizes, validation share, class order, the checkpoint)
    comes from the trial's config column, so `sweep train --config chosen.yaml` rebuilds the trial."""
    from sweep.config import TrainConfig

    checkpoint = tmp_path / "source.pt"
    checkpoint.write_bytes(b"")  # only its path is read here
    whole = {"benchmark": "split-digits", "scenario": "task", "model": "mlp", "strategy": "ewc", "hidden": [64, 32],
             "val_fraction": 0.2, "class_order": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], "epochs": 3, "lr": 0.001,
             "ewc_lambda": 10.0, "pretrained": str(checkpoint), "data_root": "/elsewhere/data", "seed": 7}
    rows = [dict(row, config=json.dumps(whole)) if row["trial_id"] == "b" else row for row in HAND_ROWS]
    study = write_study(tmp_path / "whole", rows)
    choice = choose(load_study(study), "stability", ["plasticity >= naive - 0.01"])
    assert choice.trial is not None and choice.trial["trial_id"] == "b"
    config = read_chosen_config(write_choice(choice, tmp_path / "chosen.yaml"))
    assert config["hidden"] == [64, 32] and config["val_fraction"] == 0.2 and config["pretrained"] == str(checkpoint)
    assert config["class_order"] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0] and config["ewc_lambda"] == 10.0
    assert "data_root" not in config and "seed" not in config  # the sweep machine's path; trials ran seeds 0..n-1
    train = TrainConfig.from_yaml(tmp_path / "chosen.yaml")
    assert train.hidden == (64, 32) and train.val_fraction == 0.2 and train.epochs == 3
    assert "hidden=" not in format_choice(choice)  # the printed line lists the hyperparameters only


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "config column"), ("[1, 2]", "config column"), ('"ewc"', "config column"),
    ("[" * 100_000 + "]" * 100_000, "config column"), ('{"ewc_lamda": 10.0}', "does not know: ewc_lamda"),
])
def test_choose_refuses_a_config_column_it_cannot_use(tmp_path: Path, text: str, message: str) -> None:
    rows = [dict(row, config=text) if row["trial_id"] == "b" else row for row in HAND_ROWS]
    choice = choose(load_study(write_study(tmp_path / "bad", rows)), "stability", ["plasticity >= naive - 0.01"])
    with pytest.raises(ResultsError, match=message) as info:
        choice.config()
    assert "\n" not in str(info.value)


def test_config_fields_are_train_configs_fields() -> None:
    import dataclasses

    from sweep.config import TrainConfig

    assert tuple(f.name for f in dataclasses.fields(TrainConfig)) == schema.CONFIG_FIELDS
    assert set(schema.HYPERPARAMETERS) <= set(schema.CONFIG_FIELDS)
    assert set(schema.MACHINE_FIELDS) <= set(schema.CONFIG_FIELDS)


def test_hand_made_rows_without_a_config_give_the_columns_alone(tmp_path: Path) -> None:
    """Rows with and without a config in one study: the one without is still chosen from its columns."""
    rows = [dict(row, config={"hidden": [8], "strategy": "ewc"}) if row["trial_id"] == "a" else row
            for row in HAND_ROWS]
    choice = choose(load_study(write_study(tmp_path / "mixed", rows)), "stability", ["plasticity >= naive - 0.01"])
    assert choice.trial is not None and choice.trial["trial_id"] == "b"
    assert "hidden" not in choice.config() and choice.config()["ewc_lambda"] == 10.0


def test_hyperparameter_types_match_train_config() -> None:
    config_module = pytest.importorskip("sweep.config", reason="sweep.config (issue 2) not written yet")
    hints = typing.get_type_hints(config_module.TrainConfig)
    for name, kind in choose_mod.HYPERPARAMETER_TYPES.items():
        assert kind in (typing.get_args(hints[name]) or (hints[name],)), name


def test_read_chosen_config_refuses_other_layouts(tmp_path: Path) -> None:
    (tmp_path / "flat.yaml").write_text("lr: 0.1\n")
    (tmp_path / "bad.yaml").write_text("config: [\n")
    for name, message in (
        ("flat.yaml", "no 'config' mapping"),
        ("bad.yaml", "not valid YAML"),
        ("missing.yaml", "cannot read"),
    ):
        with pytest.raises(ConfigError, match=message):
            read_chosen_config(tmp_path / name)


def test_hyperparameter_types_cover_the_schema() -> None:
    assert set(choose_mod.HYPERPARAMETER_TYPES) == set(schema.HYPERPARAMETERS)


def test_every_op_and_rhs_form_evaluates(hand_study: Path) -> None:
    """Each op with each right-hand side form parses and evaluates to a finite threshold."""
    study = load_study(hand_study)
    for op, rhs in itertools.product(
        (">=", "<=", ">", "<"),
        ("0.5", "naive", "naive + 0.1", "joint - 0.1", "naive * 2", "2 * joint", "50%"),
    ):
        choice = choose(study, "stability", [f"stability {op} {rhs}"])
        assert all(math.isfinite(r.threshold) for r in choice.results)


def test_reads_what_the_real_results_writer_writes(tmp_path: Path) -> None:
    results = pytest.importorskip("sweep.results.store", reason="sweep.results.store (issue 4) not written yet")
    made = load_study(make_study(tmp_path, "made", n_trials=5))
    store = results.StudyStore(tmp_path / "real")
    for _, trial in made.trials.iterrows():
        rows = made.accuracy[made.accuracy["trial_id"] == trial["trial_id"]]
        row = {k: (None if v is pd.NA else v) for k, v in trial.items()}
        store.add(row, rows.to_dict("records"))
    real = load_study(tmp_path / "real")
    assert len(real.trials) == len(made.trials) and len(real.accuracy) == len(made.accuracy)
    expected = choose(made, "stability", ["plasticity >= naive - 0.05"])
    chosen = choose(real, "stability", ["plasticity >= naive - 0.05"])
    assert chosen.trial is not None and expected.trial is not None
    assert chosen.trial["trial_id"] == expected.trial["trial_id"]
    assert chosen.config() == expected.config()  # int columns read back as float64 still give ints
