"""Fine-tuning without forgetting, measured: one front per strategy on the pretrained fine-tune (issue 16).

An experiment, not a bench row (no ratio, no target): ``python -m bench.finetune_fronts`` (``--quick`` for a
smoke size) sweeps each strategy on the same pretrained fine-tune and draws every front on one plot,
with the training compute each front cost, into ``docs/finetune-comparison.md`` and
``docs/finetune_fronts.png`` (``bench/out/finetune_fronts.json`` holds the numbers).

The fine-tune is the pruning row's (``bench/pruning.py``): the CNN trained one epoch on MNIST (once,
cached), then fine-tuned 5 epochs on 1,000 Fashion-MNIST training images (500 validation, 1,000 test),
domain-incremental
(``bench.workloads:mnist_fashion_subset``). Each strategy: 12 trials, 2 seeds a trial, TPE (sampler seed
0), 2 trials at a time, every space searching the fine-tuning learning rate:

- ``naive``: the learning rate alone (how far a lower learning rate goes);
- ``ewc``: λ (an empirical Fisher on 300 source samples);
- ``interp``: WiSE-FT, its 11-point α grid evaluated for free after each fine-tune;
- ``ewc+interp``: EWC's fine-tune, interpolated;
- ``lpft``: linear probing for 1-4 epochs, then the 5 epochs of fine-tuning;
- ``distill``: LwF's temperature and α.

Compute is ``compute_samples`` (samples through the model from task 2 on: training, Fisher, evaluations),
summed over every trial of the study; the interpolation grid's evaluations are in it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import REPO, Settings
from bench.pruning import naive_reference, pretrained_checkpoint, workloads

LR = {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True}
FISHER = {"fisher": "empirical", "fisher_samples": 300}
SPACES: dict[str, dict[str, Any]] = {
    "naive": {"params": {"finetune_lr": LR}},
    "ewc": {"fixed": FISHER, "params": {"ewc_lambda": {"type": "float", "low": 1.0, "high": 1.0e+7, "log": True},
                                        "finetune_lr": LR}},
    "interp": {"fixed": {"interp_grid": 11}, "params": {"finetune_lr": LR}},
    "ewc+interp": {"fixed": {**FISHER, "interp_grid": 11},
                   "params": {"ewc_lambda": {"type": "float", "low": 1.0, "high": 1.0e+7, "log": True},
                              "finetune_lr": LR}},
    "lpft": {"params": {"lp_epochs": {"type": "int", "low": 1, "high": 4}, "finetune_lr": LR}},
    "distill": {"params": {"distill_temperature": {"type": "float", "low": 1.0, "high": 8.0},
                           "distill_alpha": {"type": "float", "low": 0.05, "high": 0.95}, "finetune_lr": LR}},
}
TRIALS, SEEDS, EPOCHS = 12, 2, 5
OUT = REPO / "bench" / "out"
DOCS = REPO / "docs"


def _log(message: str) -> None:
    print(f"[finetune_fronts] {message}", file=sys.stderr, flush=True)


def run(quick: bool) -> dict[str, Any]:
    from sweep.tune.driver import run_sweep
    from sweep.tune.options import SweepOptions

    settings = Settings(quick=quick)
    workload = next(w for w in workloads(settings) if w.name == "mnist_fashion")
    checkpoint, source = pretrained_checkpoint(settings, workload)
    results = OUT / ("finetune_fronts-quick" if quick else "finetune_fronts")
    spaces = results / "spaces"
    spaces.mkdir(parents=True, exist_ok=True)
    trials, seeds = (3, 1) if quick else (TRIALS, SEEDS)
    walls: dict[str, float] = {}
    for strategy, space in SPACES.items():
        path = spaces / f"{strategy}.yaml"
        path.write_text(yaml.safe_dump({"strategy": strategy, **space}, sort_keys=False))
        study = results / strategy
        options = SweepOptions(
            strategy=strategy, space_file=str(path), study=strategy, results_dir=str(results), trials=trials,
            seeds=seeds, benchmark=workload.benchmark, scenario="domain", model="cnn", pretrained=checkpoint,
            epochs=1 if quick else EPOCHS, data_root=str(settings.data_root), max_concurrent=2,
            # no references: joint would retrain on all of MNIST; naive (the default learning rate) runs once below
            references=False, resume=(study / "study.json").exists(), quiet=True)
        started = time.perf_counter()
        _log(f"{strategy}: {trials} trials x {seeds} seeds")
        run_sweep(options)
        walls[strategy] = time.perf_counter() - started
        _log(f"{strategy}: done in {walls[strategy]:.0f} s")
        if strategy == "naive":
            naive_file = results / "naive_reference.json"
            if not naive_file.exists():
                naive_file.write_text(json.dumps(naive_reference(settings, workload, options)))
    return summarize(results, walls, source, quick)


def summarize(results: Path, walls: dict[str, float], source: dict[str, Any], quick: bool) -> dict[str, Any]:
    import numpy as np

    from sweep.analysis.dominance import hypervolume
    from sweep.analysis.io import load_study
    from sweep.analysis.pareto import pareto_front

    naive = json.loads((results / "naive_reference.json").read_text())  # the naive reference, default learning rate
    out: dict[str, Any] = {"quick": quick, "source": source, "strategies": {}}
    fronts = {}
    for strategy in SPACES:
        study = load_study(results / strategy)
        trials = study.trials[study.trials["role"] == "search"]
        trained = trials[trials["derived_from"].isna()]
        finished = trials[trials["status"] == "finished"]
        entry: dict[str, Any] = {"trials": len(trained), "points": len(finished),
                                 "compute_samples": int(trained["compute_samples"].fillna(0).sum()),
                                 "optimizer_steps": int(trained["optimizer_steps"].fillna(0).sum()),
                                 "wall_s": walls.get(strategy)}
        for split in ("val", "test"):
            columns = f"{split}_stability_mean", f"{split}_plasticity_mean"
            front = finished[pareto_front(finished, *columns).to_numpy()] if len(finished) else finished
            points = front[list(columns)].to_numpy(dtype=float)
            ref = (float(naive[f"{split}_stability_mean"]), 0.0) if naive is not None else (0.0, 0.0)
            entry[f"{split}_hypervolume"] = hypervolume(points, ref)
            entry[f"{split}_front"] = sorted(map(tuple, np.round(points, 4).tolist()))
            if split == "test":
                fronts[strategy] = points
        out["strategies"][strategy] = entry
    if naive is not None:
        out["naive"] = {k: float(naive[k]) for k in ("val_stability_mean", "val_plasticity_mean",
                                                     "test_stability_mean", "test_plasticity_mean")}
    _plot(fronts, out, results / "finetune_fronts.png" if quick else DOCS / "finetune_fronts.png")
    (OUT / ("finetune_fronts-quick.json" if quick else "finetune_fronts.json")).write_text(json.dumps(out, indent=1))
    if not quick:
        _write_doc(out)
    return out


def _plot(fronts: dict[str, Any], out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for strategy, points in fronts.items():
        if len(points) == 0:
            continue
        order = points[points[:, 1].argsort()]
        compute = out["strategies"][strategy]["compute_samples"]
        ax.plot(100 * order[:, 1], 100 * order[:, 0], marker="o", ms=4,
                label=f"{strategy} ({compute / 1e6:.1f}M samples)")
    naive = out.get("naive")
    if naive:
        ax.scatter([100 * naive["test_plasticity_mean"]], [100 * naive["test_stability_mean"]], marker="x",
                   color="black", zorder=5, label="naive reference (default lr)")
    ax.set_xlabel("plasticity: Fashion-MNIST test accuracy %")
    ax.set_ylabel("stability: MNIST test accuracy % after the fine-tune")
    ax.set_title("Pretrained CNN fine-tuned on Fashion-MNIST: test fronts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_doc(out: dict[str, Any]) -> None:
    rows = ["| strategy | trials (points) | test hypervolume | val hypervolume | compute (M samples) | "
            "optimizer steps | wall |", "|---|---|---|---|---|---|---|"]
    for strategy, e in out["strategies"].items():
        wall = f"{e['wall_s'] / 60:.0f} min" if e.get("wall_s") else "-"
        rows.append(f"| {strategy} | {e['trials']} ({e['points']}) | {e['test_hypervolume']:.4f} | "
                    f"{e['val_hypervolume']:.4f} | {e['compute_samples'] / 1e6:.2f} | {e['optimizer_steps']:,} | "
                    f"{wall} |")
    naive = out.get("naive", {})
    text = f"""# Fine-tuning without forgetting: the fronts, measured

