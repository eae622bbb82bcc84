"""Multi-objective early stopping (`sweep run --prune`): the rungs, the scheduler on synthetic curves, the
compute a trial counts, and a real pruned sweep recorded honestly (Parquet, Optuna, the front, choose)."""

from __future__ import annotations

import json
import math
import random
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sweep.analysis.choose import choose
from sweep.analysis.compute import pruning_savings
from sweep.analysis.io import load_study
from sweep.analysis.pareto import pareto_front
from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.metrics import hypervolume
from sweep.results.store import StudyStore
from sweep.train.trainer import EpochReport, TaskReport, iter_sequence
from sweep.tune.driver import resumed_halving
from sweep.tune.pruning import (
    RungPlan,
    SuccessiveHalving,
    crowding_distances,
    dominates,
    epoch_rungs,
    nondominated_fronts,
    rank_order,
)
from sweep.tune.trial import run_trial
from tests.helpers import run_cli, start_cli, stop_session, wait_until


# --- where trials report
def test_rungs_are_task_ends_from_task_2_and_geometric_epochs_inside_a_task():
    assert epoch_rungs(1) == () and epoch_rungs(5) == (1, 3) and epoch_rungs(27) == (1, 3, 9)
    assert epoch_rungs(10, eta=2, grace=2) == (2, 4, 8)
    five_tasks = RungPlan(num_tasks=5, epochs=1)  # workload (a): 5-task split-MNIST, 1 epoch a task
    assert five_tasks.rungs() == [(2, None), (3, None), (4, None)]  # the last task's end is the final result
    fine_tune = RungPlan(num_tasks=2, epochs=5)  # workload (b): a 5-epoch fine-tune after a pretrained task
    assert fine_tune.rungs() == [(2, 1), (2, 3)]
    assert not fine_tune.reports_after(0, 0) and fine_tune.reports_after(1, 0) and fine_tune.reports_after(1, 2)
    graced = RungPlan(num_tasks=5, epochs=1, grace=2)  # no stop before 2 epochs past task 1
    assert [graced.decides(t, None) for t in (2, 3, 4, 5)] == [False, True, True, False]


# --- the scheduler on synthetic curves
def test_ranking_is_by_front_then_crowding_distance():
    points = [(0.9, 0.1), (0.5, 0.5), (0.1, 0.9), (0.45, 0.45), (0.3, 0.3), (0.52, 0.45)]
    fronts = nondominated_fronts(points)
    assert fronts[0] == [0, 1, 2, 5] and fronts[1] == [3] and fronts[2] == [4]
    crowd = crowding_distances(points, fronts[0])
    assert math.isinf(crowd[0]) and math.isinf(crowd[2])  # the extremes of the trade-off are always kept
    assert rank_order(points)[:2] == [0, 2] and rank_order(points)[-1] == 4
    assert dominates((0.5, 0.5), (0.45, 0.45)) and not dominates((0.5, 0.5), (0.5, 0.5))


def test_a_trial_dominated_by_more_than_1_over_eta_of_its_peers_is_stopped():
    halving = SuccessiveHalving(eta=3)
    for i, point in enumerate([(0.9, 0.8), (0.8, 0.9), (0.85, 0.85), (0.7, 0.7), (0.75, 0.6)]):
        assert halving.decide(f"t{i}", 2, None, point).keep or i >= 3
    late = halving.decide("late", 2, None, (0.6, 0.6))  # dominated by all 5 peers: 5 > 5/3
    assert not late.keep and late.rank == 6 and late.of == 6 and "late" in halving.stopped
    assert halving.stopped["late"][:2] == (2, None)
    # dominated by one peer of five: in seven, the fourth; the top 1/3 is 2.3 trials
    assert not halving.decide("close", 2, None, (0.89, 0.79)).keep
    # at eta=2, dominated by one of three peers, second of four: it goes on
    halving = SuccessiveHalving(eta=2)
    for i, point in enumerate([(0.9, 0.8), (0.1, 0.1), (0.2, 0.2)]):
        halving.decide(f"t{i}", 2, None, point)
    assert halving.decide("close", 2, None, (0.89, 0.79)).keep


