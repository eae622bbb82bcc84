"""``sweep reproduce PAPER``: a published table, rerun the way a user would run it.

Each row is run with the paper's setup; every hyperparameter it searches is chosen by the toolkit's own
sweep (``sweep run``'s driver) on validation only: the finished search trial with the best validation ACC
(the number the row reports) is chosen, ties as ``sweep choose`` breaks them, and no test column is read.
The chosen setting then runs the whole sequence on ``--seeds`` fresh seeds (1000, 1001, ...: none of the
search's), in this process, and their test ACC is the row's number, mean ± std, judged within
max(2 points, 2 standard errors over the seeds) of the published value.

Both selection protocols of Lee et al. (2024) are run side by side: ``end``, the search judged on every
task's validation data, and ``first-tasks K``, the search trained and judged on the first K tasks only, what
a practitioner has when task K+1 arrives; the full sequence is then run with that choice.

Resumable row by row: ``<results>/reproduce/<paper>/<row>/`` holds each protocol's study (a sweep of its
own, resumed where it stopped) and ``final-<protocol>.json`` once its seeds ran; a row with one is not
recomputed. The table (``table.md``, ``table.parquet``, ``table.png``) lists every row of the paper and says
which are done, not run yet, or not available yet (a strategy or setting not in this version).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.commands._config_args import expanded_path
from sweep.commands.reproductions import PAPERS, SMOKE_SETUP, Paper, Row
from sweep.errors import ConfigError, SweepError

if TYPE_CHECKING:
    import pandas as pd

    from sweep.data.tasks import Benchmark

FINAL_SEED = 1000  # the final runs' seeds start here: never one of a search's (0, 1, ...)
TOLERANCE = 2.0  # points: a row is reproduced within max(TOLERANCE, 2 standard errors over seeds)


@dataclass(frozen=True)
class Settings:
    """What one ``sweep reproduce`` asks, beside the paper and its rows."""

    results: Path  # <results>/reproduce/<paper>
    setup: dict[str, Any]  # the paper's (or the smoke) TrainConfig values every row shares
    steps_per_task: int | None
    trials: int  # search trials per row and protocol
    search_seeds: int
    seeds: int  # final seeds
    protocols: tuple[str, ...]  # "end", "first-tasks-K"
    first_tasks: int
    data_root: str | None
    address: str | None
    cpus_per_trial: float
    max_concurrent: int | None
    quiet: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("paper", choices=sorted(PAPERS), help="the table to reproduce: " + "; ".join(
        f"{key}: {paper.title}" for key, paper in PAPERS.items()))
    a("--results", dest="results_dir", default="results", type=expanded_path,
      help="results folder; the reproduction goes to <results>/reproduce/<paper> (default: results)")
    a("--rows", default=None, help="comma-separated rows to run (default: every row; --smoke: a few); the table "
                                   "lists every row whatever is run")
    a("--seeds", type=int, default=5, help="seeds the chosen setting runs on, fresh ones (default: 5)")
    a("--trials", type=int, default=16, help="search trials per row and protocol (default: 16)")
    a("--search-seeds", type=int, default=2, help="seeds per search trial (default: 2)")
    a("--protocol", dest="protocols", default="end,first-tasks",
      help="comma-separated selection protocols: end (validation of every task) and first-tasks (validation of "
           "the first --first-tasks K tasks only) (default: both)")
    a("--first-tasks", type=int, default=2, metavar="K", help="K of the first-tasks protocol, 2..tasks-1 (default: 2)")
    a("--smoke", action="store_true",
      help="a tiny size that checks the pipeline end to end in under a minute: split-digits, 5 tasks, an MLP of "
           "32-32, 1 epoch, 2 trials of 1 seed, 1 final seed, a few rows (its numbers are not the paper's)")
    a("--data-root", default=None, type=expanded_path, help="data root (default: $SWEEP_DATA_ROOT, else ./data)")
    a("--address", default=None, help="join an existing Ray cluster (default: $RAY_ADDRESS, else a local one)")
    a("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default: 1)")
    a("--max-concurrent", type=int, default=None, help="trials at once (default: as resources allow)")
    a("--quiet", action="store_true", help="no per-trial table")


def run(args: argparse.Namespace) -> int:
    paper = PAPERS[args.paper]
    settings, rows = request(args, paper)
    started_ray = False
    try:
        for row in rows:
            for protocol in settings.protocols:
                if row.params and unavailable(row) is None and not _final_path(settings, row, protocol).exists():
                    started_ray = _ray(settings) or started_ray  # once, for the first row that searches
                reproduce_row(paper, row, protocol, settings)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    table = write_table(paper, settings)
    print(markdown(paper, settings, table))
    print(f"table: {settings.results / 'table.md'}, {settings.results / 'table.parquet'}, "
          f"{settings.results / 'table.png'}")
    return 0


def request(args: argparse.Namespace, paper: Paper) -> tuple[Settings, list[Row]]:
    """The checked settings and the rows to run; a bad flag is a one-line ConfigError."""
    for flag, value, low in (("--seeds", args.seeds, 1), ("--trials", args.trials, 1),
                             ("--search-seeds", args.search_seeds, 1), ("--first-tasks", args.first_tasks, 2)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    for p in protocols:
        if p not in ("end", "first-tasks"):
            raise ConfigError(f"--protocol {p!r} is unknown; allowed: end, first-tasks")
    if not protocols:
        raise ConfigError("--protocol names no protocol; allowed: end, first-tasks")
    setup = {**paper.setup, **(SMOKE_SETUP if args.smoke else {})}
    if "first-tasks" in protocols and not 2 <= args.first_tasks < setup["num_tasks"]:
        raise ConfigError(f"--first-tasks must be in 2..{setup['num_tasks'] - 1} (the sequence has "
                          f"{setup['num_tasks']} tasks), got {args.first_tasks}")
    by_key = {row.key: row for row in paper.rows}
    wanted = [k.strip() for k in args.rows.split(",") if k.strip()] if args.rows else (
        list(paper.smoke_rows) if args.smoke else list(by_key))
    for key in wanted:
        if key not in by_key:
            raise ConfigError(f"--rows: {paper.key} has no row {key!r}; its rows: {', '.join(by_key)}")
    smoke = args.smoke
    folder = "reproduce-smoke" if smoke else "reproduce"  # a smoke run never mixes with (or counts as) the real table
    settings = Settings(
        results=Path(args.results_dir).expanduser().resolve() / folder / paper.key,
        setup=setup, steps_per_task=None if smoke else paper.steps_per_task,
        trials=2 if smoke else args.trials, search_seeds=1 if smoke else args.search_seeds,
        seeds=1 if smoke else args.seeds,
        protocols=tuple(p if p == "end" else f"first-tasks-{args.first_tasks}" for p in protocols),
        first_tasks=args.first_tasks, data_root=args.data_root, address=args.address,
        # smoke: one trial at a time, in one warm worker (two cold ones cost more than they save on a busy machine)
        cpus_per_trial=args.cpus_per_trial, max_concurrent=1 if smoke else args.max_concurrent, quiet=args.quiet)
    return settings, [by_key[k] for k in wanted]


def unavailable(row: Row) -> str | None:
    """Why this version cannot run ``row`` (a strategy or a setting it does not have), or None. Checked by
    name at run time: a strategy registered later makes its rows available."""
    from sweep.hparams import BY_NAME
    from sweep.strategies.registry import STRATEGIES

    missing = [name for name in row.strategy.split("+") if name not in STRATEGIES]
    if missing:
        return f"not available yet: no strategy {', '.join(missing)}"
    fields = [name for name in (*row.fixed, *row.params) if name not in BY_NAME]
    if fields:
        return f"not available yet: no setting {', '.join(fields)}"
    values = [f"{name} {value}" for name, value in row.fixed.items()
              if BY_NAME[name].choices and isinstance(value, str) and value not in BY_NAME[name].choices]
    if values:
        return f"not available yet: no {', '.join(values)}"
    return None


def _ray(settings: Settings) -> bool:
    """Start (or join) Ray once for every row's sweep; True when this command started it."""
    import os

    from sweep.tune.ray_session import init_ray, starts_own_ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    own = starts_own_ray(settings.address)
    import ray

    if not ray.is_initialized():
        init_ray(settings.address, False)
    return own


