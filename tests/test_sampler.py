"""The search under concurrency (issue 15, item 6): the sampler ``--sampler`` builds, sized to ``--trials``.

Ray-free: each test drives an Optuna study (or the package's OptunaSearch, which needs Ray's library but
no Ray cluster) with ``ask`` and ``tell``, several trials RUNNING at once as Tune keeps them.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from sweep.errors import ConfigError
from sweep.tune.options import SAMPLERS, SweepOptions, validate_options
from sweep.tune.searcher import build_sampler

LOW, HIGH = 10.0, 3.0e4  # the quick start's λ range (search_spaces/quickstart.yaml)
LOG_RANGE = math.log(HIGH / LOW)
QUICK_START_TRIALS = 12
SEEDS = range(20)


def objectives(lam: float) -> tuple[float, float]:
    """Stability rising and plasticity falling with log λ, as in the quick start: a front along λ."""
    x = math.log(lam / LOW) / LOG_RANGE
    return 1 / (1 + math.exp(-10 * (x - 0.4))), 1 / (1 + math.exp(10 * (x - 0.7)))


def closest_pair_of_concurrent_asks(sampler: Any, multi: bool, finished: int = 6, running: int = 4) -> float:
    """``finished`` trials asked and told one by one (past the start-up), then ``running`` asked at once and
    left RUNNING; the smallest distance between two of those, in log λ, as a share of the range."""
    import optuna
    from optuna.distributions import FloatDistribution

    study = optuna.create_study(directions=["maximize", "maximize"] if multi else ["maximize"], sampler=sampler)
    space = {"ewc_lambda": FloatDistribution(LOW, HIGH, log=True)}
    for _ in range(finished):
        trial = study.ask(space)
        stability, plasticity = objectives(trial.params["ewc_lambda"])
        study.tell(trial, [stability, plasticity] if multi else stability + plasticity)
    asked = [math.log(study.ask(space).params["ewc_lambda"]) for _ in range(running)]
    assert len(study.get_trials(states=(optuna.trial.TrialState.RUNNING,))) == running
    return min(abs(a - b) for a, b in itertools.combinations(asked, 2)) / LOG_RANGE


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("multi", [True, False], ids=["pareto", "constrained"])
def test_trials_asked_while_others_run_are_not_near_duplicates(multi: bool) -> None:
    """With the liar, four trials asked at once after the start-up are spread along λ; without it they
    collapse onto TPE's current optimum (measured over 20 seeds: 17 of 20 with two trials within 1% of
    the log range, a median closest pair of 0.5% of it; with the liar 1 or 2 of 20, median 6%)."""
    import optuna

    o = SweepOptions(trials=QUICK_START_TRIALS)
    startup = 3  # a quarter of the quick start's 12 (build_sampler's rule)
    with_liar = [closest_pair_of_concurrent_asks(build_sampler(SweepOptions(**{**o.__dict__, "sampler_seed": s})),
                                                 multi) for s in SEEDS]
    without = [closest_pair_of_concurrent_asks(optuna.samplers.TPESampler(seed=s, n_startup_trials=startup,
                                                                          constant_liar=False), multi) for s in SEEDS]
    collapsed = sum(d < 0.01 for d in with_liar), sum(d < 0.01 for d in without)
    assert collapsed[1] >= 14, f"without the liar only {collapsed[1]} of 20 collapsed: the test shows nothing"
    assert collapsed[0] <= 3, f"with the liar {collapsed[0]} of 20 runs asked near-duplicates"
    assert sorted(with_liar)[len(SEEDS) // 2] > 0.02 > 0.01 > sorted(without)[len(SEEDS) // 2]


@pytest.mark.parametrize(("trials", "startup", "population"), [
    (1, 2, 4), (3, 2, 4), (12, 3, 4), (16, 4, 4), (17, 5, 5), (40, 10, 10), (100, 10, 25), (1000, 10, 50),
])
def test_random_start_up_and_population_fit_the_budget(trials: int, startup: int, population: int) -> None:
    """A quarter of the budget random: TPE's start-up within 2..10, NSGA-II's first generation within 4..50."""
    tpe = build_sampler(SweepOptions(trials=trials, sampler="tpe"))
    nsga2 = build_sampler(SweepOptions(trials=trials, sampler="nsga2"))
    assert (tpe._n_startup_trials, tpe._constant_liar) == (startup, True)  # Optuna keeps them private
    assert nsga2.base.population_size == population  # inside the wrapper that keeps its proposals distinct


def test_nsga2_never_spends_a_trial_on_a_point_the_study_already_has() -> None:
    """NSGA-II's offspring copy a parent outright now and then (3-6 of 48 trials here, seeds 0-2); the sweep's
    NSGA-II draws such a trial afresh instead, and still evolves (its offspring are not all random)."""
    import optuna
    from optuna.distributions import FloatDistribution

    space = {"ewc_lambda": FloatDistribution(LOW, HIGH, log=True), "lr": FloatDistribution(1e-4, 1e-1, log=True)}

    def repeats(sampler: Any) -> tuple[int, int]:
        """(trials equal to an earlier one, offspring that inherited a parameter value from an earlier trial)"""
        study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
        for _ in range(48):
            trial = study.ask(space)
            stability, plasticity = objectives(trial.params["ewc_lambda"])
            study.tell(trial, [stability, plasticity * (1 - trial.params["lr"])])
        points = [tuple(sorted(t.params.items())) for t in study.trials]
        inherited = sum(any(v in {q[k] for q in points[:i]} for k, v in enumerate(p)) for i, p in enumerate(points))
        return len(points) - len(set(points)), inherited

    for seed in range(3):
        plain = optuna.samplers.NSGAIISampler(seed=seed, population_size=12)
        ours = build_sampler(SweepOptions(trials=48, sampler="nsga2", sampler_seed=seed))
        (plain_repeats, _), (our_repeats, inherited) = repeats(plain), repeats(ours)
        assert plain_repeats > 0 and our_repeats == 0 and inherited >= 12, seed
    import pickle

    assert isinstance(pickle.loads(pickle.dumps(ours)), type(ours))  # Ray pickles the searcher and its sampler


def test_tpe_models_after_its_start_up_and_the_quick_start_is_not_all_random() -> None:
    """In the quick start's 12 trials, trial 4 on comes from TPE, not from its random start-up."""
    import optuna
    from optuna.distributions import FloatDistribution

    space = {"ewc_lambda": FloatDistribution(LOW, HIGH, log=True)}

    def fourth_trial(sampler: Any) -> float:
        study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
        for _ in range(3):
            trial = study.ask(space)
            study.tell(trial, list(objectives(trial.params["ewc_lambda"])))
        return study.ask(space).params["ewc_lambda"]

    ours = fourth_trial(build_sampler(SweepOptions(trials=QUICK_START_TRIALS)))
    assert ours != fourth_trial(optuna.samplers.RandomSampler(seed=0))  # TPE's start-up draws these same numbers


