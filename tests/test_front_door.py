"""What a new user meets first (issue 14): the report's verdict and recommendation, the plots' markers,
constraint units, a resume mismatch, help and misspellings, live progress, the Optuna study's names."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweep.analysis import plots
from sweep.analysis.choose import choose
from sweep.analysis.constraints import parse_constraint
from sweep.analysis.io import load_study
from sweep.analysis.report import DEFAULT_CONSTRAINT, build_report, verdict
from sweep.analysis.report_tables import references_table
from sweep.errors import ConfigError
from tests.fake_study import make_study, write_study

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("ewc", "l2sp", "distill", "replay", "freeze")
SCENARIOS = ("task", "class", "domain")


# --- item 1: the verdict, right for every strategy and scenario
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("flat", [False, True], ids=["tradeoff", "flat"])
def test_verdict_names_only_what_is_true(tmp_path: Path, strategy: str, scenario: str, flat: bool) -> None:
    study = load_study(make_study(tmp_path, "s", n_trials=6, strategy=strategy, scenario=scenario, flat=flat))
    warn, text = verdict(study)
    assert warn == flat
    assert text.startswith("No trade-off" if flat else "Trade-off present")
    assert f"{strategy} " in text and f"{scenario}-incremental" in text
    assert "EWC" not in text  # the strategy is named as the study has it, never a fixed "EWC"
    for other in set(SCENARIOS) - {scenario}:
        assert f"{other}-incremental" not in text
    shared_head = "one head serves every class" in text
    assert shared_head == (flat and scenario == "class" and strategy != "replay")
    if flat and strategy == "replay":
        assert "Replay is already in this strategy" in text
    if not flat:
        assert "Along the front" in text and "stability rises from" in text  # what the front shows


def test_verdict_says_when_naive_already_keeps_the_old_tasks(tmp_path: Path) -> None:
    folder = make_study(tmp_path, "easy", n_trials=6, flat=True, scenario="task")
    trials = load_study(folder).trials.copy()
    naive = trials["role"] == "naive"
    for column in ("val_stability_mean", "test_stability_mean"):
        trials.loc[trials["role"] == "joint", column] = float(trials.loc[naive, column].iloc[0]) + 0.005
    write_study(folder, trials)
    warn, text = verdict(load_study(folder))
    assert warn and "little forgetting to mitigate" in text and "one head" not in text


def test_report_recommends_a_setting_under_a_stated_default_constraint(tmp_path: Path) -> None:
    study = load_study(make_study(tmp_path, "ewc", n_trials=10))
    text = build_report(study)  # no objective, no constraint given
    box = re.search(r'<div class="verdict.*?</div>', text, re.S)
    assert box is not None
    expected = choose(study, "stability", [DEFAULT_CONSTRAINT])
    assert expected.feasible and expected.trial is not None
    assert "Recommended setting" in box.group(0) and f"trial {expected.trial['trial_id']}" in box.group(0)
    assert "plasticity &gt;= 0.95 * naive" in box.group(0)  # the constraint is stated
    assert "default question" in text and "No constraint given" in text
    assert "strategy: ewc" in text  # the chosen config as YAML


def test_recommendation_box_wraps_instead_of_overflowing(tmp_path: Path) -> None:
    study = load_study(make_study(tmp_path, "ewc", n_trials=6))
    text = build_report(study, constraints=["plasticity >= naive - 0.05"])
    rule = re.search(r"\bpre \{([^}]*)\}", text)
    assert rule is not None and "white-space: pre-wrap" in rule.group(1) and "overflow-wrap: anywhere" in rule.group(1)
    assert '<pre class="choice">' in text


def test_joint_is_not_called_the_ceiling_for_plasticity(tmp_path: Path) -> None:
    study = load_study(make_study(tmp_path, "ewc", n_trials=4))
    table = references_table(study)
    assert "ceiling for both" not in table and "not for plasticity" in table
    readme = (REPO / "README.md").read_text()
    assert "ceiling for both" not in readme and "not for plasticity" in readme


# --- item 7: markers
def test_reference_markers_are_hollow(tmp_path: Path) -> None:
    study = load_study(make_study(tmp_path, "ewc", n_trials=6))
    ax = plots.plot_front(study).axes[0]
    naive = [line for line in ax.get_lines() if line.get_marker() == "X"]
    assert naive and all(line.get_markerfacecolor() == "none" for line in naive)
    studies = [study, load_study(make_study(tmp_path, "replay", n_trials=6, strategy="replay"))]
    scatter_faces = [c.get_facecolors() for c in plots.plot_fronts(studies).axes[0].collections
                     if getattr(c, "get_paths", None) and len(c.get_offsets()) == 1]
    assert scatter_faces and all(len(faces) == 0 or faces[0][3] == 0 for faces in scatter_faces)


def test_sensitivity_groups_differ_in_colour_not_only_marker(tmp_path: Path) -> None:
    folder = make_study(tmp_path, "ewc", n_trials=8)
    trials = load_study(folder).trials.copy()
    search = trials.index[trials["role"] == "search"]
    trials.loc[search, "hp_fisher"] = ["exact", "empirical"] * (len(search) // 2) + ["exact"] * (len(search) % 2)
    write_study(folder, trials)
    ax = plots.plot_sensitivity(load_study(folder), "ewc_lambda", by="fisher").axes[0]
    colours = {line.get_label(): line.get_color() for line in ax.get_lines() if "fisher=" in str(line.get_label())}
    if not colours:  # errorbar puts the label on its container
        colours = {c.get_label(): c.lines[0].get_color() for c in ax.containers if "fisher=" in c.get_label()}
    stability = {label: colour for label, colour in colours.items() if label.startswith("stability")}
    assert len(stability) == 2 and len(set(stability.values())) == 2, colours


# --- item 6: units of a constraint
@pytest.mark.parametrize("text", ["plasticity >= 95", "stability >= naive - 5", "acc < 80"])
def test_percent_without_percent_sign_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"fraction .*write 0\.\d+ or \d+%"):
        parse_constraint(text)


def test_percent_and_fractions_read_the_same(tmp_path: Path) -> None:
    assert parse_constraint("plasticity >= 95%").number == pytest.approx(0.95)
    assert parse_constraint("plasticity >= 0.95").number == pytest.approx(0.95)
    assert parse_constraint("stability >= naive * 0.95").number == pytest.approx(0.95)  # a factor, not a fraction
    assert parse_constraint("retention >= 1.02").number == pytest.approx(1.02)  # a ratio may pass 1
    study = load_study(make_study(tmp_path, "ewc", n_trials=6))
    plain, percent = choose(study, constraints=["plasticity >= 0.9"]), choose(study, constraints=["plasticity >= 90%"])
    assert plain.feasible and plain.trial is not None and percent.trial is not None
    assert plain.trial["trial_id"] == percent.trial["trial_id"]


# --- item 2: a resume mismatch names the keys that differ, and only those
def test_resume_mismatch_names_only_the_differing_key(tmp_path: Path) -> None:
    import json

    from sweep.tune.study import check_resume

    base = {"benchmark": "split-digits", "scenario": "task", "epochs": 1, "lr": 1e-3, "strategy": "ewc"}
    meta = {"strategy": "ewc", "base_config": base, "seeds": [0, 1], "objective": "pareto", "space_sha256": "x",
            "weights_sha256": {}}
    (tmp_path / "study.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as err:
        check_resume(tmp_path, {**meta, "base_config": {**base, "epochs": 5}})
    message = str(err.value)
    assert "epochs is 5 here, 1 in the study" in message
    assert "split-digits" not in message and "'lr'" not in message and "{" not in message


# --- item 4: help and misspellings
def test_sweep_help_imports_neither_torch_nor_ray() -> None:
    code = ("import sys\nfrom sweep.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'ray', 'optuna', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_name_lists_in_help_equal_the_registries() -> None:
    from sweep.data.benchmarks import BENCHMARKS
    from sweep.hparams import BENCHMARK_NAMES, BY_NAME, FISHER_ESTIMATORS, SCENARIOS, STRATEGY_NAMES
    from sweep.strategies.fisher import ESTIMATORS
    from sweep.strategies.registry import STRATEGIES

    assert tuple(STRATEGIES) == STRATEGY_NAMES
    assert tuple(BENCHMARKS) == BENCHMARK_NAMES
    assert tuple(FISHER_ESTIMATORS) == tuple(ESTIMATORS)
    assert BY_NAME["scenario"].choices == SCENARIOS


def help_text(command: str) -> str:
    out = subprocess.run([sys.executable, "-m", "sweep.cli", command, "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=120, env={**os.environ, "COLUMNS": "1000"})
    assert out.returncode == 0, out.stderr
    return " ".join(re.sub(r"-\n\s+", "-", out.stdout).split())  # one line: argparse wraps where the width falls


def options_listed(help_: str) -> set[str]:
    """The flags a help's options section offers (not those its prose mentions)."""
    return set(re.findall(r"(?:^| )(--[a-z][a-z0-9-]*) [A-Z]", help_.split(" options: ", 1)[1]))


