"""The tables of the HTML report (:mod:`sweep.analysis.report`): setup, top trials, references, failures."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd

from sweep.analysis import pareto
from sweep.analysis.io import Study
from sweep.results import schema

TOP_TRIALS = 15  # front and near-front trials shown in the table; the front plot shows all


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table; numbers right-aligned, missing values empty."""
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


def setup_table(study: Study) -> str:
    """The study's settings, trial counts, seeds and versions."""
    trials = study.trials
    search = trials[trials["role"] == "search"]
    derived = search[search[schema.DERIVED_COLUMN].notna()] if schema.DERIVED_COLUMN in search else search.iloc[:0]
    search = search.drop(derived.index)  # trials trained; their free variants (an α grid) are counted apart
    by_status = ", ".join(f"{(search['status'] == s).sum()} {s}" for s in schema.STATUSES)
    if len(derived):
        by_status += f"; and {len(derived)} points of their free α grids (no training of their own)"
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
    return html_table(["setting", "value"], rows)


def top_trials_table(study: Study, split: str) -> str:
    """The front and the trials within noise of it, most stable first."""
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
    return note + html_table(headers, rows)


def references_table(study: Study) -> str:
    """The naive and joint references on both splits."""
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
        "<p>Naive fine-tuning is the floor for stability; joint training on all tasks seen so far is the"
        " ceiling for stability, not for plasticity (it spends the same epochs on every task seen, so it may"
        " learn the new task less well than naive). Neither is a candidate on the front.</p>"
        + html_table(headers, rows)
    )


def failed_table(study: Study) -> str:
    """Every trial that errored or diverged, with why (pruned ones have a section of their own)."""
    failed = study.trials[~study.trials["status"].isin(["finished", "pruned"])]
    if failed.empty:
        return "<p>None.</p>"
    return html_table(
        ["trial", "role", "status", "reason"],
        [[r["trial_id"], r["role"], r["status"], r["reason"]] for _, r in failed.iterrows()],
    )


def pruned_table(study: Study) -> str:
    """The trials ``--prune`` stopped: where, what they had reached there (partial values, never on the
    front), and the compute the search saved."""
    from sweep.analysis.compute import pruning_savings

    trials = study.trials
    pruned = trials[trials["status"] == "pruned"]
    if pruned.empty:
        return ""
    savings = pruning_savings(trials)
    note = f"<p>{html.escape(savings.sentence())}.</p>" if savings is not None else ""
    rows = []
    for _, r in pruned.sort_values(["pruned_task", "pruned_epoch"], na_position="last").iterrows():
        epoch = r["pruned_epoch"]
        where = f"task {int(r['pruned_task'])} " + ("end" if pd.isna(epoch) else f"epoch {int(epoch)}")
        rows.append([r["trial_id"], where, _percent(r["partial_val_stability_mean"]),
                     _percent(r["partial_val_plasticity_mean"]), r["reason"]])
    return ("<p>Stopped at a rung because they were dominated there: their values are partial (the tasks and "
            "epochs reached), they are kept out of the front and of <code>sweep choose</code>.</p>" + note
            + html_table(["trial", "stopped at", "stability % there", "plasticity % there", "why"], rows))


def _percent(value: object) -> str:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    return "-" if number != number else f"{100 * number:.1f}"