def _row_dir(settings: Settings, row: Row) -> Path:
    return settings.results / row.key


def _final_path(settings: Settings, row: Row, protocol: str) -> Path:
    return _row_dir(settings, row) / f"final-{protocol}.json"


def _epochs(settings: Settings, benchmark: Benchmark) -> int:
    """The paper's epochs, or the whole epochs that cover its iterations per task (on task 1's training data)."""
    if settings.steps_per_task is None:
        return int(settings.setup["epochs"])
    return math.ceil(settings.steps_per_task * settings.setup["batch_size"] / len(benchmark.tasks[0].train))


_BENCHMARKS: dict[tuple[str, str, int, str | None], Benchmark] = {}


def benchmark_for(settings: Settings, scenario: str) -> Benchmark:
    from sweep.data.benchmarks import build_benchmark

    key = (settings.setup["benchmark"], scenario, settings.setup["num_tasks"], settings.data_root)
    if key not in _BENCHMARKS:
        _BENCHMARKS[key] = build_benchmark(key[0], scenario, key[2], None, settings.data_root)
    return _BENCHMARKS[key]


def reproduce_row(paper: Paper, row: Row, protocol: str, settings: Settings) -> dict[str, Any]:
    """Run (or read back) one row under one protocol: its search, the choice, the final seeds."""
    reason = unavailable(row)
    if reason is not None:
        return {"status": reason}
    final = _final_path(settings, row, protocol)
    if final.exists():
        record = dict(json.loads(final.read_text()))
        _check_same_setup(record, row, settings, final)
        return record
    if not row.params:  # nothing searched: every protocol runs the same setting, once
        for other in sorted(_row_dir(settings, row).glob("final-*.json")):
            record = {**json.loads(other.read_text()), "protocol": protocol}
            if len(record.get("seeds", [])) == settings.seeds:
                _write(final, record)
                return record
    benchmark = benchmark_for(settings, row.scenario)
    setup = {**settings.setup, "epochs": _epochs(settings, benchmark), "scenario": row.scenario,
             "strategy": row.strategy, "data_root": settings.data_root}
    chosen: dict[str, Any] = {}
    selection: dict[str, Any] = {}
    if row.params:
        study_dir = search(row, protocol, setup, settings)
        trial = select_trial(study_dir)
        chosen = {name: _plain(trial[f"hp_{name}"]) for name in row.params}
        selection = {"trial_id": str(trial["trial_id"]), "val_acc": float(trial["val_acc_mean"]),
                     "study": str(study_dir)}
    config = {**setup, **row.fixed, **chosen}
    result = final_runs(config, benchmark, settings.seeds)
    record = {"paper": paper.key, "row": row.key, "protocol": protocol, "status": "done", "chosen": chosen,
              "selection": selection, "config": {k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in config.items() if k != "data_root"},
              **result, "date": datetime.date.today().isoformat(), "code_version": _code_version()}
    _write(final, record)
    return record