def test_train_help_lists_allowed_values() -> None:
    text = help_text("train")
    for names in ("naive, joint, ewc, distill, replay, l2sp, freeze", "exact, sampled, empirical, batched",
                  "class, task, domain", "split-digits, split-mnist, permuted-mnist"):
        assert names in text, names
    assert "--ewc-lambda" in text and "--frozen-layers" in text


def test_pretrain_help_lists_only_flags_that_act_on_task_1() -> None:
    offered = options_listed(help_text("pretrain"))
    for flag in ("--strategy", "--ewc-lambda", "--fisher", "--replay-size", "--distill-alpha", "--l2sp-lambda",
                 "--frozen-layers", "--finetune-lr", "--lr-decay", "--early-stop-patience", "--pretrained"):
        assert flag not in offered, flag
    for flag in ("--benchmark", "--epochs", "--lr", "--init-weights", "--out", "--hidden"):
        assert flag in offered, flag
    assert {"--strategy", "--ewc-lambda", "--pretrained", "--finetune-lr"} <= options_listed(help_text("train"))


def run_main(*argv: str) -> tuple[int, str]:
    from sweep.cli import main

    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    finally:
        sys.stderr = old
    return code, err.getvalue()


def test_unknown_flag_names_the_command_and_suggests() -> None:
    code, err = run_main("train", "--ewc-lamda", "3")
    assert code == 2 and err.startswith("sweep train: error: unrecognized arguments: --ewc-lamda 3")
    assert "did you mean '--ewc-lambda'" in err
    code, err = run_main("pretrain", "--out", "x.pt", "--ewc-lambda", "3")  # a flag pretrain does not take
    assert code == 2 and err.startswith("sweep pretrain: error: unrecognized arguments: --ewc-lambda")


