"""``python -m bench --quick`` runs end to end and reports every row with numbers.

No timing assertions: the machine is shared and noisy; the bench itself reports pass/fail
against its targets. This only checks that every row was measured: a number on each side.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, cli_env

ROWS = ("trial_vs_floor", "trial_vs_plain", "trial_accuracy", "fisher_speed", "fisher_error", "fisher_exact_vs_floor",
        "fisher_empirical_vs_floor", "fisher_sampled_vs_floor", "threads_under_load", "sweep_overhead",
        "sweep_fixed_costs", "memory", "prefix_reuse")
REPORTED = ("trial_vs_plain", "sweep_fixed_costs")  # figures beside a bound, never pass or fail


def test_hindsight_bound_finishes_the_front_only():
    """The bound a pruner that knew the end could reach: front trials run to the end, the rest stop at the first
    rung that decides."""
    from bench.pruning import hindsight

    good = [(0.95, 0.95), (0.94, 0.95), (0.93, 0.95), (0.92, 0.95)]
    late = [(0.5, 0.5), (0.55, 0.55), (0.6, 0.6), (0.925, 0.90)]  # a late bloomer: on the final front, barely
    bad = [(0.9, 0.9), (0.8, 0.8), (0.7, 0.7), (0.6, 0.6)]
    record = _pruning_study([("bad", 100.0, bad, 0.0), ("good", 100.0, good, 0.0), ("late", 100.0, late, 0.0)])
    naive = {"val_stability_mean": 0.5, "test_stability_mean": 0.5, "val_plasticity_mean": 0.99,
             "test_plasticity_mean": 0.99}
    bound = hindsight(record, naive)
    assert bound["front_size"] == 2
    # bad stops at task 2's end (100), good runs whole (400): 95% of the final hypervolume is reached there,
    # at 500 of the unpruned sweep's 1200 samples; late runs whole too, so 900 of 1200 are spent in all
    assert bound["compute_to_95_fraction"]["compute_samples"] == pytest.approx(500 / 1200)
    assert bound["pruned_compute_fraction"]["compute_samples"] == pytest.approx(900 / 1200)


@pytest.mark.slow
@pytest.mark.ray
def test_quick_bench_reports_every_row_with_numbers(tmp_path: Path, data_root: Path):
    out = tmp_path / "results.json"
    env = {**cli_env(), "SWEEP_DATA_ROOT": str(data_root)}
    from bench.__main__ import ROWS as BENCH_ROWS

    # every row but pruning, which test_quick_pruning_row_reports_both_workloads runs (the longest quick row)
    only = [arg for name in BENCH_ROWS if name != "pruning" for arg in ("--only", name)]
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", *only, "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["quick"] is True
    rows = {row["row"]: row for row in data["rows"]}
    assert set(ROWS) <= set(rows), f"missing rows: {set(ROWS) - set(rows)}"
    for name in ROWS:
        row = rows[name]
        assert name in proc.stdout  # the printed table has the row
        assert row["status"] == "ok", (name, row["details"])
        for key in ("ours", "reference", "ratio"):
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (name, key, row[key])
        if row["unit"] in ("s", "trials/min", "MB"):  # a time, rate or size of zero means nothing was measured
            assert row["ours"] > 0 and row["reference"] > 0, (name, row["ours"], row["reference"])
        if name in REPORTED:
            assert row["pass"] is None and "REPORTED" in next(line for line in proc.stdout.splitlines()
                                                              if line.startswith(name + " ")), name
        else:
            assert row["pass"] in (True, False), name


def _pruning_study(trials: list[tuple[str, float, list[tuple[float, float]], float]]):
    """A fake unpruned 5-task study for bench.pruning: (trial id, compute per rung, val (s, p) at the rungs of
    tasks 2, 3, 4 and at the end, test (s, p) = the end's minus ``test gap``)."""
    import pandas as pd

    from bench.pruning import StudyRecord

    rows, rungs = [], []
    for k, (trial_id, step, points, gap) in enumerate(trials):
        end = points[-1]
        rows.append({"trial_id": trial_id, "role": "search", "status": "finished", "hp_ewc_lambda": 10.0 ** k,
                     "hp_finetune_lr": 1e-3, "compute_samples": 4 * step, "optimizer_steps": 4 * step / 100,
                     "finished_at": f"2026-01-01T00:00:{10 + k:02d}.000+00:00", "duration_s": 1.0,
                     **{f"val_{m}_{st}": (end[i] if st == "mean" else 0.01)
                        for i, m in enumerate(("stability", "plasticity")) for st in ("mean", "std")},
                     **{f"test_{m}_{st}": (end[i] - gap if st == "mean" else 0.01)
                        for i, m in enumerate(("stability", "plasticity")) for st in ("mean", "std")}})
        for task, (s, p) in zip((2, 3, 4), points[:-1]):
            rungs.append({"trial_id": trial_id, "task": task, "epoch": None, "val_stability_mean": s,
                          "val_plasticity_mean": p, "val_stability_std": 0.01, "val_plasticity_std": 0.01,
                          "compute_samples": (task - 1) * step,
                          "optimizer_steps": (task - 1) * step / 100, "decides": True, "stopped": False})
    return StudyRecord("fake", "tpe", 0, False, 1.0, pd.DataFrame(rows), pd.DataFrame(rungs))


def test_pruning_row_replays_the_scheduler_and_counts_what_a_stopped_trial_spent():
    from bench.pruning import compare, replayed

    good = [(0.95, 0.95), (0.94, 0.95), (0.93, 0.95), (0.92, 0.95)]
    bad = [(0.6, 0.6), (0.6, 0.6), (0.6, 0.6), (0.6, 0.6)]
    record = _pruning_study([("a", 100.0, good, 0.0), ("b", 100.0, bad, 0.0), ("c", 100.0, bad, 0.0),
                             ("d", 100.0, bad, 0.0)])
    table, where = replayed(record)
    # at task 2's end a dominates the others, each of which ranks below the top 1/3 of the trials there so far
    assert where == {"b": "task 2 end", "c": "task 2 end", "d": "task 2 end"}
    assert list(table["status"]) == ["finished", "pruned", "pruned", "pruned"]
    assert list(table["compute_samples"]) == [400.0, 100.0, 100.0, 100.0]  # spent up to the rung that stopped it
    naive = {"val_stability_mean": 0.5, "test_stability_mean": 0.5, "val_plasticity_mean": 0.99,
             "test_plasticity_mean": 0.99}
    result = compare(record.trials, table, naive)
    assert result["val_hv"]["unpruned"] == result["val_hv"]["pruned"] == pytest.approx((0.92 - 0.5) * 0.95)
    assert result["pruned_compute_fraction"]["compute_samples"] == pytest.approx(700 / 1600)
    assert result["compute_to_95_fraction"]["pruned"]["compute_samples"] == pytest.approx(400 / 1600)  # trial a
    assert result["test_hv_ratio"] == pytest.approx(1.0)
    # `sweep choose --constraint "plasticity >= naive - 0.05"`: a on both sides, so no gap at all
    assert result["choice"]["unpruned"]["trial_id"] == result["choice"]["pruned"]["trial_id"] == "a"
    assert result["choice_stds_apart"] == {"stability": 0.0, "plasticity": 0.0}


@pytest.mark.slow
@pytest.mark.ray
def test_quick_pruning_row_reports_both_workloads(tmp_path: Path, data_root: Path):
    out = tmp_path / "results.json"
    env = {**cli_env(), "SWEEP_DATA_ROOT": str(data_root)}
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "pruning", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["row"]: row for row in json.loads(out.read_text())["rows"]}
    for workload in ("split_mnist", "mnist_fashion"):
        for kind in ("compute", "test_hv", "choice"):
            row = rows[f"pruning_{workload}_{kind}"]
            assert row["status"] == "ok", (row["row"], row["details"])
            assert isinstance(row["reference"], (int, float)) and math.isfinite(row["reference"]), row["row"]
        unpruned = rows[f"pruning_{workload}_compute"]["details"]["per_seed"]["tpe-s0"]["unpruned_compute"]
        assert unpruned["compute_samples"] > 0 and unpruned["optimizer_steps"] > 0
    real = rows["pruning_split_mnist_real"]["details"]
    assert real["replay_of_its_own_rungs"]["of"] == real["trials"] == 4  # every trial of the real --prune sweep
