"""One self-contained HTML report of a study: opens in a browser from disk, no server, no network.

Plots are embedded as base64 PNG data URIs and the style sheet is inline, so the file can be
mailed or attached to a ticket as it is. Its tables are in :mod:`sweep.analysis.report_tables`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from sweep.analysis import pareto, plots
from sweep.analysis.choose import Choice, choose, format_choice
from sweep.analysis.io import Study, write_atomic
from sweep.analysis.report_tables import TOP_TRIALS, failed_table, references_table, setup_table, top_trials_table
from sweep.results import schema

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["TOP_TRIALS", "build_report", "verdict", "write_report"]

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


def _image(fig: Figure, alt: str) -> str:
    data = base64.b64encode(plots.png_bytes(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


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
        setup_table(study),
        f"<h2>Pareto front ({html.escape(split)})</h2>",
        _image(plots.plot_front(study, split=split), "Pareto front"),
        "<h2>Top trials</h2>",
        top_trials_table(study, split),
        "<h2>References</h2>",
        references_table(study),
        *_sensitivity_section(study, split),
        *_choice_section(choice),
        *_matrix_section(study, choice, split),
        "<h2>Errored and diverged trials</h2>",
        failed_table(study),
    ]
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    parts.append(
        f"<p><small>Generated {generated} by sweep report from {html.escape(str(study.path))}."
        f" Validation chose; test is reported only.</small></p></body></html>"
    )
    return "\n".join(parts)


def _sensitivity_section(study: Study, split: str) -> list[str]:
    """One sensitivity plot per searched hyperparameter."""
    params = study.searched_params()
    parts = ["<h2>Sensitivity</h2>"]
    if not params:
        parts.append("<p>No hyperparameter took more than one value among finished search trials.</p>")
    for param in params:
        parts.append(_image(plots.plot_sensitivity(study, param, split=split), f"sensitivity to {param}"))
    return parts


def _choice_section(choice: Choice | None) -> list[str]:
    """The production choice in words and, when feasible, as a training config."""
    parts = ["<h2>Chosen setting</h2>"]
    if choice is None:
        parts.append(
            "<p>No constraint given: run <code>sweep report STUDY --constraint ...</code> or"
            " <code>sweep choose</code> to add the production choice.</p>"
        )
        return parts
    parts.append(f"<pre>{html.escape(format_choice(choice))}</pre>")
    if choice.feasible:
        import yaml

        config = yaml.safe_dump({"config": choice.config()}, sort_keys=False)
        parts.append(
            f"<p>As a training config (<code>sweep train --config FILE</code>):</p>"
            f"<pre>{html.escape(config)}</pre>"
        )
    return parts


def _matrix_section(study: Study, choice: Choice | None, split: str) -> list[str]:
    """The accuracy matrix of the chosen trial, else of the trial with the best ACC; none without one."""
    matrix_trial = None
    if choice is not None and choice.feasible:
        matrix_trial = str(choice.trial["trial_id"]) if choice.trial is not None else None
    if matrix_trial is None:
        finished = study.finished("search")
        acc = pd.to_numeric(finished[schema.metric_column(split, "acc")], errors="coerce")
        if acc.notna().any():
            # pandas-stubs types idxmax's label Hashable, which .loc's overloads do not take
            matrix_trial = str(finished.loc[acc.idxmax(), "trial_id"])  # type: ignore[index]
    if matrix_trial is None or not (study.accuracy["trial_id"].astype(str) == matrix_trial).any():
        return []
    label = "the chosen trial" if choice is not None and choice.feasible else f"the trial with the best {split} ACC"
    return [
        f"<h2>Accuracy matrix of {html.escape(label)} ({html.escape(matrix_trial)}, test)</h2>",
        _image(plots.plot_accuracy_matrix(study, matrix_trial, split="test"), "accuracy matrix"),
    ]


def write_report(study: Study, path: str | os.PathLike[str] | None = None, **options: Any) -> Path:
    """Write :func:`build_report` (``options``: its keyword arguments) to ``path`` (default
    ``<study>/report.html``), atomically."""
    output = Path(path) if path is not None else study.path / "report.html"
    return write_atomic(output, build_report(study, **options))