def test_a_trial_on_the_front_at_every_rung_is_never_stopped():
    rng = random.Random(0)
    for _ in range(30):
        halving = SuccessiveHalving(eta=rng.choice([2.0, 3.0, 4.0]))
        arrivals = [(f"t{i}", rung) for rung in range(3) for i in range(rng.randint(3, 12))]
        rng.shuffle(arrivals)
        arrivals.sort(key=lambda a: a[1])  # a trial reaches rung 2 after rung 1
        values = {key: (rng.random(), rng.random()) for key in arrivals}
        stopped = set()
        for trial, rung in arrivals:
            if trial in stopped:
                continue
            at = halving.recorded.get((rung + 2, 1 << 30), {})
            on_front = not any(dominates(v, values[(trial, rung)]) for v in at.values())
            decision = halving.decide(trial, rung + 2, None, values[(trial, rung)])
            if on_front:
                assert decision.keep and decision.on_front
            if not decision.keep:
                stopped.add(trial)
        assert stopped  # dominated trials were stopped: the test has teeth


def test_decisions_never_wait_for_trials_that_have_not_reached_the_rung():
    halving = SuccessiveHalving(eta=2)
    # the first trial at a rung goes on with no peer to compare: nothing waits for the others
    assert halving.decide("a", 3, None, (0.1, 0.1)).keep
    # b is judged at rung (2, end) on a alone, and a's later rung does not change b's earlier answer
    halving.decide("a", 2, None, (0.9, 0.9))
    assert not halving.decide("b", 2, None, (0.5, 0.5)).keep
    # a rung inside the grace period records and lets go on
    assert halving.decide("c", 2, None, (0.1, 0.1), decides=False).keep
    assert set(halving.recorded[(2, 1 << 30)]) == {"a", "b", "c"}


def test_replay_on_recorded_curves_stops_the_trials_a_live_scheduler_would():
    curves = [("a", [(2, None, 0.9, 0.9, True), (3, None, 0.8, 0.8, True)]),
              ("b", [(2, None, 0.5, 0.5, True), (3, None, 0.4, 0.4, True)]),
              ("c", [(2, None, 0.95, 0.2, True), (3, None, 0.9, 0.1, True)])]
    assert SuccessiveHalving(eta=2).replay(curves) == {"a": None, "b": (2, None), "c": None}


def test_a_difference_within_the_seeds_noise_stops_nothing_and_a_larger_one_does():
    """Late bloomers: at an early rung the seeds disagree by more than the settings differ; a trial is stopped
    only when a peer dominates its mean raised by ``noise`` stds over its seeds."""
    def judged(noise: float, spread: tuple[float, float]) -> bool:
        halving = SuccessiveHalving(eta=3, noise=noise)
        for i, point in enumerate([(0.995, 0.99), (0.99, 0.995), (0.993, 0.993)]):
            halving.decide(f"t{i}", 2, None, point, spread=(0.004, 0.004))
        return halving.decide("late", 2, None, (0.985, 0.985), spread=spread).keep  # dominated by all three

    assert not judged(0.0, (0.02, 0.02))  # the means alone: stopped
    assert judged(0.5, (0.02, 0.02))  # 0.985 + 0.01 = 0.995: no peer dominates it
    assert not judged(0.5, (0.004, 0.004))  # 0.987: still dominated, its seeds agree
    assert not judged(0.5, (math.nan, math.nan))  # one seed: no std, the means decide
    # a replay reads the stds when the curves carry them, and the plain rule without
    curves = [("a", [(2, None, 0.9, 0.9, True, 0.0, 0.0)]), ("b", [(2, None, 0.85, 0.85, True, 0.2, 0.2)])]
    assert SuccessiveHalving(eta=2, noise=0.5).replay(curves) == {"a": None, "b": None}
    assert SuccessiveHalving(eta=2, noise=0.0).replay(curves) == {"a": None, "b": (2, None)}