def _check_same_setup(record: dict[str, Any], row: Row, settings: Settings, final: Path) -> None:
    """Refuse a row done under another version of the paper's setup (a setting since added or changed, such as
    van de Ven & Tolias's class_shuffle): its number would sit in the table under a header it was not run with.
    Its search is checked too: a choice made on trials run under another setup is not the row's choice."""
    from sweep.reading import read_regular
    from sweep.results.schema import STUDY_FILE

    if "config" not in record:
        return
    again = f"remove {final.parent} to run the row again"
    searched = sorted(record.get("chosen") or {})
    if searched != sorted(row.params):
        raise SweepError(f"{final} searched {', '.join(searched) or 'nothing'}, but the row now searches "
                         f"{', '.join(sorted(row.params)) or 'nothing'}: {again}")
    differs = _setup_differs(record["config"], row, settings)
    if differs:
        raise SweepError(f"{final} was run with {differs}: {again}")
    study = final.parent / final.stem.removeprefix("final-") / STUDY_FILE
    if row.params and study.exists():
        try:  # read as `sweep run --resume` reads it: a regular file within the JSON cap
            base = json.loads(read_regular(study, "study file", "json", SweepError))["base_config"]
        except (ValueError, KeyError, TypeError):
            raise SweepError(f"{study} is unreadable or has no base_config: {again}") from None
        differs = _setup_differs(base, row, settings)
        if differs:
            raise SweepError(f"{study.parent}'s search trials were run with {differs}: {again}")