@pytest.mark.parametrize(("argv", "suggestion"), [
    (("trian",), "did you mean 'train'"),
    (("train", "--scenario", "taks"), "did you mean 'task'"),
    (("train", "--fisher", "emprical"), "did you mean 'empirical'"),
    (("train", "--strategy", "ewx"), "did you mean 'ewc'"),
    (("train", "--benchmark", "split-digit"), "did you mean 'split-digits'"),
    (("run", "--sampler", "tpee"), "did you mean 'tpe'"),
])
def test_misspelt_values_get_a_suggestion(argv: tuple[str, ...], suggestion: str) -> None:
    code, err = run_main(*argv)
    assert code == 2 and suggestion in err, err
    if argv[0] != "trian":
        assert err.startswith(f"sweep {argv[0]}: error:")


def test_run_scenario_typo_is_the_flags_fault_not_the_space_files(tmp_path: Path) -> None:
    code, err = run_main("run", "--scenario", "taks", "--results", str(tmp_path))
    assert code == 2 and "--scenario 'taks'" in err and "did you mean 'task'" in err
    assert ".yaml" not in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


# --- item 3: live progress
def test_progress_lines_when_not_a_terminal() -> None:
    from sweep.tune.progress import HEARTBEAT_S, Progress

    now = [0.0]
    out = io.StringIO()
    progress = Progress(4, stream=out, tty=False, clock=lambda: now[0])
    progress.tick()  # a first line at once: the sweep is alive
    progress.trial_started("a")
    progress.trial_started("b")
    now[0] = HEARTBEAT_S / 2
    progress.tick()  # not due yet
    now[0] = HEARTBEAT_S + 1
    progress.tick()  # the heartbeat
    now[0] = 60.0
    row = {"trial_id": "a", "role": "search", "status": "finished", "val_stability_mean": 0.8,
           "val_plasticity_mean": 0.7}
    progress.trial_recorded(row, lambda: out.write("ROW a\n"))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("trials: 0/4 done, 0 running, 4 pending | 0:00 elapsed")
    assert lines[1].startswith("trials: 0/4 done, 2 running, 2 pending | 0:31 elapsed")
    assert lines[2] == "ROW a"
    assert lines[3] == ("trials: 1/4 done, 1 running, 2 pending | 1:00 elapsed, about 3:00 left"
                        " | front: 1 trial, stability 80.0%, plasticity 70.0%")
    assert "\r" not in out.getvalue()


