"""Generative replay against replay with the same memory and against naive, measured (issue 17, item 5).

An experiment, not a bench row: ``python -m bench.genreplay`` (``--quick`` for a smoke size on split-digits)
trains 5-task split-MNIST in task-, domain- and class-incremental form with naive, ``replay`` and
``genreplay``, 3 seeds each, in this process (no sweep: fixed settings from van de Ven & Tolias 2019's
split-MNIST protocol), and prints ACC, stability and plasticity on the test split as mean ± std over the
seeds. The numbers land in ``bench/out/genreplay.json`` (rewritten after every run, so a stopped
experiment keeps what it finished) and, by hand, in ``docs/genreplay.md``.

Settings: MLP 784-400-400-10 (van de Ven's fc_units=400, two hidden layers), Adam at 1e-3, batch 128,
2 epochs a task (theirs: 2000 iterations, ~21 epochs; shrunk to keep the experiment under ~40 minutes on
one core). genreplay: their VAE (two layers of 400 each way, latent 100, Bernoulli decoder), as many
generated samples as real ones in each batch (r = 0.5), DGR's 1/t weighting, soft targets at T = 2, and
``--generator-epochs`` extra generator epochs after each task (default 5). replay: a class-balanced buffer
whose bytes (784 uint8 pixels + a 1-byte label per sample) equal the generator's float32 parameter bytes,
as many replayed samples as real ones in each batch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import REPO
from sweep.config import TrainConfig
from sweep.data.benchmarks import build_benchmark
from sweep.models.vae import VAE
from sweep.train.trainer import run_config

OUT = REPO / "bench" / "out" / "genreplay.json"
SCENARIOS = ("task", "domain", "class")
METHODS = ("naive", "replay", "genreplay")
LABEL_BYTES = 1  # a label of 10 classes fits a byte


def generator_bytes(input_shape: tuple[int, ...], latent: int) -> int:
    vae = VAE(input_shape, latent)
    return sum(p.numel() * p.element_size() for p in vae.parameters())


def buffer_size(input_shape: tuple[int, ...], memory: int) -> int:
    """Replay samples whose uint8 pixels and label take ``memory`` bytes (rounded down)."""
    return memory // (math.prod(input_shape) + LABEL_BYTES)


def configs(method: str, scenario: str, args: argparse.Namespace, replay_size: int) -> dict[str, Any]:
    common: dict[str, Any] = dict(benchmark=args.benchmark, scenario=scenario, num_tasks=5, hidden=args.hidden,
                                  epochs=args.epochs, batch_size=128, lr=1e-3, optimizer="adam", threads=1)
    if method == "replay":
        return {**common, "strategy": "replay", "replay_size": replay_size, "replay_ratio": 0.5}
    if method == "genreplay":
        return {**common, "strategy": "genreplay", "genreplay_latent": args.latent,
                "genreplay_epochs": args.generator_epochs, "genreplay_ratio": 0.5, "genreplay_temperature": 2.0,
                "genreplay_weighting": "task-count"}
    return {**common, "strategy": "naive"}


def summary(runs: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for metric in ("acc", "stability", "plasticity"):
        values = np.array([r["test"][metric] for r in runs])
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        out[metric] = f"{100 * values.mean():.1f} ± {100 * std:.1f}"
    out["minutes"] = f"{sum(r['seconds'] for r in runs) / 60:.1f}"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="split-digits, 1 epoch, 2 seeds: a smoke size")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--generator-epochs", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.benchmark, args.epochs, args.hidden, args.latent = "split-mnist", 2, (400, 400), 100
    if args.quick:
        args.benchmark, args.epochs, args.hidden, args.seeds = "split-digits", 1, (64, 64), min(args.seeds, 2)
    scenarios = [s for s in args.scenarios.split(",") if s]
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "runs": {}}
    for scenario in scenarios:
        benchmark = build_benchmark(args.benchmark, scenario, num_tasks=5)
        memory = generator_bytes(benchmark.input_shape, args.latent)
        size = buffer_size(benchmark.input_shape, memory)
        results["memory"] = {"generator_float32_bytes": memory, "replay_size": size,
                             "replay_bytes": size * (math.prod(benchmark.input_shape) + LABEL_BYTES)}
        print(f"[genreplay] generator {memory} bytes; replay buffer {size} samples = "
              f"{results['memory']['replay_bytes']} bytes", file=sys.stderr, flush=True)
        for method in METHODS:
            runs = []
            for seed in range(args.seeds):
                config = TrainConfig.from_mapping({**configs(method, scenario, args, size), "seed": seed})
                started = time.perf_counter()
                result = run_config(config, benchmark)
                runs.append({"seed": seed, "status": result.status, "test": result.metrics("test"),
                             "val": result.metrics("val"), "test_matrix": result.test.tolist(),
                             "seconds": time.perf_counter() - started,
                             "compute_samples": result.compute_first.samples + result.compute.samples})
                results["runs"].setdefault(scenario, {})[method] = runs
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1))
                print(f"[genreplay] {scenario} {method} seed {seed}: acc {runs[-1]['test']['acc']:.3f} "
                      f"({runs[-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    print("| scenario | method | ACC | stability | plasticity | minutes (all seeds) |")
    print("|---|---|---|---|---|---|")
    for scenario, methods in results["runs"].items():
        for method, runs in methods.items():
            s = summary(runs)
            print(f"| {scenario} | {method} | {s['acc']} | {s['stability']} | {s['plasticity']} | {s['minutes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