def _setup_differs(config: dict[str, Any], row: Row, settings: Settings) -> str | None:
    """The first setting of the row's setup that ``config`` (a run's or a search's) does not have, as
    "key=had, but the row's setup is now key=want"; None when every one that can act matches."""
    from sweep.config import TrainConfig
    from sweep.hparams import BY_NAME

    defaults = TrainConfig().to_dict()
    wanted = {**settings.setup, **row.fixed}
    for key, want in wanted.items():
        if key in row.params or key in ("data_root", "epochs"):
            continue  # epochs follow the paper's iterations per task
        field = BY_NAME.get(key)
        if field is not None and field.inert_because({**wanted, "scenario": row.scenario}):
            continue  # a setting the row's scenario leaves alone (class_outputs in task-IL) cannot change its number
        had = config.get(key, defaults.get(key))
        if (list(want) if isinstance(want, tuple) else want) != had:
            return f"{key}={had!r}, but the row's setup is now {key}={want!r}"
    return None


def _write(path: Path, record: dict[str, Any]) -> None:
    from sweep.analysis.io import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=2))


def search(row: Row, protocol: str, setup: dict[str, Any], settings: Settings) -> Path:
    """The row's study for ``protocol``, run through ``sweep run``'s driver (resumed when it exists)."""
    import yaml

    from sweep.analysis.io import write_atomic
    from sweep.results.schema import STUDY_FILE
    from sweep.tune.driver import run_sweep
    from sweep.tune.options import CONFIG_OPTIONS, SweepOptions

    row_dir = _row_dir(settings, row)
    row_dir.mkdir(parents=True, exist_ok=True)
    space = row_dir / "space.yaml"
    text = yaml.safe_dump({"strategy": row.strategy, "description": f"{row.method}, {row.scenario}-incremental: "
                           "the paper's settings fixed, its hyperparameters searched",
                           "fixed": dict(row.fixed), "params": row.params}, sort_keys=False)
    if not space.exists() or space.read_text() != text:
        write_atomic(space, text)
    first = protocol.startswith("first-tasks")
    # every setting of the paper's setup, except those the row fixes otherwise or searches (SGD's learning rate)
    # and SweepOptions' own config fields, passed below (the strategy is the space's): the search trials run
    # exactly the setup the final runs do
    extra = {k: list(v) if isinstance(v, tuple) else v for k, v in setup.items()
             if k not in (*CONFIG_OPTIONS, "strategy") and k not in row.fixed and k not in row.params}
    options = SweepOptions(
        strategy=row.strategy, study=protocol, results_dir=str(row_dir), space_file=str(space),
        trials=settings.trials, seeds=settings.search_seeds, benchmark=setup["benchmark"], scenario=row.scenario,
        num_tasks=setup["num_tasks"], model=setup.get("model", "mlp"),
        data_root=settings.data_root, epochs=setup["epochs"], pretrained=setup.get("pretrained"),
        init_weights=setup.get("init_weights"), references=False,
        resume=(row_dir / protocol / STUDY_FILE).exists(), quiet=settings.quiet, address=settings.address,
        cpus_per_trial=settings.cpus_per_trial, max_concurrent=settings.max_concurrent,
        protocol="first-tasks" if first else "end", protocol_tasks=settings.first_tasks if first else None,
        extra=extra)
    summary = run_sweep(options)
    if not summary.complete:
        raise SweepError(f"row {row.key} ({protocol}): the search stopped before every trial finished; run the "
                         "same command again to resume it")
    return summary.study_dir


