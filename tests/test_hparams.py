"""The hyperparameter table and its views: every row reaches TrainConfig, the flags and their help, the
Parquet columns, ``sweep choose`` and the search spaces, so a new row is tested without a new test.

Also the fixes that came with it: ``sweep run`` takes every field (``--hidden 400,400``), a space may fix
a setting, ``~`` is expanded in path options, and the resume hint repeats the arguments ``main`` was given.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweep import hparams
from sweep.analysis.choose import HYPERPARAMETER_TYPES
from sweep.config import TrainConfig
from sweep.errors import ConfigError
from sweep.hparams import BY_NAME, HYPERPARAMETER, ROWS, SETTING, HParam
from sweep.results import schema
from sweep.results.store import TRIALS_SCHEMA, StudyStore
from sweep.strategies.registry import STRATEGIES, build_strategy, strategy_params
from sweep.strategies.specs import EVERY_STRATEGY, STRATEGY_ROWS
from sweep.tune.options import SweepOptions, base_config
from sweep.tune.prefix_cache import prefix_free_fields
from sweep.tune.search_space import load_space, space_path
from tests.helpers import REPO, cli_env

IDS = [row.name for row in ROWS]
ARROW = {int: pa.int64(), float: pa.float64(), str: pa.string()}
STUDY_V2 = Path(__file__).resolve().parent / "data" / "study_v2"


def words(text: str) -> str:
    """Without whitespace: argparse wraps lines, also at hyphens (split-\nmnist)."""
    return "".join(text.split())


@pytest.fixture(scope="module")
def train_help() -> str:
    result = subprocess.run([sys.executable, "-m", "sweep.cli", "train", "--help"], capture_output=True, text=True,
                            cwd=REPO, env=cli_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    return words(result.stdout)


# --- every row, in every view
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_row_is_a_train_config_field_with_its_default_and_type(row: HParam):
    field = {f.name: f for f in dataclasses.fields(TrainConfig)}[row.name]
    assert field.default == row.default
    assert typing.get_type_hints(TrainConfig)[row.name] == row.annotation
    assert getattr(TrainConfig(), row.name) == row.default
    assert row.check(row.default) == row.default  # the default is allowed by its own row


def test_train_config_fields_are_the_table_in_order():
    assert TrainConfig.field_names() == hparams.FIELD_NAMES == schema.CONFIG_FIELDS


def test_type_checkers_see_the_table_fields():
    """config.py spells TrainConfig's fields out for mypy (``if TYPE_CHECKING:``): the table's, in order, same types."""
    tree = ast.parse((REPO / "sweep" / "config.py").read_text())
    methods = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "_TrainConfigMethods")
    block = next(n for n in methods.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    declared = {node.target.id: eval(ast.unparse(node.annotation))  # our own source: "str | None", "int"...
                for node in block.body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and not node.target.id.startswith("__")}
    assert list(declared) == list(hparams.FIELD_NAMES)
    assert declared == {row.name: row.annotation for row in ROWS}


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_row_is_a_train_flag_whose_help_is_its_why(row: HParam, train_help: str):
    assert words(f"{row.flag} {'N,N,...' if row.type is tuple else row.name.upper()}") in train_help
    assert words(row.why) in train_help
    assert words(row.help()) in train_help  # why, allowed values or range, default


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_hyperparameters_are_parquet_columns_and_choose_types_settings_are_not(row: HParam):
    column = f"hp_{row.name}"
    if row.kind == HYPERPARAMETER:
        assert row.name in schema.HYPERPARAMETERS
        assert TRIALS_SCHEMA.field(column).type == ARROW[row.type]
        assert HYPERPARAMETER_TYPES[row.name] is row.type
    else:
        assert row.kind == SETTING
        assert column not in TRIALS_SCHEMA.names and row.name not in HYPERPARAMETER_TYPES


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_every_field_can_be_fixed_for_a_sweep(row: HParam):
    """In a space's fixed: (the strategy's hyperparameters, the space settings) or as a sweep run flag."""
    if row.per_sweep:
        assert row.name in hparams.SWEEP_LEVEL
    elif row.kind == SETTING:
        assert row.name in hparams.SPACE_SETTINGS
    else:
        assert row.name in hparams.GENERAL_PARAMS or row.owner in STRATEGY_ROWS


def test_the_views_keep_their_landed_contents():
    assert schema.MACHINE_FIELDS == ("data_root", "seed", "threads")  # threads: how fast, not what is learned
    assert set(hparams.SWEEP_LEVEL) == {"benchmark", "scenario", "num_tasks", "class_order", "class_shuffle",
                                        "class_outputs", "data_root", "seed",
                                        "strategy", "pretrained", "init_weights", "model", "threads"}
    assert set(hparams.GENERAL_PARAMS) == {"lr", "finetune_lr", "epochs", "batch_size", "optimizer", "weight_decay",
                                           "frozen_layers", "lr_decay", "early_stop_patience", "warmup_epochs",
                                           "lr_schedule", "dropout", "optimizer_state"}
    assert len(schema.HYPERPARAMETERS) == 27 + 5 + 4 + 6 + 2  # + optimizer_state, si_c, si_xi, mas_lambda, mas_samples
    # + adapter_rank, adapter_alpha, adapter_layers, adapter_mode
    # + genreplay_latent, genreplay_epochs, genreplay_ratio, genreplay_temperature, genreplay_weighting,
    #   genreplay_targets
    # + distill_variant, distill_weighting
    # the prefix-cache key leaves out what it always left out (dropout acts on task 1: it stays in)
    assert prefix_free_fields("naive") == {"finetune_lr", "frozen_layers", "lr_decay", "early_stop_patience",
                                           "warmup_epochs", "lr_schedule", "optimizer_state"}
    assert prefix_free_fields("ewc+replay") - prefix_free_fields("naive") == {"ewc_lambda", "replay_ratio"}
    assert prefix_free_fields("distill+l2sp") - prefix_free_fields("naive") == {
        "distill_variant", "distill_weighting", "distill_temperature", "distill_alpha", "feature_distill_weight",
        "feature_distill_layers", "l2sp_lambda"}


# --- the strategies: their blocks are their constructors
def test_every_registered_strategy_has_a_block_and_nothing_else_does():
    assert set(STRATEGY_ROWS) == set(STRATEGIES)
    assert set(EVERY_STRATEGY) <= set(STRATEGIES)


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_strategy_is_built_from_its_block(name: str):
    block = STRATEGY_ROWS[name]
    init = STRATEGIES[name].__init__
    parameters = {} if init is object.__init__ else inspect.signature(init).parameters
    keywords = {k: p for k, p in parameters.items() if k != "self"}
    assert set(keywords) == set(block)  # the generic from_config passes exactly these
    for field, p in keywords.items():
        assert p.default == BY_NAME[field].default, field  # its defaults are the table's
    assert strategy_params(name) == tuple(block)
    spec = "ewc" if name == "freeze" else name
    build_strategy(TrainConfig(strategy=spec, frozen_layers=1 if name == "freeze" else 0), num_layers=3)


# --- one check, one message shape
@pytest.mark.parametrize("name,value,message", [
    ("lr", 0.0, "lr must be > 0, got 0.0"),
    ("val_fraction", 1, "val_fraction must be in (0, 1), got 1.0"),
    ("replay_ratio", 1.0, "replay_ratio must be in [0, 1), got 1.0"),
    ("lr_decay", 0, "lr_decay must be in (0, 1], got 0.0"),
    ("seed", -1, "seed must be in 0..4294967295, got -1"),
    ("num_tasks", 1, "num_tasks must be >= 2 (forgetting needs two tasks), got 1"),
    ("scenario", "online", "scenario 'online' is unknown; allowed: class, task, domain"),
    ("hidden", [0], "hidden values must each be in 1..65536, got [0]"),
    ("epochs", "3", "epochs must be int, got '3'"),
    ("epochs", None, "epochs may not be null"),
    ("pretrained", " ", "pretrained must be a path to a file, got ' '"),
])
def test_a_bad_value_is_one_line_naming_it_and_what_is_allowed(name: str, value: object, message: str):
    with pytest.raises(ConfigError) as info:
        hparams.check(name, value)
    assert str(info.value).startswith(message)
    with pytest.raises(ConfigError, match=f"^{BY_NAME[name].flag} "):
        hparams.check(name, value, BY_NAME[name].flag)


def test_a_path_field_expands_the_home_folder():
    assert TrainConfig(data_root="~/x").data_root == str(Path.home() / "x")
    assert hparams.check("init_weights", "~/w.pt") == str(Path.home() / "w.pt")


# --- sweep run: every field, over the space's fixed values
def run_options(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> SweepOptions:
    """The SweepOptions `sweep run argv` builds (run_sweep is replaced: no Ray, nothing written)."""
    import sweep.tune.driver as driver
    from sweep.cli import main

    seen: list[SweepOptions] = []

    def fake_run_sweep(options: SweepOptions) -> None:
        seen.append(options)
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "run_sweep", fake_run_sweep)
    assert main(["run", *argv]) == 130
    return seen[0]


def test_sweep_run_hidden_reaches_every_trials_config(monkeypatch: pytest.MonkeyPatch):
    options = run_options(["--strategy", "naive", "--hidden", "400,400", "--val-fraction", "0.2",
                           "--class-order", "9,8,7,6,5,4,3,2,1,0", "--epochs", "2"], monkeypatch)
    assert options.extra == {"hidden": [400, 400], "val_fraction": 0.2, "class_order": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]}
    assert options.epochs == 2 and options.benchmark == "split-digits"  # flags kept, defaults kept
    base = base_config(options, load_space(space_path("naive")))
    config = TrainConfig.from_mapping(base)
    assert config.hidden == (400, 400) and config.val_fraction == 0.2 and config.epochs == 2


def test_a_space_fixes_a_setting_and_the_run_overrides_it(tmp_path: Path):
    path = tmp_path / "naive.yaml"
    path.write_text("strategy: naive\nfixed: {epochs: 1, hidden: [400, 400]}\n"
                    "params:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    space = load_space(path)
    assert TrainConfig.from_mapping(base_config(SweepOptions(strategy="naive"), space)).hidden == (400, 400)
    run_level = SweepOptions(strategy="naive", extra={"hidden": [32]})
    assert TrainConfig.from_mapping(base_config(run_level, space)).hidden == (32,)


@pytest.mark.parametrize("body,needle", [
    ("fixed: {seed: 1}\n", "set per sweep"),
    ("params:\n  hidden: {type: categorical, choices: [1, 2]}\n", "is a setting"),
    ("fixed: {ewc_lambda: 1.0}\n", "not a parameter of strategy 'naive'"),
    ("params:\n  lr: {type: float, low: 0.0, high: 1.0}\n", "lr must be > 0"),
])
def test_a_space_is_checked_against_the_table(tmp_path: Path, body: str, needle: str):
    path = tmp_path / "naive.yaml"
    path.write_text("strategy: naive\n" + body)
    with pytest.raises(ConfigError, match=needle):
        load_space(path)


@pytest.mark.parametrize("options,needle", [
    (SweepOptions(strategy="naive", extra={"lr": 0.01}), "--lr fixes lr, which"),  # the space searches lr
    (SweepOptions(strategy="naive", extra={"ewc_lambda": 1.0}), "not a parameter of strategy 'naive'"),
])
def test_a_run_level_value_must_fit_the_space(options: SweepOptions, needle: str):
    with pytest.raises(ConfigError, match=needle):
        base_config(options, load_space(space_path("naive")))


def test_sweep_run_bad_flags_are_named_as_flags(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    from sweep.cli import main

    assert main(["run", "--strategy", "naive", "--hidden", "4,x"]) == 2
    assert "--hidden must be comma-separated integers" in capsys.readouterr().err
    assert main(["run", "--strategy", "naive", "--hidden", "0", "--results", "/nonexistent"]) == 2
    assert "--hidden values must each be in 1..65536" in capsys.readouterr().err


def test_path_options_expand_the_home_folder(monkeypatch: pytest.MonkeyPatch):
    options = run_options(["--strategy", "naive", "--data-root", "~/x", "--results", "~/r", "--space", "~/s.yaml",
                           "--pretrained", "~/p.pt"], monkeypatch)
    home = Path.home()
    assert options.results_dir == str(home / "r") and options.space_file == str(home / "s.yaml")
    assert options.data_root == str(home / "x") and options.pretrained == str(home / "p.pt")
    base = base_config(SweepOptions(strategy="naive", data_root="~/x", init_weights="~/i.pt"),
                       load_space(space_path("naive")))
    assert base["data_root"] == str((home / "x").resolve()) and base["init_weights"] == str((home / "i.pt").resolve())


def test_the_resume_hint_repeats_the_arguments_main_was_given(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture):
    monkeypatch.setattr(sys, "argv", ["python", "-m", "pytest", "run", "--other"])  # not what main was given
    run_options(["--strategy", "naive", "--study", "x y", "--hidden", "400,400", "--resume"], monkeypatch)
    err = capsys.readouterr().err
    assert "Resume with: sweep run --strategy naive --study 'x y' --hidden 400,400 --resume" in err
    assert "--other" not in err


# --- schema evolution: a column the file lacks is null
def test_the_study_store_reads_a_missing_hp_column_as_null_and_writes_it_back(tmp_path: Path):
    study = tmp_path / "study"
    shutil.copytree(STUDY_V2, study)
    table = pq.read_table(study / "trials.parquet")
    pq.write_table(table.drop_columns(["hp_lr_decay", "hp_early_stop_patience"]), study / "trials.parquet")
    store = StudyStore(study)
    assert all(row["hp_lr_decay"] is None and row["hp_early_stop_patience"] is None for row in store.trials)
    row = {**store.trials[0], "trial_id": "new", "hp_lr_decay": 0.5}
    assert store.add({k: v for k, v in row.items() if k != "schema_version"}, [])
    again = pq.read_table(study / "trials.parquet")
    assert again.column("hp_lr_decay").to_pylist()[-1] == 0.5 and again.num_rows == table.num_rows + 1


def test_a_file_lacking_other_columns_names_every_missing_one(tmp_path: Path):
    study = tmp_path / "study"
    shutil.copytree(STUDY_V2, study)
    table = pq.read_table(study / "trials.parquet")
    pq.write_table(table.drop_columns(["hp_lr", "val_stability_mean"]), study / "trials.parquet")
    from sweep.errors import ResultsError

    # the required column first; the optional ones after it (hp_lr among them, listed in the table's order)
    with pytest.raises(ResultsError, match=r"missing columns val_stability_mean \(and optional ones: .*hp_lr"):
        StudyStore(study)


def test_the_landed_study_json_has_no_defaults_and_still_resumes_its_base_config():
    """A new study records the table's defaults; one from the landed version has none and needs none."""
    meta = json.loads((STUDY_V2 / "study.json").read_text())
    assert "defaults" not in meta
    base = base_config(SweepOptions(strategy="ewc", epochs=1), load_space(space_path("ewc")))
    assert base == meta["base_config"]  # the same sweep run builds the same base config: --resume accepts it


def test_the_table_is_torch_free():
    code = ("import sys, sweep.hparams, sweep.config, sweep.results.schema, sweep.analysis.choose; "
            "assert 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