def test_with_the_naive_reference_a_trial_that_forgets_more_than_naive_stops_whatever_its_rank():
    """The hypervolume counts nothing below naive's stability: such a trial stops even as a rung's extreme
    (infinite crowding distance, the top rank), unless --prune-min-share 0 or the sweep has no naive reference."""
    def most_plastic_goes_on(**kwargs: float | None) -> bool:
        halving = SuccessiveHalving(eta=3, noise=0.5, reference_task=2, **kwargs)
        for i, point in enumerate([(0.95, 0.5), (0.9, 0.6), (0.85, 0.65), (0.8, 0.7)]):
            halving.decide(f"t{i}", 2, 1, point)
        decision = halving.decide("plastic", 2, 1, (0.6, 0.95), spread=(0.02, 0.0))  # on the front, an extreme
        assert decision.rank == 2 and decision.rank - 1 < decision.of / 3  # the top 1/3, by its crowding distance
        return decision.keep

    assert not most_plastic_goes_on(reference=0.62)  # 0.6 + 0.5 * 0.02 = 0.61: at most naive's 0.62
    assert most_plastic_goes_on(reference=0.605)  # its seeds' spread lifts it above: it adds 0.55 % of the area
    assert most_plastic_goes_on(reference=0.62, min_share=0.0)
    assert most_plastic_goes_on(reference=None)
    halving = SuccessiveHalving(eta=3, reference=0.62, reference_task=3)
    for task in (2, 3):
        halving.decide(f"t0-{task}", task, 1, (0.95, 0.5))
    # in an earlier task stability is over fewer old tasks: naive's final value is no floor there
    assert halving.decide("plastic", 2, 1, (0.6, 0.8)).keep
    decision = halving.decide("plastic", 3, 1, (0.6, 0.8))
    assert not decision.keep and "retains no more than the naive reference" in decision.reason(3, 3, 1)
    assert halving.decide("graced", 3, 1, (0.6, 0.8), decides=False).keep  # inside the grace period: recorded


def test_a_front_trial_adding_a_sliver_of_the_rungs_hypervolume_goes_on_only_by_its_rank():
    """A near-copy of its neighbours on a rung's front adds next to nothing to it: it goes on only if its rank
    says so (a front's two extremes always rank first, by their infinite crowding distance)."""
    peers = [(0.97, 0.60), (0.90, 0.70), (0.80, 0.75), (0.975, 0.55)]

    def judged(point: tuple[float, float], **kwargs: float | None) -> tuple[bool, bool]:
        halving = SuccessiveHalving(eta=3, noise=0.0, **{"reference_task": 2, **kwargs})
        for i, peer in enumerate(peers):
            halving.decide(f"t{i}", 2, 1, peer)
        decision = halving.decide("new", 2, 1, point)
        if not decision.keep:
            assert decision.reason(3, 2, 1).startswith("on the front at task 2 epoch 1 adding 0.028% of the rung's "
                                                       "hypervolume (under 0.500%)")
        return decision.keep, decision.on_front

    sliver = (0.972, 0.58)  # between (0.975, 0.55) and (0.97, 0.60): adds 0.03 % of the rung's area
    assert judged(sliver, reference=0.67, min_share=0.005) == (False, False)
    assert judged(sliver, reference=0.67, min_share=0.0) == (True, True)  # the front exception alone
    assert judged(sliver, reference=None) == (True, True)
    assert judged((0.93, 0.68), reference=0.67) == (True, True)  # a real trade-off: 1.1 % of the area
    assert judged(sliver, reference=0.67, reference_task=3) == (True, True)  # task 2 is not the last here
    # a front trial that adds its share at every rung is never stopped, whatever arrives first
    rng = random.Random(1)
    for _ in range(30):
        halving = SuccessiveHalving(eta=rng.choice([2.0, 3.0]), noise=0.0, reference=0.3, reference_task=2,
                                    min_share=0.005)
        for i in range(rng.randint(3, 15)):
            point = (rng.uniform(0.2, 1.0), rng.random())
            at = list(halving.recorded.get((2, 1), {}).values())
            total = hypervolume([*at, point], (0.3, 0.0))
            adds = point[0] > 0.3 and total > 0 and total - hypervolume(at, (0.3, 0.0)) >= 0.005 * total
            on_front = not any(dominates(p, point) for p in at)
            decision = halving.decide(f"t{i}", 2, 1, point)
            assert decision.keep or not (on_front and adds)


