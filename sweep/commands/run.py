"""``sweep run``: search a strategy's hyperparameters with Ray Tune + Optuna into ``results/<study>``."""

from __future__ import annotations

import argparse
import math
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.commands._config_args import add_field_flags, expanded_path, given_fields
from sweep.hparams import BY_NAME, STRATEGY_NAMES

if TYPE_CHECKING:
    from sweep.tune.driver import SweepSummary


# TrainConfig fields with no flag here: the seeds come from --seeds, the strategy is the space's (--strategy),
# a trial's threads are its --cpus-per-trial
NOT_FLAGS = ("seed", "strategy", "threads")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--strategy", default="ewc", help=f"strategy to sweep: one of {', '.join(STRATEGY_NAMES)}, or several joined "
      "with '+' (ewc+replay); its space is search_spaces/<strategy>.yaml (default: ewc)")
    a("--space", dest="space_file", default=None, type=expanded_path,
      help="search-space YAML (default: search_spaces/<strategy>.yaml)")
    a("--study", default=None, help="study name (default: <strategy>-<benchmark>-<scenario>)")
    a("--results", dest="results_dir", default="results", type=expanded_path, help="results folder (default: results)")
    a("--trials", type=_int("--trials"), default=16, help="search trials, references not counted (default: 16)")
    a("--seeds", type=_int("--seeds"), default=3, help="seeds per trial (default: 3)")
    a("--sampler", default="tpe", help="tpe, nsga2 or random (Optuna's; seeded by --sampler-seed; default: tpe)")
    a("--objective", default="pareto",
      help="pareto: maximise stability and plasticity; constrained: maximise stability s.t. plasticity")
    a("--min-plasticity", type=_float("--min-plasticity"), default=0.95,
      help="constrained objective: plasticity >= this fraction of naive's (default: 0.95)")
    a("--sampler-seed", type=_int("--sampler-seed"), default=0, help="seed of the Optuna sampler (default: 0)")
    a("--prune", action="store_true",
      help="stop trials dominated in (stability, plasticity) at a task or epoch boundary from task 2 on; "
           "Optuna is told PRUNED, the study records them as pruned (default: off; README: when to use it)")
    a("--prune-eta", type=_float("--prune-eta"), default=3.0, metavar="ETA",
      help="with --prune: at each rung the top 1/ETA of the trials that reached it go on, and every trial on "
           "its front; rungs inside a task at epochs GRACE*ETA^k; in (1, 100] (default: 3)")
    a("--prune-grace", type=_int("--prune-grace"), default=1, metavar="GRACE",
      help="with --prune: epochs trained past task 1 before a trial can be stopped, >= 1 (default: 1)")
    a("--prune-noise", type=_float("--prune-noise"), default=0.5, metavar="K",
      help="with --prune: a trial stays on a rung's front unless a peer dominates its values raised by K stds "
           "over its seeds, so a difference within the seeds' noise stops nothing; 0: the means alone; "
           "in [0, 10] (default: 0.5)")
    a("--prune-min-share", type=_float("--prune-min-share"), default=0.005, metavar="S",
      help="with --prune and the naive reference, at the rungs inside the last task: a trial retaining no more "
           "than naive does at the end stops, and a trial on a rung's front goes on for that alone only if it "
           "adds S of the rung's hypervolume against (naive's stability, 0); 0: neither rule, every front trial "
           "goes on; in [0, 0.5] (default: 0.005)")
    a("--protocol", nargs="+", default=None, metavar="PROTOCOL",
      help="when hyperparameters are selected (Lee et al. 2024): end, on every task's validation data; "
           "first-tasks K, every trial trains and is judged on the first K tasks only (2 <= K < tasks), what a "
           "practitioner has when task K+1 arrives; then `sweep choose` and `sweep train --config chosen.yaml "
           "--num-tasks T` run the full sequence with the choice (default: end)")
    a("--cpus-per-trial", type=_float("--cpus-per-trial"), default=1.0, help="CPUs per trial (default: 1)")
    a("--gpus-per-trial", type=_float("--gpus-per-trial"), default=0.0,
      help="GPUs per trial; fractional shares a GPU, e.g. 0.25 (default: 0)")
    a("--max-concurrent", type=_int("--max-concurrent"), default=None,
      help="trials at once (default: as resources allow)")
    a("--address", default=None, help="join an existing Ray cluster (default: $RAY_ADDRESS, else a local one)")
    a("--storage", default=None, type=expanded_path,
      help="a shared folder every node reaches, for the task-prefix cache and Tune's storage "
           "(default: the study folder; object-store URIs are refused)")
    a("--resume", action="store_true", help="continue an interrupted study: finished trials are not run again")
    a("--no-references", dest="references", action="store_false", help="skip the naive and joint references")
    a("--dashboard", action="store_true", help="start Ray's dashboard, on 127.0.0.1 only")
    a("--trial-niceness", type=_int("--trial-niceness"), default=0, metavar="N",
      help="niceness of the trials' processes above this command's, 0..19, when the sweep starts its own Ray "
           "(Ray's default is 15); a cluster joined with --address keeps its own (default: 0, this command's "
           "priority)")
    a("--quiet", action="store_true", help="no per-trial table")
    a("--no-prefix-cache", dest="prefix_cache", action="store_false",
      help="recompute the state after task 1 in every trial instead of sharing it")
    a("--log", type=_names, action="extend", default=None, metavar="TRACKER[,TRACKER]",
      help="also log every trial's objectives and metrics after each task to mlflow, wandb and/or tensorboard "
           "(comma-separated or repeated), in <study>/trackers/; each needs its extra: pip install -e '.[mlflow]'; "
           "W&B offline unless $WANDB_MODE is set (default: none)")
    # every other TrainConfig field, shared by every trial; a value given here overrides the space's fixed one
    add_field_flags(parser.add_argument_group("the config every trial shares (the space's fixed values, overridden)"),
                    skip=NOT_FLAGS, default_text=lambda row: None if row.per_sweep else
                    f"the space's, else {row.shown_default()}")


