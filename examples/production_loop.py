"""The whole path, on your own data and model: sweep, choose, fine-tune in your own loop, verify.

    python -m examples.production_loop              # about two minutes on a laptop CPU
    python -m examples.production_loop --smoke      # seconds of training: what the tests run

1. You have a model trained on the source task (here trained by your own loop below, then saved
   as a plain state_dict: ``source.pt``).
2. Sweep EWC on your tasks (``examples.my_tasks:build``) and model (``examples.my_models:build``),
   starting every trial from that checkpoint (``pretrained``): task 1 is evaluated, not trained,
   its Fisher is computed, and task 2 (the target) is fine-tuned.
3. Choose the most stable setting that keeps plasticity within 5 points of naive fine-tuning.
4. Fine-tune in your own loop with ``sweep.api.from_chosen``: the chosen λ, Fisher estimator,
   learning rate, frozen layers, lr decay.
5. Verify: the source accuracy retained, next to a naive fine-tune of the same checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from examples.my_models import build as build_model
from examples.my_tasks import build as build_tasks
from sweep import api
from sweep.data.tasks import to_float

TASKS = "examples.my_tasks:build"
MODEL = "examples.my_models:build"


def as_tensors(split: object) -> tuple[Tensor, Tensor]:
    """A task split (x, y) or a TensorDataset, as two tensors."""
    if isinstance(split, torch.utils.data.TensorDataset):
        x, y = split.tensors
        return x, y
    x, y = split  # type: ignore[misc]
    return torch.as_tensor(x), torch.as_tensor(y)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    correct = (model(to_float(x)).argmax(1) == y).float().mean().item()
    model.train()
    return correct


def fine_tune(model: nn.Module, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer, epochs: int,
              batch_size: int, penalty: Callable[[nn.Module], Tensor] | None = None, seed: int = 0) -> None:
    """Your training loop: nothing sweep-specific except the penalty added to the loss."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(to_float(x[idx])), y[idx])
            if penalty is not None:
                loss = loss + penalty(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--study", default="ewc-my-tasks", help="study name (default: ewc-my-tasks)")
    parser.add_argument("--smoke", action="store_true", help="tiny sweep and few epochs, for the tests")
    args = parser.parse_args(argv)
    trials, seeds, epochs = (2, 1, 1) if args.smoke else (16, 2, 5)
    torch.manual_seed(0)

    source, target = build_tasks()
    xs, ys = as_tensors(source["train"])
    xs_test, ys_test = as_tensors(source["test"])
    xt, yt = as_tensors(target["train"])
    xt_test, yt_test = as_tensors(target["test"])

    # 1. your pretrained model: trained on the source task by your own code, saved as a state_dict
    model = build_model(tuple(xs.shape[1:]), 10)
    fine_tune(model, xs, ys, torch.optim.Adam(model.parameters(), lr=1e-3), epochs=2 if args.smoke else 10,
              batch_size=64)
    study_dir = Path(args.results) / args.study
    checkpoint = Path(args.results) / f"{args.study}-source.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoint)
    source_accuracy = accuracy(model, xs_test, ys_test)
    print(f"source model: {100 * source_accuracy:.1f}% on the source test split")

    # 2. the sweep, every trial starting from that checkpoint
    from sweep.commands.run import print_summary
    from sweep.tune.driver import SweepOptions, run_sweep

    summary = run_sweep(SweepOptions(
        strategy="ewc", benchmark=TASKS, model=MODEL, scenario="domain", pretrained=str(checkpoint), trials=trials,
        seeds=seeds, epochs=epochs, results_dir=args.results, study=args.study, resume=study_dir.exists(),
        quiet=args.smoke,
    ))
    print_summary(summary)

    # 3. the choice, with evidence, written to chosen.yaml
    from sweep.analysis.choose import choose, format_choice, write_choice
    from sweep.analysis.io import load_study

    choice = choose(load_study(study_dir), "stability", ["plasticity >= naive - 0.05"])
    if not choice.feasible:  # the closest trial still shows the path; a real study would search further
        print("no trial met the constraint; taking the closest one")
    print(format_choice(choice))
    chosen_file = write_choice(choice, study_dir / "chosen.yaml")

    # 4. your loop, with the chosen setting
    chosen = api.from_chosen(chosen_file)
    state = torch.load(checkpoint, weights_only=True)
    model = build_model(tuple(xs.shape[1:]), 10)
    model.load_state_dict(state)
    fisher = chosen.fisher(model, xs, ys)  # once, on the source data, before any fine-tuning
    ewc = chosen.ewc(model, fisher)
    chosen.freeze(model)
    fine_tune(model, xt, yt, chosen.optimizer(model), chosen.config.epochs, chosen.config.batch_size, penalty=ewc)

    naive = build_model(tuple(xs.shape[1:]), 10)
    naive.load_state_dict(state)
    fine_tune(naive, xt, yt, torch.optim.Adam(naive.parameters(), lr=chosen.finetune_lr), chosen.config.epochs,
              chosen.config.batch_size)

    # 5. verify retention
    numbers = {
        "source_before": source_accuracy,
        "source_after_chosen": accuracy(model, xs_test, ys_test),
        "target_after_chosen": accuracy(model, xt_test, yt_test),
        "source_after_naive": accuracy(naive, xs_test, ys_test),
        "target_after_naive": accuracy(naive, xt_test, yt_test),
    }
    print(f"\nchosen: ewc_lambda={chosen.config.ewc_lambda:.4g}, fisher={chosen.config.fisher} "
          f"(Fisher mean {ewc.fisher_scale()['fisher_mean']:.3g})")
    print(f"source accuracy: {100 * numbers['source_before']:.1f}% before, "
          f"{100 * numbers['source_after_chosen']:.1f}% after the chosen fine-tune, "
          f"{100 * numbers['source_after_naive']:.1f}% after a naive one")
    print(f"target accuracy: {100 * numbers['target_after_chosen']:.1f}% chosen, "
          f"{100 * numbers['target_after_naive']:.1f}% naive")
    print(f"retention (source after / before): {numbers['source_after_chosen'] / numbers['source_before']:.3f} "
          f"chosen, {numbers['source_after_naive'] / numbers['source_before']:.3f} naive")
    return numbers


if __name__ == "__main__":
    main(sys.argv[1:])