def select_trial(study_dir: Path) -> pd.Series:
    """The finished search trial with the best validation ACC (``sweep choose``'s tie-breaks): the selection
    reads validation columns only."""
    from sweep.analysis.choose import choose
    from sweep.analysis.io import load_study

    choice = choose(load_study(study_dir), objective="acc", split="val")
    if choice.trial is None:
        raise SweepError(f"{study_dir}: no search trial finished; nothing to choose from")
    return choice.trial


def final_runs(config: dict[str, Any], benchmark: Benchmark, seeds: int) -> dict[str, Any]:
    """The chosen setting on the whole sequence, seeds FINAL_SEED.., in this process: every seed's test and
    validation ACC (in %) and their mean, std and standard error."""
    import numpy as np
    import torch

    from sweep.config import TrainConfig
    from sweep.tune.trial import run_trial

    torch.set_num_threads(1)  # as a trial's: these small models gain little from more, a shared machine loses
    train_config = TrainConfig.from_mapping({k: v for k, v in config.items() if v is not None},
                                            source="reproduction row")
    seed_list = list(range(FINAL_SEED, FINAL_SEED + seeds))
    out = run_trial(train_config, benchmark, seed_list, lambda metrics: None)
    if out["status"] != "finished":
        return {"status": f"diverged: {out.get('reason', '')}", "seeds": seed_list}
    acc: dict[str, list[float]] = {"test": [], "val": []}
    for seed in seed_list:
        for split in acc:
            last = np.array(out["accuracy"][str(seed)][split][-1], dtype=float)
            acc[split].append(float(100.0 * last.mean()))
    test = np.array(acc["test"])
    std = float(test.std(ddof=1)) if len(test) > 1 else 0.0
    return {"seeds": seed_list, "test_acc": acc["test"], "val_acc": acc["val"], "mean": float(test.mean()),
            "std": std, "se": std / math.sqrt(len(test))}


def _plain(value: Any) -> Any:
    from sweep.analysis.chosen import plain_scalar

    return plain_scalar(value)


def _code_version() -> str:
    from sweep.tune.sink import _code_version as version

    return version()


# --- the table
def within(published: float | None, mean: float | None, se: float | None) -> bool | None:
    """|ours − published| <= max(2 points, 2 standard errors over seeds); None when either is missing."""
    if published is None or mean is None or se is None or not math.isfinite(mean):
        return None
    return abs(mean - published) <= max(TOLERANCE, 2.0 * se)


def table_rows(paper: Paper, settings: Settings) -> list[dict[str, Any]]:
    """One record per (row, protocol), every row of the paper: done, not run yet, or not available yet."""
    records = []
    for row in paper.rows:
        for protocol in settings.protocols:
            reason = unavailable(row)
            path = _final_path(settings, row, protocol)
            done = json.loads(path.read_text()) if reason is None and path.exists() else None
            status = reason or (done["status"] if done else "not run yet")
            mean = done.get("mean") if done else None
            se = done.get("se") if done else None
            records.append({
                "paper": paper.key, "row": row.key, "method": row.method, "strategy": row.strategy,
                "scenario": row.scenario, "protocol": protocol, "published": row.published,
                "published_std": row.published_std, "mean": mean, "std": done.get("std") if done else None,
                "se": se, "n_seeds": len(done.get("test_acc", [])) if done else 0,
                "within": within(row.published, mean, se) if status == "done" else None,
                "chosen": json.dumps(done.get("chosen", {})) if done else None,
                "val_acc_selected": (done.get("selection") or {}).get("val_acc") if done else None,
                "status": status, "date": done.get("date") if done else None,
                "code_version": done.get("code_version") if done else None, "note": row.note,
            })
    return records


def write_table(paper: Paper, settings: Settings) -> pd.DataFrame:
    import pandas as pd

    from sweep.analysis.io import write_atomic, write_parquet_atomic

    frame = pd.DataFrame(table_rows(paper, settings))
    settings.results.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(frame, settings.results / "table.parquet")
    write_atomic(settings.results / "table.md", markdown(paper, settings, frame))
    plot_table(paper, frame, settings.results / "table.png")
    return frame