# --- what a trial reports and counts
def _config(**changes) -> TrainConfig:
    return TrainConfig(benchmark="split-digits", scenario="task", strategy="naive", epochs=3, batch_size=64,
                       seed=0).replace(**changes)


def test_compute_is_counted_exactly_per_step_sample_and_evaluation():
    config = _config(num_tasks=5, epochs=3, strategy="ewc", fisher_samples=100)
    benchmark = build_benchmark("split-digits", "task", 5, None, None, config.val_fraction)
    from sweep.train.trainer import build_run

    model, strategy = build_run(config, benchmark)
    plan = RungPlan(5, 3)
    reports = []
    run = iter_sequence(benchmark, model, strategy, config, epoch_reports=plan.reports_after)
    try:
        while True:
            reports.append(next(run))
    except StopIteration as stop:
        result = stop.value
    T = benchmark.num_tasks
    n = [len(t.train) for t in benchmark.tasks]
    val = [len(t.val) for t in benchmark.tasks]
    test = [len(t.test) for t in benchmark.tasks]
    steps = [3 * math.ceil(k / 64) for k in n]
    rest = result.compute
    assert rest.optimizer_steps == sum(steps[1:]) and rest.train_samples == 3 * sum(n[1:])
    # EWC's Fisher after every task but the last, on at most fisher_samples samples
    assert result.compute_first.fisher_samples == min(100, n[0])
    assert rest.fisher_samples == sum(min(100, k) for k in n[1:-1])
    # every task's end: both splits of every task; each epoch rung (epoch 1 of tasks 2..5): validation of tasks seen
    assert rest.eval_passes == 2 * T * (T - 1) + sum(t + 1 for t in range(1, T))
    assert rest.eval_samples == (T - 1) * (sum(val) + sum(test)) + sum(sum(val[: t + 1]) for t in range(1, T))
    assert result.compute_first.eval_passes == 2 * T * 2  # the untrained model, then after task 1
    assert [(r.task_index, r.epoch) for r in reports if isinstance(r, EpochReport)] == [(t, 0) for t in range(1, T)]
    epoch_report = next(r for r in reports if isinstance(r, EpochReport))
    assert np.isnan(epoch_report.test[1]).all() and np.isfinite(epoch_report.val[1, :2]).all()
    task_reports = [r for r in reports if isinstance(r, TaskReport)]
    assert [r.compute.optimizer_steps for r in task_reports] == list(np.cumsum([0, *steps[1:]]))


def test_targets_made_by_a_teacher_or_a_generator_are_counted_as_forward_samples():
    from sweep.train.trainer import run_config

    benchmark = build_benchmark("split-digits", "class", 5, None, None, 0.1)
    n = [len(t.train) for t in benchmark.tasks]
    naive = run_config(_config(scenario="class", num_tasks=5, epochs=1), benchmark).compute
    assert naive.forward_samples == 0
    # distillation: the teacher passes every training sample of tasks 2..5 forward once
    distill = run_config(_config(scenario="class", num_tasks=5, epochs=1, strategy="distill"), benchmark).compute
    assert distill.forward_samples == sum(n[1:])
    assert distill.samples == naive.samples + sum(n[1:])
    # generative replay at ratio 0.5: a generated sample beside each real one, made by the previous decoder and
    # labelled by the previous classifier (two forward passes); the generator's extra epochs after tasks 2..4
    # replay beside each real sample (the decoder only)
    config = _config(scenario="class", num_tasks=5, epochs=1, strategy="genreplay", genreplay_epochs=1,
                     genreplay_ratio=0.5)
    genreplay = run_config(config, benchmark).compute
    assert genreplay.forward_samples == 2 * sum(n[1:]) + sum(n[1:-1])


