"""Weight interpolation (`interp`, WiSE-FT) and its free α front: the end points are exact, every grid point is
the run with that α, interpolation comes first in a composite, and a sweep records the grid as points of their
own that the front, `sweep choose` and `sweep train --config` use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torch import nn

from sweep import api
from sweep.analysis.choose import choose
from sweep.analysis.io import load_study
from sweep.analysis.pareto import pareto_front
from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.strategies.interp import grid, interpolate_states
from sweep.train.trainer import build_run, iter_sequence, run_config
from sweep.tune.driver import SweepOptions, run_sweep
from sweep.tune.trial import run_trial
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def domain():
    return build_benchmark("split-digits", "domain")


def _config(**changes) -> TrainConfig:
    return TrainConfig(benchmark="split-digits", scenario="domain", epochs=1, hidden=(32, 32), batch_size=32,
                       **changes)


def _result(config: TrainConfig, bench):
    model, strategy = build_run(config, bench)
    run = iter_sequence(bench, model, strategy, config)
    while True:
        try:
            next(run)
        except StopIteration as stop:
            return stop.value


def test_alpha_one_is_the_strategy_itself_and_alpha_zero_keeps_the_source_accuracy_exactly(domain):
    for inner in ("naive", "ewc"):
        own = run_config(_config(strategy=inner, ewc_lambda=50.0), domain)
        combined = "interp" if inner == "naive" else "ewc+interp"
        at_one = run_config(_config(strategy=combined, ewc_lambda=50.0, interp_alpha=1.0), domain)
        assert np.array_equal(at_one.val, own.val) and np.array_equal(at_one.test, own.test)
    at_zero = run_config(_config(strategy="interp", interp_alpha=0.0), domain)
    # the fine-tune undone: task 1's accuracy after task 2 is its accuracy before it, bit for bit
    assert at_zero.val[1, 0] == at_zero.val[0, 0] and at_zero.test[1, 0] == at_zero.test[0, 0]
    assert np.array_equal(at_zero.val[1], at_zero.val[0])


def test_each_grid_point_is_exactly_the_run_with_that_last_alpha():
    bench = build_benchmark("split-digits", "domain", 5)
    config = _config(strategy="interp", interp_alpha=0.4, interp_grid=3)
    result = _result(config, bench)
    assert [values for values, _, _ in result.variants] == [{"interp_last_alpha": a} for a in (0.0, 0.5, 1.0)]
    for values, val_row, test_row in result.variants:
        again = _result(config.replace(interp_grid=0, **values), bench)
        assert not again.variants
        assert np.array_equal(again.val[:-1], result.val[:-1])  # tasks 2..4 used interp_alpha: the same
        assert np.array_equal(again.val[-1], val_row) and np.array_equal(again.test[-1], test_row)
    assert grid(0) == grid(1) == [] and grid(5) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_interpolation_comes_first_whatever_the_order_of_names(domain):
    a = run_config(_config(strategy="ewc+interp", ewc_lambda=100.0, interp_alpha=0.3, num_tasks=5),
                   build_benchmark("split-digits", "domain", 5))
    b = run_config(_config(strategy="interp+ewc", ewc_lambda=100.0, interp_alpha=0.3, num_tasks=5),
                   build_benchmark("split-digits", "domain", 5))
    assert np.array_equal(a.val, b.val) and np.array_equal(a.test, b.test)


def test_a_trial_reports_every_grid_point_and_tells_the_search_its_best_compromise(domain):
    config = _config(strategy="interp", interp_alpha=0.0, interp_grid=5)  # the trial itself undoes its fine-tune
    final = run_trial(config, domain, [0, 1], lambda r: None)
    points = final["derived"]
    assert [p["values"]["interp_last_alpha"] for p in points] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert points[0]["val_plasticity_mean"] == final["val_plasticity_mean"]  # α = 0: the trial's own model
    best = max(points, key=lambda p: p["stability"] + p["plasticity"])
    assert best["values"] != {"interp_last_alpha": 0.0}  # the best compromise is elsewhere on the curve ...
    assert (final["stability"], final["plasticity"]) == (best["stability"], best["plasticity"])  # ... and told
    assert final["told"] == best["values"]
    for point in points:  # every point has its full matrices, per seed
        assert set(point["accuracy"]) == {"0", "1"} and len(point["accuracy"]["0"]["val"]) == 2


def test_api_interpolate_is_the_trainers_arithmetic():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 4))  # the batch-norm statistics move too
    after = {k: v.clone() for k, v in model.state_dict().items()}
    api.interpolate(model, before, 0.25)
    expected = interpolate_states(before, after, 0.25)
    assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)
    assert torch.equal(model.state_dict()["1.num_batches_tracked"], after["1.num_batches_tracked"])
    model.load_state_dict(after)
    assert all(torch.equal(v, before[k]) for k, v in api.interpolate(model, before, 0.0).state_dict().items()
               if v.is_floating_point())
    with pytest.raises(Exception, match=r"alpha must be in \[0, 1\]"):
        api.interpolate(model, before, 1.5)


@pytest.mark.ray
def test_a_sweep_records_the_grid_and_choose_picks_a_point_that_sweep_train_reproduces(ray_session, tmp_path: Path):
    summary = run_sweep(SweepOptions(strategy="interp", trials=2, seeds=2, scenario="domain", results_dir=str(tmp_path),
                                     study="wise", quiet=True, extra={"interp_grid": 5, "hidden": (32, 32)}))
    study_dir = tmp_path / "wise"
    assert summary.counts["finished"] == 4  # 2 trials and 2 references: the grid points are not trials
    df = pq.read_table(study_dir / "trials.parquet").to_pandas()
    trained = df[df.derived_from.isna() & (df.role == "search")]
    derived = df[df.derived_from.notna()]
    assert len(trained) == 2 and len(derived) == 2 * 5
    assert sorted(derived.hp_interp_last_alpha.unique()) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(derived.derived_from) == set(trained.trial_id) and derived.compute_samples.isna().all()
    accuracy = pq.read_table(study_dir / "accuracy.parquet").to_pandas()
    sizes = accuracy.groupby("trial_id").size()
    assert all(sizes[t] == 2 * 2 * 3 * 2 for t in derived.trial_id)  # seeds x splits x (untrained + 2) x 2
    study = load_study(study_dir)
    front = set(study.trials.trial_id[pareto_front(study.trials).to_numpy()])
    assert front & set(derived.trial_id)  # the front considers every α point
    # the most stable setting is α = 0: a derived point, carried into chosen.yaml with its α
    chosen_path = study_dir / "chosen.yaml"
    out = run_cli("choose", str(study_dir), "--maximize", "stability", "--output", str(chosen_path))
    assert out.returncode == 0, out.stderr
    chosen = choose(study, "stability")
    assert chosen.trial["derived_from"] is not None
    config = yaml.safe_load(chosen_path.read_text())
    assert "interp_last_alpha" in json.dumps(config)
    trained_again = run_cli("train", "--config", str(chosen_path), "--json", "--no-progress", timeout=600)
    assert trained_again.returncode == 0, trained_again.stderr
    payload = json.loads(trained_again.stdout)
    seed = payload["config"]["seed"]
    rows = accuracy[(accuracy.trial_id == chosen.trial["trial_id"]) & (accuracy.seed == seed)
                    & (accuracy.split == "val") & (accuracy.after_task > 0)]
    assert len(rows) == 4
    val = np.array(payload["accuracy"]["val"])
    for r in rows.itertuples():  # the α point re-run from chosen.yaml: the same matrix, bit for bit
        assert val[r.after_task - 1, r.eval_task - 1] == r.accuracy