def _searcher(tmp_path: Path, name: str, **options: Any) -> Any:
    from sweep.tune.search_space import load_space
    from sweep.tune.searcher import optuna_searcher
    from tests.helpers import REPO

    study_dir = tmp_path / name
    study_dir.mkdir()
    space = load_space(REPO / "search_spaces" / "quickstart.yaml")
    return optuna_searcher(SweepOptions(quiet=True, **options), space, study_dir)


def test_the_liar_sees_the_trials_ray_runs(tmp_path: Path) -> None:
    """Ray's OptunaSearch asks each trial with ``study.ask``: while Tune runs them they are RUNNING in the
    study, with their λ, and the next ones asked keep away from them."""
    import optuna

    from sweep.tune.trial import OBJECTIVES

    searcher = _searcher(tmp_path, "liar", trials=QUICK_START_TRIALS)
    for i in range(6):
        lam = searcher.suggest(f"done{i}")["ewc_lambda"]
        searcher.on_trial_complete(f"done{i}", dict(zip(OBJECTIVES, objectives(lam))))
    asked = [math.log(searcher.suggest(f"running{i}")["ewc_lambda"]) for i in range(4)]
    study = searcher._ot_study  # Ray's; the journal holds the same trials
    assert len(study.get_trials(states=(optuna.trial.TrialState.RUNNING,))) == 4
    assert min(abs(a - b) for a, b in itertools.combinations(asked, 2)) / LOG_RANGE > 0.01, asked


