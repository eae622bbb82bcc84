"""``sweep run``: search a strategy's hyperparameters with Ray Tune + Optuna into ``results/<study>``."""

from __future__ import annotations

import argparse
import math
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweep.tune.driver import SweepSummary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--strategy", default="ewc", help="strategy to sweep, e.g. ewc, distill, replay, ewc+replay (default: ewc)")
    a("--space", dest="space_file", default=None, help="search-space YAML (default: search_spaces/<strategy>.yaml)")
    a("--study", default=None, help="study name (default: <strategy>-<benchmark>-<scenario>)")
    a("--results", dest="results_dir", default="results", help="results folder (default: results)")
    a("--trials", type=_int("--trials"), default=16, help="search trials, references not counted (default: 16)")
    a("--seeds", type=_int("--seeds"), default=3, help="seeds per trial (default: 3)")
    a("--benchmark", default="split-digits",
      help="benchmark, or your tasks as module:function (default: split-digits, offline)")
    a("--scenario", default="task", help="class, task or domain (default: task)")
    a("--num-tasks", type=_int("--num-tasks"), default=None, help="number of tasks (default: the benchmark's)")
    a("--data-root", default=None, help="data root in torchvision's layout (default: $SWEEP_DATA_ROOT or ./data)")
    a("--model", default="mlp", help="mlp, cnn, resnet18/34/50, or your builder as module:function (default: mlp)")
    a("--pretrained", default=None,
      help="state_dict after the source task (task 1): it is evaluated from this checkpoint, not trained")
    a("--init-weights", default=None, help="state_dict every trial starts task 1 from (e.g. ImageNet weights)")
    a("--epochs", type=_int("--epochs"), default=None, help="epochs per task (default: the space's)")
    a("--sampler", default="tpe", help="tpe or nsga2 (default: tpe)")
    a("--objective", default="pareto",
      help="pareto: maximise stability and plasticity; constrained: maximise stability s.t. plasticity")
    a("--min-plasticity", type=_float("--min-plasticity"), default=0.95,
      help="constrained objective: plasticity >= this fraction of naive's (default: 0.95)")
    a("--sampler-seed", type=_int("--sampler-seed"), default=0, help="seed of the Optuna sampler (default: 0)")
    a("--cpus-per-trial", type=_float("--cpus-per-trial"), default=1.0, help="CPUs per trial (default: 1)")
    a("--gpus-per-trial", type=_float("--gpus-per-trial"), default=0.0,
      help="GPUs per trial; fractional shares a GPU, e.g. 0.25 (default: 0)")
    a("--max-concurrent", type=_int("--max-concurrent"), default=None,
      help="trials at once (default: as resources allow)")
    a("--address", default=None, help="join an existing Ray cluster (default: $RAY_ADDRESS, else a local one)")
    a("--resume", action="store_true", help="continue an interrupted study: finished trials are not run again")
    a("--no-references", dest="references", action="store_false", help="skip the naive and joint references")
    a("--dashboard", action="store_true", help="start Ray's dashboard, on 127.0.0.1 only")
    a("--quiet", action="store_true", help="no per-trial table")
    a("--no-prefix-cache", dest="prefix_cache", action="store_false",
      help="recompute the state after task 1 in every trial instead of sharing it")


def _int(flag: str):  # noqa: ANN202 - argparse type factory
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
    return parse


def _float(flag: str):  # noqa: ANN202
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None
    return parse


def run(args: argparse.Namespace) -> int:
    from sweep.tune.driver import SweepOptions, run_sweep

    fields = SweepOptions.__dataclass_fields__
    options = SweepOptions(**{k: v for k, v in vars(args).items() if k in fields})
    interrupted: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        interrupted.append(signum)
        if len(interrupted) == 1:  # the first stops the sweep; later ones must not cut Ray's shutdown short
            raise KeyboardInterrupt

    # SIGTERM (kill, a job scheduler) is a Ctrl-C too: the finally blocks stop Ray and release the lock
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run_sweep(options)
    except KeyboardInterrupt:
        summary = None
        interrupted.append(signal.SIGINT)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if summary is not None:
        print_summary(summary)
        if summary.complete:
            return 0
    argv = sys.argv[sys.argv.index("run") + 1:] if "run" in sys.argv else []
    resume = shlex.join(["sweep", "run", *[a for a in argv if a != "--resume"], "--resume"])
    print(f"sweep run: interrupted before every trial finished; finished trials are saved. Resume with: {resume}",
          file=sys.stderr)
    return 128 + interrupted[0] if interrupted else 1


def end_front(study_dir: Path) -> list[dict[str, Any]]:
    """The study's validation Pareto front, as the report and `sweep choose` compute it; highest stability first."""
    from sweep.analysis.io import load_study
    from sweep.analysis.pareto import pareto_front

    trials = load_study(study_dir).trials
    if trials.empty:
        return []
    front = trials[pareto_front(trials).to_numpy()].sort_values("val_stability_mean", ascending=False)
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in front.to_dict("records")]


def print_summary(summary: SweepSummary, file: Any = sys.stdout) -> None:
    """The end of a sweep: how its trials ended and the validation Pareto front."""
    from sweep.tune.sink import format_pm, format_value

    c = summary.counts
    print(f"\ntrials: {c['finished']} finished, {c['error']} errored, {c['diverged']} diverged "
          f"(of {summary.target}, references included)", file=file)
    front = end_front(summary.study_dir) if sum(c.values()) else []
    if front:
        print("Pareto-optimal trials (validation):", file=file)
        for row in front:
            params = {k[3:]: v for k, v in row.items() if k.startswith("hp_") and v is not None}
            shown = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
            stability = format_pm(row["val_stability_mean"], row["val_stability_std"])
            plasticity = format_pm(row["val_plasticity_mean"], row["val_plasticity_std"])
            print(f"  {row['trial_id']}: stability {stability}%, plasticity {plasticity}%  [{shown}]", file=file)
    d = summary.study_dir
    print(f"results: {d / 'trials.parquet'} and {d / 'accuracy.parquet'}", file=file)
    print(f"Pareto front: sweep report {d}  (or the notebook analysis/study.ipynb)", file=file)