def test_a_trial_reports_every_rung_with_both_objectives_compute_and_the_rows_it_finished():
    config = _config(num_tasks=5, epochs=3, strategy="ewc")
    benchmark = build_benchmark("split-digits", "task", 5, None, None, config.val_fraction)
    reports: list[dict] = []
    final = run_trial(config, benchmark, [0, 1], reports.append, rungs=RungPlan(5, 3))
    rungs = [(r.get("rung_task"), r.get("rung_epoch")) for r in reports if not r["final"]]
    assert rungs == [(None, None), (2, 1), (2, 0), (3, 1), (3, 0), (4, 1), (4, 0), (5, 1)]
    for r in reports:
        assert all(math.isfinite(r[k]) for k in ("stability", "plasticity", "objective"))
    steps = [r["optimizer_steps"] for r in reports]
    assert steps == sorted(steps) and final["optimizer_steps"] == steps[-1]
    at_task_3_epoch_1 = reports[3]
    assert at_task_3_epoch_1["tasks_done"] == 2 and len(at_task_3_epoch_1["accuracy"]["0"]["val"]) == 5
    assert at_task_3_epoch_1["accuracy"]["0"]["val"][2] == [-1.0] * 5  # task 3 not finished: no row
    # the same trial without rungs trains identically: the rung evaluations change nothing
    plain = run_trial(config, benchmark, [0, 1], lambda r: None)
    assert plain["accuracy"] == final["accuracy"] and plain["optimizer_steps"] == final["optimizer_steps"]
    assert plain["eval_passes"] < final["eval_passes"]


def test_resumed_scheduler_holds_what_recorded_search_trials_reported(tmp_path: Path):
    store = StudyStore(tmp_path)
    base = {"study": "s", "role": "search", "status": "finished", "strategy": "ewc", "benchmark": "b",
            "scenario": "task", "model": "mlp", "num_tasks": 3, "n_seeds": 1, "seeds": "0", "config": "{}"}
    rung = {"study": "s", "val_stability_std": 0.0, "val_plasticity_std": 0.0, "decides": True, "stopped": False}
    store.add({**base, "trial_id": "a"}, [], [{**rung, "trial_id": "a", "task": 2, "epoch": None,
                                               "val_stability_mean": 0.9, "val_plasticity_mean": 0.9}])
    reference = {**rung, "trial_id": "ref", "task": 2, "epoch": None, "val_stability_mean": 1.0,
                 "val_plasticity_mean": 1.0}
    store.add({**base, "trial_id": "ref", "role": "naive"}, [], [reference])
    halving = resumed_halving(StudyStore(tmp_path), eta=2)
    assert set(halving.recorded[(2, 1 << 30)]) == {"a"}  # the references are never judged, nor judge
    assert not halving.decide("new", 2, None, (0.5, 0.5)).keep
    assert halving.reference is None  # the naive row holds no final stability here: no floor


def test_the_resumed_scheduler_measures_against_the_naive_references_final_stability(tmp_path: Path):
    store = StudyStore(tmp_path)
    base = {"study": "s", "status": "finished", "strategy": "ewc", "benchmark": "b", "scenario": "task",
            "model": "mlp", "num_tasks": 3, "n_seeds": 1, "seeds": "0", "config": "{}"}
    store.add({**base, "trial_id": "naive", "role": "naive", "val_stability_mean": 0.64,
               "val_plasticity_mean": 0.9}, [], [])
    halving = resumed_halving(StudyStore(tmp_path), eta=3, noise=0.5, min_share=0.01, num_tasks=2)
    assert (halving.reference, halving.reference_task, halving.min_share, halving.noise) == (0.64, 2, 0.01, 0.5)
    assert not halving.decide("forgets", 2, 1, (0.6, 0.9)).keep  # the first at its rung, and still stopped


# --- a real pruned sweep
def _optuna_states(study_dir: Path) -> dict[str, str]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal")))
    study = optuna.load_study(study_name=study_dir.name, storage=storage)
    return {t.user_attrs.get("tune_trial_id"): t.state.name for t in study.trials}