def test_random_sampler_reaches_the_searcher_and_is_seeded(tmp_path: Path) -> None:
    import optuna

    def lambdas(name: str, seed: int) -> list[float]:
        searcher = _searcher(tmp_path, name, sampler="random", sampler_seed=seed, trials=4)
        assert isinstance(searcher._ot_study.sampler, optuna.samplers.RandomSampler)
        return [searcher.suggest(f"t{i}")["ewc_lambda"] for i in range(4)]

    first = lambdas("a", 7)
    assert lambdas("b", 7) == first  # the same --sampler-seed: the same points
    assert lambdas("c", 8) != first
    assert all(LOW <= lam <= HIGH for lam in first)


def test_sampler_flag_reaches_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sweep run --sampler random --sampler-seed 5`` hands both to the sweep."""
    import sweep.tune.driver
    from sweep.cli import main

    class Captured(Exception):
        pass

    seen: list[SweepOptions] = []

    def fake_run_sweep(options: SweepOptions) -> None:
        seen.append(options)
        raise Captured

    monkeypatch.setattr(sweep.tune.driver, "run_sweep", fake_run_sweep)
    with pytest.raises(Captured):
        main(["run", "--sampler", "random", "--sampler-seed", "5", "--trials", "12"])
    assert (seen[0].sampler, seen[0].sampler_seed) == ("random", 5)


def test_every_sampler_is_built_and_an_unknown_one_is_one_line_with_a_suggestion() -> None:
    import optuna

    for name in SAMPLERS:
        assert isinstance(build_sampler(SweepOptions(sampler=name)), optuna.samplers.BaseSampler)
    with pytest.raises(ConfigError) as err:
        validate_options(SweepOptions(sampler="randon"))
    message = str(err.value)
    assert "\n" not in message and "did you mean 'random'" in message and "tpe, nsga2, random" in message


def test_resume_with_another_sampler_is_refused(tmp_path: Path) -> None:
    from sweep.tune.study import check_resume

    meta = {"strategy": "ewc", "base_config": {"epochs": 1}, "seeds": [0], "objective": "pareto",
            "space_sha256": "x", "weights_sha256": {}, "sampler": "tpe"}
    (tmp_path / "study.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="sampler differs from the study's: 'random' here, 'tpe' in the study"):
        check_resume(tmp_path, {**meta, "sampler": "random"})


def _running(study: Any, tune_trial_id: str) -> int:
    trial = study.ask()
    trial.set_user_attr("tune_trial_id", tune_trial_id)
    return trial.number


def _row(trial_id: str, stability: float, plasticity: float, derived_from: str | None = None) -> dict[str, Any]:
    return {"trial_id": trial_id, "status": "finished", "val_stability_mean": stability,
            "val_plasticity_mean": plasticity, "derived_from": derived_from}


def test_resume_tells_a_trial_left_running_what_the_sweep_would_have_told_it():
    """A killed driver's running trials are closed from the Parquet rows: a trial with a free α grid gets its
    best-compromise point (max stability + plasticity over its own row and its derived rows), and in the
    constrained mode its objective (an infeasible point scores below -1), not its raw stability."""
    from sweep.tune.searcher import reconcile_optuna

    store = SimpleNamespace(trials=[
        _row("t1", 0.9, 0.5), _row("t1-a0.5", 0.8, 0.8, "t1"), _row("t1-a0", 0.95, 0.1, "t1"),
        _row("t2", 0.7, 0.6),
    ])
    multi = optuna.create_study(directions=["maximize", "maximize"])
    numbers = {_running(multi, "t1"): (0.8, 0.8), _running(multi, "t2"): (0.7, 0.6)}
    assert reconcile_optuna(multi, store) == 2
    assert {t.number: tuple(t.values) for t in multi.trials} == numbers
    single = optuna.create_study(direction="maximize")
    first, second = _running(single, "t1"), _running(single, "t2")
    reconcile_optuna(single, store, {"min_plasticity": 0.7})
    values = {t.number: t.value for t in single.trials}
    assert values[first] == pytest.approx(0.8)  # α = 0.5 is the feasible point with the best stability
    assert values[second] == pytest.approx(-1.0 - 0.1)  # plasticity 0.1 short of the threshold