def test_progress_in_place_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from sweep.tune.progress import Progress

    monkeypatch.setenv("COLUMNS", "200")  # a terminal wide enough for the whole line (it is cut to the width)

    now = [0.0]
    out = io.StringIO()
    earlier = [{"trial_id": "n", "role": "naive", "status": "finished"}]  # a resumed study's
    progress = Progress(3, earlier, stream=out, tty=True, clock=lambda: now[0])
    progress.trial_started("a")
    now[0] = 10.0
    progress.trial_recorded({"trial_id": "a", "role": "search", "status": "error"}, lambda: out.write("ROW a\n"))
    progress.phase_ended()
    text = out.getvalue()
    assert text.startswith("\r\x1b[Ktrials: 1/3 done, 1 running, 1 pending")
    assert "\r\x1b[KROW a\n" in text  # the status line is cleared before the row scrolls above it
    assert "trials: 2/3 done (1 errored or diverged), 0 running, 1 pending | 0:10 elapsed, about 0:10 left" in text
    assert text.endswith("\n")  # the phase's last status stays on screen


def test_train_progress_when_not_a_terminal() -> None:
    from sweep.commands.train import ProgressBar

    now = [0.0]
    out = io.StringIO()
    bar = ProgressBar(2, enabled=True, stream=out, clock=lambda: now[0])
    for step in range(50, 401, 50):
        now[0] = step / 100
        bar(0, step, 400)
    bar(0, 400, 400)
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["task 1/2: 25% (100/400 steps), 1.0s elapsed", "task 1/2: 50% (200/400 steps), 2.0s elapsed",
                         "task 1/2: 75% (300/400 steps), 3.0s elapsed"]
    assert lines[3] == "task 1/2: 400 steps done, 4.0s elapsed"


# --- item 9: the Optuna study names its objectives and carries the references
def test_optuna_study_names_objectives_and_holds_the_references() -> None:
    import optuna

    from sweep.tune.searcher import describe_study

    study = optuna.create_study(directions=["maximize", "maximize"])
    rows = [{"trial_id": "n", "role": "naive", "status": "finished", "n_seeds": 2, "val_stability_mean": 0.51,
             "val_plasticity_mean": 0.9, "test_stability_mean": float("nan")},
            {"trial_id": "j", "role": "joint", "status": "finished", "n_seeds": 2, "val_stability_mean": 0.94},
            {"trial_id": "s", "role": "search", "status": "finished", "n_seeds": 2, "val_stability_mean": 0.7}]
    describe_study(study, SimpleNamespace(trials=rows), multi=True)  # type: ignore[arg-type]
    assert study.metric_names == ["val_stability", "val_plasticity"]
    assert set(study.user_attrs) == {"reference_naive", "reference_joint"}
    naive = study.user_attrs["reference_naive"]
    assert naive["val_stability_mean"] == 0.51 and naive["test_stability_mean"] is None and naive["trial_id"] == "n"
    assert len(study.trials) == 0  # references are attributes, never trials the sampler would learn from
    single = optuna.create_study(direction="maximize")
    describe_study(single, SimpleNamespace(trials=[]), multi=False)  # type: ignore[arg-type]
    assert single.metric_names == ["val_stability_constrained"]


def test_notebooks_default_to_the_quick_starts_study() -> None:
    import json

    for name in ("study", "compare"):
        source = "".join("".join(cell["source"]) for cell in json.loads((REPO / "analysis" / f"{name}.ipynb")
                                                                          .read_text())["cells"])
        assert '"results/quickstart", "../results/quickstart"' in source, name
        assert "results/demo" not in source and "../results/ewc," not in source
    makefile = (REPO / "Makefile").read_text()
    assert "STUDY=quickstart" in makefile and "quickstart.yaml" in makefile


def test_design_doc_exists_and_is_cited() -> None:
    readme = (REPO / "README.md").read_text()
    assert "DESIGN.md" not in readme.replace("docs/design.md", "")
    for link in re.findall(r"\]\((docs/[^)#]+)\)", readme):
        assert (REPO / link).is_file(), link
    design = (REPO / "docs" / "design.md").read_text()
    for term in ("plasticity", "stability", "BWT", "class-incremental", "task-incremental", "domain-incremental",
                 "2 tasks by default", "ceiling for stability"):
        assert term in design, term
    assert "2 tasks by default" in readme and "GB" in readme and "minutes" in readme

