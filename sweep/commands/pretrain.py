"""``sweep pretrain --out source.pt``: train task 1 (the source) once and save its weights.

The checkpoint is what ``--pretrained`` reads: ``sweep train``/``sweep run --pretrained source.pt``
then start from it, evaluate task 1 instead of training it, and fine-tune on task 2. It is the
state_dict of the model itself (torchvision's or yours, not a wrapper), written atomically, so your
own code loads it with ``model.load_state_dict(torch.load(path, weights_only=True))``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from sweep.atomic import check_regular_target
from sweep.commands._config_args import SOURCE_TASK_SKIP, add_config_arguments, config_from_args, expanded_path
from sweep.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from sweep.config import TrainConfig
    from sweep.data.tasks import Benchmark
    from sweep.models import LayeredModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, skip=SOURCE_TASK_SKIP)  # no strategy knobs: task 1 is trained naive
    parser.add_argument("--out", required=True, metavar="PATH", type=expanded_path,
                        help="where to write the source model's state_dict")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    # not listed (it does not apply), but refused with a reason rather than as an unknown flag
    parser.add_argument("--pretrained", default=None, help=argparse.SUPPRESS)


def pretrain(
    config: TrainConfig, benchmark: Benchmark | None = None, device: torch.device | str = "cpu"
) -> tuple[LayeredModel, Benchmark, float, float]:
    """Train task 1 of ``config``'s benchmark exactly as the trainer's first task does (naive, nothing frozen).

    Returns:
        (model, benchmark, val accuracy, test accuracy) on task 1.
    """
    from sweep.train.trainer import build_run, iter_sequence, load_benchmark

    if config.class_shuffle != "none":
        raise ConfigError("sweep pretrain trains one task 1, but class_shuffle per-seed gives every seed its own: "
                          "name the source's classes with --class-order instead")
    source = config.replace(strategy="naive", frozen_layers=0, pretrained=None)
    benchmark = load_benchmark(source) if benchmark is None else benchmark
    model, strategy = build_run(source, benchmark)
    steps = iter_sequence(benchmark, model, strategy, source, device=device)
    report = next(steps)
    steps.close()  # task 2 is never started
    return model, benchmark, float(report.val[0, 0]), float(report.test[0, 0])


def run(args: argparse.Namespace) -> int:
    from sweep.models import save_weights
    from sweep.train.trainer import parse_device

    check_regular_target(args.out)  # before training: a device or a link is refused, never replaced
    config = config_from_args(args)
    if config.pretrained is not None:
        raise ConfigError("--pretrained makes no sense here: pretrain trains task 1 from scratch (or --init-weights)")
    device = parse_device(args.device, "--device")  # cpu or cuda; meta, mps and the like are refused
    import torch

    torch.set_num_threads(config.threads)  # --threads, default 1: never more threads than a busy machine has free
    model, benchmark, val, test = pretrain(config, device=device)
    path = save_weights(model, Path(args.out))
    print(f"source task {benchmark.tasks[0].name!r} of {config.benchmark} ({config.model}, {config.epochs} epochs, "
          f"seed {config.seed}): val accuracy {100 * val:.1f}%, test accuracy {100 * test:.1f}%")
    print(f"wrote {path}; fine-tune from it with --pretrained {path}")
    return 0
