"""LoRA adapters against naive and EWC, measured (issue 17 item 5). An experiment, not a bench row.

``python -m bench.adapters`` (``--quick``: split-digits, 1 seed, a smoke size) runs, in-process:

1. **5-task split-MNIST** in task-, domain- and class-incremental form, fixed settings from the literature
   (no sweep): MLP 784-400-400-10 (van de Ven & Tolias 2019), 2 epochs a task, batch 128, Adam lr 1e-3, seeds
   0-2, metrics on the test split. ``naive``; ``ewc`` (exact Fisher, separate, λ = 1e4: the order of the best
   λ this project's own 5-task split-MNIST sweep found, docs/pruning.md); ``adapter`` merge and per-task
   (LoRA's usual r = 8, α = 16, adapters on both hidden layers, the head trained fully). With each, the
   parameters one task from task 2 on trains, and what a deployment stores.
2. **The pretrained mnist-fashion fine-tune** of ``bench.finetune_fronts`` (same CNN checkpoint, same subset,
   12 trials x 2 seeds, TPE seed 0): ``adapter`` (merge) studies searching the fine-tuning learning rate and
   the rank (α fixed at 16, as LoRA fixes α and varies r), the head trained fully (``adapter``) or adapted too
   (``adapter-all``), on the same front as that experiment's naive and EWC studies, read from
   ``bench/out/finetune_fronts`` (run ``python -m bench.finetune_fronts`` first; it is reused, not rerun).

Writes ``bench/out/adapters.json`` as it goes (a rerun skips what is done) and prints its summary; docs/adapters.md
reports those numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from bench.common import REPO, Settings

OUT = REPO / "bench" / "out"
FRONTS = OUT / "finetune_fronts"  # bench.finetune_fronts' studies: naive and ewc are read from there
SCENARIOS = ("task", "domain", "class")
COMMON = {"benchmark": "split-mnist", "num_tasks": 5, "model": "mlp", "hidden": (400, 400), "epochs": 2,
          "batch_size": 128, "optimizer": "adam", "lr": 1e-3}
RUNS: dict[str, dict[str, Any]] = {
    "naive": {"strategy": "naive"},
    "ewc": {"strategy": "ewc", "ewc_lambda": 1e4, "fisher": "exact", "ewc_mode": "separate"},
    "adapter merge": {"strategy": "adapter", "adapter_rank": 8, "adapter_alpha": 16.0, "adapter_mode": "merge"},
    "adapter per-task": {"strategy": "adapter", "adapter_rank": 8, "adapter_alpha": 16.0,
                         "adapter_mode": "per-task"},
}
SEEDS = (0, 1, 2)
LR = {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True}
FRONT_TRIALS, FRONT_SEEDS = 12, 2
# the adapter studies of the fine-tune: adapter_layers. body: the head trains fully (the strategy's default);
# all: the head gets an adapter too, so every weight moves only through low-rank updates
FRONT_STUDIES = {"adapter": "body", "adapter-all": "all"}


def _log(message: str) -> None:
    print(f"[adapters] {message}", file=sys.stderr, flush=True)


def split_mnist(settings: Settings, out: dict[str, Any], save: Any) -> None:
    import torch

    from sweep.config import TrainConfig
    from sweep.metrics import average_accuracy, plasticity, stability
    from sweep.train.trainer import build_run, load_benchmark, train_sequence

    common = dict(COMMON, benchmark="split-digits", hidden=(64, 64)) if settings.quick else COMMON
    seeds = SEEDS[:1] if settings.quick else SEEDS
    runs = out.setdefault("split_mnist", {})
    for scenario in SCENARIOS:
        benchmark = None
        for label, values in RUNS.items():
            for seed in seeds:
                key = f"{scenario}/{label}/{seed}"
                if key in runs:
                    continue
                config = TrainConfig.from_mapping({**common, **values, "scenario": scenario, "seed": seed,
                                                   "data_root": str(settings.data_root), "threads": 1})
                if benchmark is None:
                    benchmark = load_benchmark(config)
                model, strategy = build_run(config, benchmark)
                started = time.perf_counter()
                result = train_sequence(benchmark, model, strategy, config)
                total = sum(p.numel() for p in model.parameters())
                trained = int(result.stats.get("trainable_params", total))
                stored = total  # what a deployment keeps: one model, or per-task the base, T-1 adapters, T heads
                if values.get("adapter_mode") == "per-task":
                    state = strategy.state_dict()
                    stored += sum(v.numel() for k, v in state.items() if isinstance(v, torch.Tensor)
                                  and k.startswith("adapter"))
                    stored += sum(v.numel() for k, v in state.items() if isinstance(v, torch.Tensor)
                                  and k.startswith("head"))
                R = result.test
                runs[key] = {"acc": average_accuracy(R), "stability": stability(R), "plasticity": plasticity(R),
                             "R": R.tolist(), "model_params": total, "trainable_params": trained,
                             "stored_params": stored, "wall_s": time.perf_counter() - started,
                             "status": result.status}
                _log(f"{key}: ACC {runs[key]['acc']:.3f} stability {runs[key]['stability']:.3f} plasticity "
                     f"{runs[key]['plasticity']:.3f} ({runs[key]['wall_s']:.0f} s)")
                save()


def finetune_front(settings: Settings, out: dict[str, Any], save: Any) -> None:
    import yaml

    from bench.pruning import pretrained_checkpoint, workloads
    from sweep.tune.driver import run_sweep
    from sweep.tune.options import SweepOptions

    workload = next(w for w in workloads(settings) if w.name == "mnist_fashion")
    checkpoint, _ = pretrained_checkpoint(settings, workload)
    results = OUT / ("adapters_front-quick" if settings.quick else "adapters_front")
    results.mkdir(parents=True, exist_ok=True)
    trials, seeds = (3, 1) if settings.quick else (FRONT_TRIALS, FRONT_SEEDS)
    walls = out.setdefault("front_wall_s", {})
    for name, layers in FRONT_STUDIES.items():
        if name in walls:
            continue
        space = results / f"{name}.yaml"
        space.write_text(yaml.safe_dump({
            "strategy": "adapter", "fixed": {"adapter_mode": "merge", "adapter_alpha": 16.0, "adapter_layers": layers},
            "params": {"adapter_rank": {"type": "int", "low": 1, "high": 64, "log": True}, "finetune_lr": LR}},
            sort_keys=False))
        study = results / name
        started = time.perf_counter()
        run_sweep(SweepOptions(
            strategy="adapter", space_file=str(space), study=name, results_dir=str(results), trials=trials,
            seeds=seeds, benchmark=workload.benchmark, scenario="domain", model="cnn", pretrained=checkpoint,
            epochs=1 if settings.quick else 5, data_root=str(settings.data_root), max_concurrent=2,
            references=False, resume=(study / "study.json").exists(), quiet=True))
        walls[name] = time.perf_counter() - started
        _log(f"{name}: done in {walls[name]:.0f} s")
        save()


def summarize(settings: Settings, out: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for key, run in out.get("split_mnist", {}).items():
        scenario, label, _ = key.split("/")
        entry = table.setdefault(f"{scenario}/{label}", {"acc": [], "stability": [], "plasticity": []})
        for metric in ("acc", "stability", "plasticity"):
            entry[metric].append(run[metric])
        entry.update({k: run[k] for k in ("model_params", "trainable_params", "stored_params")})
    summary = {key: {**{m: (float(np.mean(v[m])), float(np.std(v[m]))) for m in ("acc", "stability", "plasticity")},
                     "n": len(v["acc"]), **{k: v[k] for k in ("model_params", "trainable_params", "stored_params")}}
               for key, v in table.items()}
    fronts = _fronts(settings)
    return {"split_mnist": summary, "fronts": fronts}


def _fronts(settings: Settings) -> dict[str, Any]:
    from sweep.analysis.dominance import hypervolume
    from sweep.analysis.io import load_study
    from sweep.analysis.pareto import pareto_front

    studies = OUT / ("adapters_front-quick" if settings.quick else "adapters_front")
    folders = {"naive": FRONTS / "naive", "ewc": FRONTS / "ewc", **{name: studies / name for name in FRONT_STUDIES}}
    reference = FRONTS / "naive_reference.json"
    naive = json.loads(reference.read_text()) if reference.exists() else None
    fronts: dict[str, Any] = {}
    for name, folder in folders.items():
        if not (folder / "trials.parquet").exists():
            continue
        study = load_study(folder)
        trials = study.trials[(study.trials["role"] == "search") & (study.trials["status"] == "finished")]
        entry: dict[str, Any] = {"trials": len(trials), "compute_samples": int(trials["compute_samples"].sum())}
        for split in ("val", "test"):
            columns = f"{split}_stability_mean", f"{split}_plasticity_mean"
            front = trials[pareto_front(trials, *columns).to_numpy()]
            points = front[list(columns)].to_numpy(dtype=float)
            ref = (float(naive[f"{split}_stability_mean"]), 0.0) if naive else (0.0, 0.0)
            entry[f"{split}_hypervolume"] = hypervolume(points, ref)
            entry[f"{split}_front"] = sorted(map(tuple, np.round(points, 4).tolist()))
        if "hp_adapter_rank" in front and name in FRONT_STUDIES:
            entry["test_front_ranks"] = front["hp_adapter_rank"].tolist()
        fronts[name] = entry
    if naive:
        fronts["naive_reference"] = {k: float(naive[k]) for k in ("test_stability_mean", "test_plasticity_mean")}
    return fronts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.adapters", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke size: split-digits, 1 seed, 3 trials")
    parser.add_argument("--part", choices=("all", "split", "front"), default="all")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    settings = Settings(quick=args.quick)
    path = OUT / ("adapters-quick.json" if args.quick else "adapters.json")
    out: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def save() -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))

    if args.part in ("all", "split"):
        split_mnist(settings, out, save)
    if args.part in ("all", "front"):
        finetune_front(settings, out, save)
    out["summary"] = summarize(settings, out)
    save()
    print(json.dumps(out["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