def _cell(record: pd.Series) -> str:
    if record["status"] != "done":
        return record["status"]
    return f"{record['mean']:.2f} ± {record['std']:.2f} (n={record['n_seeds']})"


def _verdict(record: pd.Series) -> str:
    value = record["within"]
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else ("yes" if value else "no")


def _chosen_text(chosen: object) -> str:
    """``{"distill_temperature": 0.5309...}`` -> ``distill_temperature=0.531``; nothing searched: ``-``."""
    if not isinstance(chosen, str):
        return ""
    values = json.loads(chosen)
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()) or "-"


def markdown(paper: Paper, settings: Settings, frame: pd.DataFrame) -> str:
    """The table: published | ours mean ± std | within? per protocol, then the chosen values and notes."""
    protocols = list(settings.protocols)
    head = ["row", "method", "scenario", "published"]
    for p in protocols:
        head += [f"ours, {p}", "within?"]
    head += ["chosen (" + protocols[0] + ")"]
    lines = [f"# {paper.title}", "", f"{paper.citation}.", "", f"Published values: {paper.source}.", "",
             f"Ours: test ACC (%) of the setting chosen on validation only (best validation ACC of {settings.trials} "
             f"search trials of {settings.search_seeds} seed(s)), rerun on {settings.seeds} fresh seed(s); within? "
             f"is |ours − published| <= max({TOLERANCE:g}, 2 standard errors over seeds). Setup: "
             + ", ".join(f"{k}={v}" for k, v in settings.setup.items())
             + (f", {settings.steps_per_task} iterations a task as whole epochs" if settings.steps_per_task else "")
             + ".", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, group in frame.groupby("row", sort=False):
        first = group.iloc[0]
        published = ("—" if first["published"] is None or (isinstance(first["published"], float)
                                                           and math.isnan(first["published"]))
                     else f"{first['published']:.2f} ± {first['published_std']:.2f}")
        cells = [str(key), str(first["method"]), str(first["scenario"]), published]
        for p in protocols:
            record = group[group.protocol == p].iloc[0]
            cells += [_cell(record), _verdict(record)]
        cells.append(_chosen_text(first["chosen"]))
        lines.append("| " + " | ".join(cells) + " |")
    done = frame[frame.status == "done"]
    dates = sorted({d for d in done["date"] if d})
    versions = sorted({v for v in done["code_version"] if v})
    lines += ["", f"Rows done: {done['row'].nunique()} of {frame['row'].nunique()}"
              + (f"; run on {', '.join(dates)} with {', '.join(versions)}" if dates else "") + ".", "",
              "What differs from the paper's setup:", *[f"- {d}" for d in paper.differences]]
    notes = [f"- {r.key}: {r.note}" for r in paper.rows if r.note]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def plot_table(paper: Paper, frame: pd.DataFrame, path: Path) -> None:
    """Published against ours (mean ± std) for every row, one bar per protocol."""
    import numpy as np

    from sweep.analysis.drawing import finish, new_figure

    keys = list(dict.fromkeys(frame["row"]))
    protocols = list(dict.fromkeys(frame["protocol"]))
    fig = new_figure(max(6.0, 0.6 * len(keys) + 2.0), 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(keys))
    width = 0.8 / (len(protocols) + 1)
    published = [frame[frame.row == k].iloc[0]["published"] for k in keys]
    ax.bar(x, [np.nan if v is None else v for v in published], width, label="published", color="lightgray",
           edgecolor="black")
    for i, p in enumerate(protocols):
        part = frame[frame.protocol == p].set_index("row").reindex(keys)
        means = part["mean"].astype(float).to_numpy()
        stds = part["std"].astype(float).to_numpy()
        ax.bar(x + (i + 1) * width, means, width, yerr=stds, label=f"ours, {p}", capsize=2)
    ax.set_xticks(x + width * len(protocols) / 2, keys, rotation=45, ha="right")
    ax.set_ylabel("average test accuracy ACC (%)")
    ax.set_ylim(0, 100)
    ax.set_title(paper.title)
    ax.legend(loc="lower right", fontsize="small")
    finish(fig, path)