PRUNE_ARGS = ("--strategy", "ewc", "--seeds", "1", "--num-tasks", "5", "--epochs", "2", "--prune",
              "--prune-eta", "2", "--sampler", "random", "--max-concurrent", "2")


def _check_pruned_study(study_dir: Path, trials: int) -> None:
    df = pq.read_table(study_dir / "trials.parquet").to_pandas()
    assert df.trial_id.is_unique and (df.role == "search").sum() == trials
    pruned, finished = df[df.status == "pruned"], df[df.status == "finished"]
    assert len(pruned) >= 1 and len(finished[finished.role == "search"]) >= 1
    assert pruned.val_stability_mean.isna().all() and pruned.test_plasticity_mean.isna().all()
    assert pruned.partial_val_stability_mean.between(0, 1).all() and pruned.pruned_task.between(2, 4).all()
    assert pruned.reason.str.startswith("dominated at task").all()
    assert (pruned.compute_samples < finished.compute_samples.min()).all()
    states = _optuna_states(study_dir)
    search = df[df.role == "search"]
    assert {states[t] for t in pruned.trial_id} == {"PRUNED"}
    assert {states[t] for t in search.trial_id[search.status == "finished"]} == {"COMPLETE"}
    assert "RUNNING" not in states.values()
    # its accuracy rows are kept: the tasks it finished, nothing after
    accuracy = pq.read_table(study_dir / "accuracy.parquet").to_pandas()
    for row in pruned.itertuples():
        reached = accuracy[accuracy.trial_id == row.trial_id].after_task.max()
        assert reached == row.pruned_task - (0 if math.isnan(row.pruned_epoch) else 1)  # its task's end: that row too
    assert not accuracy.duplicated(["trial_id", "seed", "split", "after_task", "eval_task"]).any()
    rungs = pq.read_table(study_dir / "rungs.parquet").to_pandas()
    assert set(rungs.trial_id) == set(df.trial_id) and rungs.stopped.sum() == len(pruned)
    study = load_study(study_dir)
    on_front = set(study.trials.trial_id[pareto_front(study.trials).to_numpy()])
    assert on_front and not on_front & set(pruned.trial_id)
    assert choose(study).trial["trial_id"] not in set(pruned.trial_id)
    savings = pruning_savings(study.trials)
    assert savings is not None and savings.pruned == len(pruned) and savings.fraction < 1


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults
def test_a_pruned_sweep_killed_and_resumed_records_every_trial_once_and_pruned_ones_apart(tmp_path: Path):
    study = tmp_path / "killed"
    args = ("run", *PRUNE_ARGS, "--trials", "10", "--results", str(tmp_path), "--study", "killed", "--no-references",
            "--quiet")

    def some_pruned() -> bool:
        try:
            df = pq.read_table(study / "trials.parquet", columns=["status"]).to_pandas()
        except (OSError, ValueError):
            return False
        return (df.status == "pruned").sum() >= 1 and len(df) >= 3

    proc = start_cli(*args)
    try:
        assert wait_until(some_pruned, 300, proc), proc.stdout.read() if proc.stdout else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop_session(proc.pid)
    before = pq.read_table(study / "trials.parquet").to_pandas()
    resumed = run_cli(*args, "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _check_pruned_study(study, trials=10)
    # the end summary says what pruning saved; choose and the report read the pruned study (one sweep serves all)
    assert "pruned" in resumed.stdout and "pruning stopped" in resumed.stdout, resumed.stdout[-2000:]
    chosen = run_cli("choose", str(study))
    assert chosen.returncode == 0, chosen.stderr
    report = run_cli("report", str(study))
    assert report.returncode == 0 and "Pruned trials" in (study / "report.html").read_text()
    after = pq.read_table(study / "trials.parquet").to_pandas()
    assert set(before.trial_id) <= set(after.trial_id)
    kept = after.set_index("trial_id").loc[before.trial_id]
    assert (kept.status.to_numpy() == before.status.to_numpy()).all()  # recorded once, as it ended


@pytest.mark.ray
@pytest.mark.slow
def test_a_pruned_sweep_with_references_stops_a_trial_that_forgets_more_than_naive(tmp_path: Path):
    """The floor, live: the sweep runs the naive reference first and hands its final validation stability to
    the scheduler, which stops, at an epoch rung of the last task, a trial already retaining less."""
    space = tmp_path / "space.yaml"
    space.write_text("strategy: ewc\nfixed:\n  epochs: 3\n  batch_size: 32\n  lr: 1.0e-3\n  ewc_lambda: 1.0e-3\n"
                     "params:\n  finetune_lr: {type: categorical, choices: [1.0e-4, 0.3]}\n")
    out = run_cli("run", "--strategy", "ewc", "--space", str(space), "--num-tasks", "2", "--seeds", "1",
                  "--trials", "4", "--prune", "--sampler", "random", "--max-concurrent", "2", "--results",
                  str(tmp_path), "--study", "floor", "--quiet", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    study = tmp_path / "floor"
    df = pq.read_table(study / "trials.parquet").to_pandas()
    naive = float(df[df.role == "naive"].val_stability_mean.iloc[0])
    below = df[df.reason.fillna("").str.contains("retains no more than the naive reference")]
    assert len(below) >= 1 and (below.status == "pruned").all()  # the 0.3 learning rate forgets task 1
    assert (below.pruned_task == 2).all() and (below.pruned_epoch == 1).all()
    assert (below.partial_val_stability_mean <= naive).all()
    assert (below.hp_finetune_lr == 0.3).all()
    assert _optuna_states(study)[below.trial_id.iloc[0]] == "PRUNED"
    meta = json.loads((study / "study.json").read_text())["prune"]
    assert meta["references"] is True and meta["min_share"] == 0.005


def test_a_pruned_study_resumes_only_under_the_floor_it_was_judged_by(tmp_path: Path):
    """A study pruned before --prune-min-share was judged by the front exception alone: it resumes with
    --prune-min-share 0, not the default; and a resume must agree on whether references set the floor."""
    from sweep.errors import ConfigError
    from sweep.tune.study import check_resume

    meta = {"strategy": "ewc", "base_config": {"epochs": 5}, "seeds": [0, 1], "objective": "pareto",
            "space_sha256": "x", "weights_sha256": {}, "sampler": "tpe", "protocol": None,
            "writes": {"in_study": ["cache", "ray"], "storage": None},
            "prune": {"eta": 3.0, "grace": 1, "noise": 0.5, "min_share": 0.005, "references": True}}
    old = {**meta, "prune": {"eta": 3.0, "grace": 1, "noise": 0.5}}  # before the floor: neither key recorded
    (tmp_path / "study.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="min_share is 0.005 here, 0.0 in the study"):
        check_resume(tmp_path, meta)
    check_resume(tmp_path, {**meta, "prune": {**meta["prune"], "min_share": 0.0}})
    (tmp_path / "study.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="references is False here, True in the study"):
        check_resume(tmp_path, {**meta, "prune": {**meta["prune"], "references": False}})
    check_resume(tmp_path, meta)


def test_prune_options_are_checked_before_anything_starts(tmp_path: Path):
    for extra, needle in ((["--prune", "--prune-eta", "1"], "--prune-eta must be a number in (1, 100]"),
                          (["--prune", "--prune-grace", "0"], "--prune-grace must be in 1..100000"),
                          (["--prune", "--prune-noise", "-1"], "--prune-noise must be a number of stds"),
                          (["--prune", "--prune-min-share", "0.9"], "--prune-min-share must be a share of a rung"),
                          (["--prune", "--prune-min-share", "nan"], "[0, 0.5], got nan"),
                          (["--prune-min-share", "0"], "pass --prune as well"),
                          (["--prune-eta", "2"], "pass --prune as well"),
                          (["--prune-noise", "1"], "pass --prune as well")):
        out = run_cli("run", "--trials", "1", "--results", str(tmp_path), *extra)
        assert out.returncode == 2 and needle in out.stderr, (extra, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())