Made by `python -m bench.finetune_fronts` (an experiment; about an hour on 2 cores). The pretrained CNN (one
epoch on MNIST: source test accuracy {100 * out['source'].get('source_test_accuracy', float('nan')):.1f}%) is
fine-tuned 5 epochs on 1,000 Fashion-MNIST training images (500 validation, 1,000 test) (domain-incremental,
one 10-way head), 12 trials per
strategy, 2 seeds a trial, TPE; every space searches the fine-tuning learning rate (the module docstring has
each space). Hypervolume: the area the front dominates above the naive reference's stability
(val {100 * naive.get('val_stability_mean', float('nan')):.1f}%, test
{100 * naive.get('test_stability_mean', float('nan')):.1f}%) and plasticity 0. Compute: samples through the
model from the fine-tune on, every trial of the study (interp's α grid evaluations included). "Points":
the front's candidates; interp records 11 per trial at no training cost.

![fronts](finetune_fronts.png)

{chr(10).join(rows)}
"""
    (DOCS / "finetune-comparison.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.finetune_fronts", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke size: 3 trials, 1 seed, 1 epoch")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = run(args.quick)
    for strategy, e in out["strategies"].items():
        print(f"{strategy:12s} test HV {e['test_hypervolume']:.4f}  compute {e['compute_samples'] / 1e6:.2f}M samples"
              f"  points {e['points']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