def _int(flag: str) -> Callable[[str], int]:  # an argparse type
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
    return parse


def parse_protocol(words: list[str] | None) -> tuple[str, int | None]:
    """``--protocol end`` -> ("end", None); ``--protocol first-tasks 2`` -> ("first-tasks", 2); the values are
    checked with the other options (a one-line error naming what is allowed)."""
    from sweep.errors import ConfigError

    if not words:
        return "end", None
    if len(words) > 2 or (words[0] == "end" and len(words) > 1):
        raise ConfigError(f"--protocol {' '.join(words)}: expected end, or first-tasks K")
    if len(words) == 1:
        if words[0] == "first-tasks":
            raise ConfigError("--protocol first-tasks needs K, the number of tasks to select on: first-tasks 2")
        return words[0], None
    try:
        return words[0], int(words[1])
    except ValueError:
        raise ConfigError(f"--protocol {words[0]} {words[1]}: K must be an integer >= 2, got {words[1]!r}") from None


def _names(text: str) -> list[str]:  # --log mlflow,tensorboard; each name is checked with the other options
    return [name.strip() for name in text.split(",")]


def _float(flag: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None
    return parse


def run(args: argparse.Namespace) -> int:
    from sweep.tune.driver import SweepOptions, run_sweep
    from sweep.tune.interrupts import handled

    fields = SweepOptions.__dataclass_fields__
    args.protocol, args.protocol_tasks = parse_protocol(args.protocol)
    args.log = tuple(args.log or ())  # --log a,b --log c -> ("a", "b", "c")
    config = given_fields(args, skip=NOT_FLAGS)  # --hidden 400,400 -> {"hidden": [400, 400]}
    options = SweepOptions(**{k: v for k, v in vars(args).items() if k in fields and (k not in BY_NAME or
                                                                                     k in NOT_FLAGS)},
                           **{k: v for k, v in config.items() if k in fields},
                           extra={k: v for k, v in config.items() if k not in fields})
    # SIGINT and SIGTERM (kill, a job scheduler) raise KeyboardInterrupt: the finally blocks stop Ray and
    # release the lock. After one, whatever the unwinding raises is the interrupt's doing: one line, 128+signal
    with handled() as interrupted:
        try:
            summary = run_sweep(options)
        except BaseException as err:
            if not interrupted and not isinstance(err, KeyboardInterrupt):
                raise
            if not interrupted:  # a KeyboardInterrupt no handler of ours raised: Ctrl-C as Python delivers it
                interrupted.append(signal.SIGINT)
            summary = None
    if summary is not None:
        print_summary(summary)
        if options.protocol == "first-tasks":  # the study judged K tasks: the full sequence is the next step
            print(f"selected on the first {options.protocol_tasks} tasks only (--protocol first-tasks): run the whole "
                  f"sequence with the choice: sweep choose {summary.study_dir} --output chosen.yaml, then sweep train "
                  "--config chosen.yaml --num-tasks <the sequence's tasks>")
        if summary.complete:
            return 0
    print(f"sweep run: interrupted before every trial finished; finished trials are saved. Resume with: "
          f"{resume_hint(args)}", file=sys.stderr)
    return 128 + interrupted[0] if interrupted else 1


def resume_hint(args: argparse.Namespace) -> str:
    """The command that continues this sweep: its own arguments (as ``main(argv)`` was given them), plus
    ``--resume``."""
    argv = list(getattr(args, "argv", None) or [])
    argv = argv[argv.index("run") + 1:] if "run" in argv else argv
    return shlex.join(["sweep", "run", *[a for a in argv if a != "--resume"], "--resume"])


def end_front(study_dir: Path) -> list[dict[str, Any]]:
    """The study's validation Pareto front, as the report and `sweep choose` compute it; highest stability first."""
    from sweep.analysis.io import load_study
    from sweep.analysis.pareto import pareto_front

    trials = load_study(study_dir).trials
    if trials.empty:
        return []
    front = trials[pareto_front(trials).to_numpy()].sort_values("val_stability_mean", ascending=False)
    return [{str(k): (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in front.to_dict("records")]


def print_summary(summary: SweepSummary, file: Any = sys.stdout) -> None:
    """The end of a sweep: how its trials ended and the validation Pareto front."""
    from sweep.analysis.compute import pruning_savings
    from sweep.analysis.io import load_study
    from sweep.tune.sink import format_pm, format_value

    c = summary.counts
    print(f"\ntrials: {c['finished']} finished, {c['error']} errored, {c['diverged']} diverged"
          + (f", {c['pruned']} pruned" if c.get("pruned") else "")
          + f" (of {summary.target}, references included)", file=file)
    savings = pruning_savings(load_study(summary.study_dir).trials) if c.get("pruned") else None
    if savings is not None:
        print(savings.sentence(), file=file)
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
