"""One self-contained HTML report of a study: opens in a browser from disk, no server, no network.

Plots are embedded as base64 PNG data URIs and the style sheet is inline, so the file can be
mailed or attached to a ticket as it is.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sweep.analysis import pareto, plots
from sweep.analysis.choose import Choice, choose, format_choice
from sweep.analysis.io import Study, write_atomic
from sweep.results import schema

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
.verdict { padding: 0.8em 1em; border-left: 4px solid #2a7; background: #f2fbf6; }
.verdict.warn { border-color: #d80; background: #fff8ec; }
"""
TOP_TRIALS = 15  # front and near-front trials shown in the table; the front plot shows all


def _image(fig: Figure, alt: str) -> str:
    data = base64.b64encode(plots.png_bytes(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, (int, float, np.number)) and not isinstance(cell, bool)
            cells.append(f"<td{' class=num' if numeric else ''}>{html.escape(_text(cell))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def _pct(row: pd.Series, split: str, metric: str) -> str:
    mean = row[schema.metric_column(split, metric)]
    std = row[schema.metric_column(split, metric, "std")]
    if pd.isna(mean):
        return "n/a"
    return f"{100 * float(mean):.1f}%" + ("" if pd.isna(std) else f" ± {100 * float(std):.1f}")


def _unique(series: pd.Series) -> str:
    return ", ".join(sorted({str(v) for v in series.dropna() if str(v) != ""})) or "?"


def verdict(study: Study, split: str = "val") -> tuple[bool, str]:
    """The trade-off verdict in words: (is it a warning, text).

    When no searched setting beats naive's stability beyond noise, the report says so and names
    what usually helps (replay) instead of leaving a flat front to be misread.
    """
    check = pareto.tradeoff_check(study, split)
    if check is None:
        return True, (
            "Cannot judge the trade-off: the study has no finished naive reference"
            " or no finished search trial."
        )
    best = (
        f"trial {check.best_trial_id} at {100 * check.best_stability:.1f}%"
        f" ± {100 * check.best_stability_std:.1f} vs naive {100 * check.naive_stability:.1f}%"
        f" ± {100 * check.naive_stability_std:.1f}"
    )
    if check.has_tradeoff:
        return False, (
            f"Trade-off present: the mitigation keeps old tasks better than naive fine-tuning"
            f" (most stable: {best} {split} stability); the front shows what it costs in plasticity."
        )
    strategy = study.setting("strategy")
    if "replay" in strategy:
        advice = (
            "Replay is already in this strategy, so widen its buffer size (replay_size) and"
            " check the learning rate and epochs."
        )
    else:
        advice = (
            "What usually helps here is replay: a small class-balanced buffer of old-task samples"
            " mixed into each batch (make sweep STRATEGY=replay, or STRATEGY=ewc+replay)."
        )
    return True, (
        f"No trade-off: no searched setting keeps old tasks better than naive fine-tuning beyond"
        f" the noise (best: {best} {split} stability; noise margin {100 * check.noise:.1f} points)."
        f" The mitigation does not help on this benchmark and scenario, which is what EWC shows in"
        f" class-incremental form: with one shared head the new classes' logits win whatever the"
        f" penalty. {advice}"
    )


def _setup(study: Study) -> str:
    trials = study.trials
    search = trials[trials["role"] == "search"]
    by_status = ", ".join(f"{(search['status'] == s).sum()} {s}" for s in schema.STATUSES)
    statuses = {role: _unique(trials.loc[trials["role"] == role, "status"]) for role in ("naive", "joint")}
    references = ", ".join(f"{role}: {'missing' if s == '?' else s}" for role, s in statuses.items())
    rows = [
        ("study", study.name),
        ("folder", str(study.path)),
        ("strategy", study.setting("strategy")),
        ("benchmark", study.setting("benchmark")),
        ("scenario", f"{study.setting('scenario')}-incremental"),
        ("model", study.setting("model")),
        ("tasks", study.setting("num_tasks")),
        ("search trials", f"{len(search)}: {by_status}"),
        ("references", references),
        ("seeds per trial", _unique(trials["n_seeds"])),
        ("seeds", _unique(trials["seeds"])),
        ("searched hyperparameters", ", ".join(study.searched_params()) or "none"),
        ("code version", _unique(trials["code_version"])),
        (
            "torch / ray / optuna",
            " / ".join(_unique(trials[c]) for c in ("torch_version", "ray_version", "optuna_version")),
        ),
        ("schema version", _unique(trials["schema_version"])),
    ]
    return _table(["setting", "value"], rows)


def _top_trials(study: Study, split: str) -> str:
    x, y = schema.metric_column(split, "stability"), schema.metric_column(split, "plasticity")
    table = pareto.front_table(study.trials, x, y)
    table = table[pareto.eligible(table, x, y) & (table["on_front"] | ~table["clearly_dominated"])]
    if table.empty:
        return "<p>No finished search trial.</p>"
    table = table.sort_values(x, ascending=False).head(TOP_TRIALS)
    params = study.searched_params()
    other = "test" if split == "val" else "val"
    headers = [
        "trial",
        "front",
        *params,
        f"{split} stability",
        f"{split} plasticity",
        f"{split} ACC",
        f"{other} stability",
        f"{other} plasticity",
    ]
    rows = [
        [
            row["trial_id"],
            "front" if row["on_front"] else "within noise",
            *(row[f"hp_{p}"] for p in params),
            _pct(row, split, "stability"),
            _pct(row, split, "plasticity"),
            _pct(row, split, "acc"),
            _pct(row, other, "stability"),
            _pct(row, other, "plasticity"),
        ]
        for _, row in table.iterrows()
    ]
    note = (
        "<p>Pareto-front trials, and dominated trials whose ±1 std box overlaps a front point that"
        ' dominates them ("within noise"), most stable first.</p>'
    )
    return note + _table(headers, rows)


def _references(study: Study) -> str:
    rows = []
    for role in ("naive", "joint"):
        row = study.reference(role)
        if row is None:
            rows.append([role, "missing", "", "", "", "", ""])
            continue
        rows.append(
            [
                role,
                row["trial_id"],
                *(_pct(row, s, m) for s in ("val", "test") for m in ("stability", "plasticity", "acc")),
            ]
        )
    headers = [
        "reference",
        "trial",
        "val stability",
        "val plasticity",
        "val ACC",
        "test stability",
        "test plasticity",
        "test ACC",
    ]
    return (
        "<p>Naive fine-tuning is the floor for stability, joint training on all tasks seen so far the"
        " ceiling for both; neither is a candidate on the front.</p>" + _table(headers, rows)
    )


def _failed(study: Study) -> str:
    failed = study.trials[study.trials["status"] != "finished"]
    if failed.empty:
        return "<p>None: every trial finished.</p>"
    return _table(
        ["trial", "role", "status", "reason"],
        [[r["trial_id"], r["role"], r["status"], r["reason"]] for _, r in failed.iterrows()],
    )


def build_report(
    study: Study,
    *,
    objective: str | None = None,
    maximize: bool = True,
    constraints: Sequence[str] = (),
    split: str = "val",
) -> str:
    """The report's HTML.

    Args:
        study: The study.
        objective: Metric of the production choice; with ``constraints`` (or alone) the report
            includes the chosen setting. ``None`` and no constraints: no choice section.
        maximize: ``False`` to minimise ``objective``.
        constraints: Constraint strings, as for ``sweep choose``.
        split: Split the choice and the front are computed on.

    Returns:
        A complete HTML document.
    """
    choice: Choice | None = None
    if objective is not None or constraints:
        choice = choose(study, objective or "stability", constraints, split=split, maximize=maximize)
    warn, words = verdict(study, split)
    title = f"Study {study.name}: {study.setting('strategy')} on {study.setting('benchmark')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="verdict{" warn" if warn else ""}">{html.escape(words)}</p>',
        "<h2>Setup</h2>",
        _setup(study),
        f"<h2>Pareto front ({html.escape(split)})</h2>",
        _image(plots.plot_front(study, split=split), "Pareto front"),
        "<h2>Top trials</h2>",
        _top_trials(study, split),
        "<h2>References</h2>",
        _references(study),
    ]
    params = study.searched_params()
    parts.append("<h2>Sensitivity</h2>")
    if not params:
        parts.append("<p>No hyperparameter took more than one value among finished search trials.</p>")
    for param in params:
        parts.append(_image(plots.plot_sensitivity(study, param, split=split), f"sensitivity to {param}"))
    parts.append("<h2>Chosen setting</h2>")
    matrix_trial = None
    if choice is None:
        parts.append(
            "<p>No constraint given: run <code>sweep report STUDY --constraint ...</code> or"
            " <code>sweep choose</code> to add the production choice.</p>"
        )
    else:
        parts.append(f"<pre>{html.escape(format_choice(choice))}</pre>")
        if choice.feasible:
            import yaml

            config = yaml.safe_dump({"config": choice.config()}, sort_keys=False)
            parts.append(
                f"<p>As a training config (<code>sweep train --config FILE</code>):</p>"
                f"<pre>{html.escape(config)}</pre>"
            )
            matrix_trial = str(choice.trial["trial_id"]) if choice.trial is not None else None
    if matrix_trial is None:
        finished = study.finished("search")
        acc = pd.to_numeric(finished[schema.metric_column(split, "acc")], errors="coerce")
        if acc.notna().any():
            matrix_trial = str(finished.loc[acc.idxmax(), "trial_id"])
    if matrix_trial is not None and (study.accuracy["trial_id"].astype(str) == matrix_trial).any():
        label = (
            "the chosen trial"
            if choice is not None and choice.feasible
            else f"the trial with the best {split} ACC"
        )
        parts += [
            f"<h2>Accuracy matrix of {html.escape(label)} ({html.escape(matrix_trial)}, test)</h2>",
            _image(plots.plot_accuracy_matrix(study, matrix_trial, split="test"), "accuracy matrix"),
        ]
    parts += ["<h2>Errored and diverged trials</h2>", _failed(study)]
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    parts.append(
        f"<p><small>Generated {generated} by sweep report from {html.escape(str(study.path))}."
        f" Validation chose; test is reported only.</small></p></body></html>"
    )
    return "\n".join(parts)


def write_report(study: Study, path: str | os.PathLike[str] | None = None, **options: object) -> Path:
    """Write :func:`build_report` to ``path`` (default ``<study>/report.html``), atomically."""
    output = Path(path) if path is not None else study.path / "report.html"
    return write_atomic(output, build_report(study, **options))  # type: ignore[arg-type]
