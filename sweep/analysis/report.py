"""One self-contained HTML report of a study: opens in a browser from disk, no server, no network.

Plots are embedded as base64 PNG data URIs and the style sheet is inline, so the file can be
mailed or attached to a ticket as it is. Its tables are in :mod:`sweep.analysis.report_tables`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from sweep.analysis import pareto, plots
from sweep.analysis.choose import Choice, choose, format_choice, plain_scalar
from sweep.analysis.io import Study, write_atomic
from sweep.analysis.report_tables import (
    TOP_TRIALS,
    failed_table,
    pruned_table,
    references_table,
    setup_table,
    top_trials_table,
)
from sweep.results import schema

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DEFAULT_CONSTRAINT", "DEFAULT_OBJECTIVE", "TOP_TRIALS", "build_report", "headline", "recommendation",
           "report_choice", "verdict", "write_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.8em; white-space: pre-wrap; overflow-wrap: anywhere; max-width: 100%; }
.verdict { padding: 0.1em 1em; border-left: 4px solid #2a7; background: #f2fbf6; overflow-wrap: anywhere; }
.verdict.warn { border-color: #d80; background: #fff8ec; }
"""


def _image(fig: Figure, alt: str) -> str:
    data = base64.b64encode(plots.png_bytes(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


# the question a report answers when it is given none: the most stable setting that keeps 95% of naive's
# plasticity (the same 95% as `sweep run --objective constrained`'s default --min-plasticity)
DEFAULT_OBJECTIVE = "stability"
DEFAULT_CONSTRAINT = "plasticity >= 0.95 * naive"
_NO_TASK_ID_HELPERS = ("replay", "joint")  # what can help a shared head: old samples in the batches


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.1f}% ± {100 * std:.1f}"


def _front_summary(study: Study, split: str) -> str:
    """What the front shows: its ends in stability and plasticity, against naive's."""
    x, y = schema.metric_column(split, "stability"), schema.metric_column(split, "plasticity")
    table = pareto.front_table(study.trials, x, y)
    front = table[table["on_front"]].sort_values(x)
    if front.empty:
        return ""
    low, high = front.iloc[0], front.iloc[-1]
    naive = study.reference("naive")
    naive_y = f" (naive: {100 * float(naive[y]):.1f}%)" if naive is not None and pd.notna(naive[y]) else ""
    if len(front) == 1:
        return (
            f" One setting dominates every other one searched: trial {high['trial_id']},"
            f" stability {100 * float(high[x]):.1f}%, plasticity {100 * float(high[y]):.1f}%{naive_y}."
        )
    return (
        f" Along the front ({len(front)} trials) stability rises from {100 * float(low[x]):.1f}% to"
        f" {100 * float(high[x]):.1f}% while plasticity falls from {100 * float(low[y]):.1f}% to"
        f" {100 * float(high[y]):.1f}%{naive_y}: that is what each point of stability costs."
    )


def verdict(study: Study, split: str = "val") -> tuple[bool, str]:
    """The trade-off verdict in words: (is it a warning, text).

    Says whether any searched setting keeps old tasks better than naive fine-tuning beyond the noise
    and what the front shows; when none does, says why in terms of this study's strategy, scenario and
    references (naive already as good as joint: nothing to mitigate; one shared head in class-incremental
    form without replay; a search range or seed count too small) and what to try instead.
    """
    check = pareto.tradeoff_check(study, split)
    if check is None:
        return True, (
            "Cannot judge the trade-off: the study has no finished naive reference"
            " or no finished search trial."
        )
    strategy, scenario = study.setting("strategy"), study.setting("scenario")
    where = f"{study.setting('benchmark')}, {scenario}-incremental"
    best = (
        f"trial {check.best_trial_id} at {_pm(check.best_stability, check.best_stability_std)}"
        f" vs naive {_pm(check.naive_stability, check.naive_stability_std)}"
    )
    if check.has_tradeoff:
        return False, (
            f"Trade-off present: {strategy} keeps old tasks better than naive fine-tuning on {where},"
            f" beyond the noise (most stable: {best} {split} stability; noise margin"
            f" {100 * check.noise:.1f} points).{_front_summary(study, split)}"
        )
    return True, (
        f"No trade-off: no searched {strategy} setting keeps old tasks better than naive fine-tuning on"
        f" {where}, beyond the noise (best: {best} {split} stability; noise margin"
        f" {100 * check.noise:.1f} points). {_why_no_tradeoff(study, check, split)}"
    )


def _why_no_tradeoff(study: Study, check: pareto.TradeoffCheck, split: str) -> str:
    """The likeliest reason a study shows no trade-off, from its own references, scenario and strategy."""
    strategy, scenario = study.setting("strategy"), study.setting("scenario")
    components = set(strategy.replace(",", "+").replace(" ", "").split("+"))
    joint = study.reference("joint")
    column = schema.metric_column(split, "stability")
    if joint is not None and pd.notna(joint[column]) and float(joint[column]) - check.naive_stability <= check.noise:
        return (
            f"There is little forgetting to mitigate here: naive fine-tuning already keeps old tasks about as well"
            f" as joint training on every task seen so far ({100 * check.naive_stability:.1f}% vs"
            f" {100 * float(joint[column]):.1f}%). A harder sequence (more tasks, more epochs, a larger"
            f" learning rate, or --scenario domain) shows what a mitigation buys."
        )
    if scenario == "class" and not components & set(_NO_TASK_ID_HELPERS):
        return (
            f"In class-incremental form one head serves every class and no task id is given at test time, so the"
            f" new classes' logits win whatever {strategy} does to the weights; what usually helps here is replay:"
            f" a small class-balanced buffer of old-task samples mixed into each batch (make sweep STRATEGY=replay,"
            f" or STRATEGY={strategy.split('+')[0]}+replay)."
        )
    if "replay" in components:
        return "Replay is already in this strategy: widen its buffer size (replay_size), and check the learning" \
               " rate and epochs."
    seeds = ", ".join(sorted({str(v) for v in study.finished("search")["n_seeds"].dropna()})) or "?"
    return (
        f"Naive forgets ({100 * check.naive_stability:.1f}% stability"
        + (f" vs joint's {100 * float(joint[column]):.1f}%" if joint is not None and pd.notna(joint[column]) else "")
        + f"), but the searched settings did not help beyond the noise: widen the search space's ranges (a"
        f" stronger penalty), add seeds to shrink the noise ({seeds} per trial now), or try replay."
    )


def recommendation(study: Study, choice: Choice | None, *, default: bool, tradeoff: bool) -> str:
    """One sentence naming the recommended setting and the question it answers (the default one when
    ``default``); empty without a choice."""
    if choice is None:
        return ""
    asked = f"{'maximize' if choice.maximize else 'minimize'} {choice.split} {choice.objective}" + (
        f" subject to {'; '.join(r.constraint.text for r in choice.results)}" if choice.results else ""
    )
    asked = f"the default question, {asked}; ask another with --constraint" if default else asked
    if choice.trial is None:
        return f"Recommended setting ({asked}): none, the study has no finished search trial."
    trial = choice.trial
    hps = ", ".join(f"{p}={_short(trial[f'hp_{p}'])}" for p in study.searched_params() if pd.notna(trial[f"hp_{p}"]))
    columns = {m: (schema.metric_column(choice.split, m), schema.metric_column(choice.split, m, "std"))
               for m in ("stability", "plasticity")}
    numbers = ", ".join(f"{m} {_pm(float(trial[mean]), _nan0(trial[std]))}" for m, (mean, std) in columns.items())
    naive = choice.references.get("naive")
    against = (
        f" (naive: stability {100 * naive['stability']:.1f}%, plasticity {100 * naive['plasticity']:.1f}%)"
        if naive and "stability" in naive and "plasticity" in naive else ""
    )
    setting = f"trial {trial['trial_id']}" + (f" ({hps})" if hps else "")
    if not choice.feasible:
        return (f"Recommended setting ({asked}): none meets the constraint; the closest is {setting}, {numbers}"
                f"{against}.")
    caveat = "" if tradeoff else " It is within the noise of naive fine-tuning, which is as good a choice."
    return f"Recommended setting ({asked}): {setting}, {choice.split} {numbers}{against}.{caveat}"


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _nan0(value: object) -> float:
    """A std as a float; a missing one (a single seed) as 0."""
    number = plain_scalar(value)
    return float(number) if isinstance(number, (int, float)) and math.isfinite(number) else 0.0


def report_choice(
    study: Study, objective: str | None = None, maximize: bool = True, constraints: Sequence[str] = (),
    split: str = "val",
) -> tuple[Choice | None, bool]:
    """The choice a report shows, and whether it answers the default question (no objective or constraint
    given: :data:`DEFAULT_OBJECTIVE` under :data:`DEFAULT_CONSTRAINT`, when the study has a naive reference)."""
    default = objective is None and not constraints
    if not default:
        return choose(study, objective or DEFAULT_OBJECTIVE, constraints, split=split, maximize=maximize), False
    if study.reference("naive") is None:  # the default question is asked against naive
        return None, True
    return choose(study, DEFAULT_OBJECTIVE, [DEFAULT_CONSTRAINT], split=split), True


def headline(
    study: Study, *, objective: str | None = None, maximize: bool = True, constraints: Sequence[str] = (),
    split: str = "val",
) -> str:
    """The report's opening, as plain text (what ``sweep report`` prints): the verdict and the recommendation."""
    choice, default = report_choice(study, objective, maximize, constraints, split)
    warn, words = verdict(study, split)
    advice = recommendation(study, choice, default=default, tradeoff=not warn)
    return words + (f"\n{advice}" if advice else "")


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
        objective: Metric of the production choice, with ``constraints`` (or alone). ``None`` and no
            constraints: the default question, :data:`DEFAULT_OBJECTIVE` under :data:`DEFAULT_CONSTRAINT`
            (when the study has a naive reference), stated as such in the report.
        maximize: ``False`` to minimise ``objective``.
        constraints: Constraint strings, as for ``sweep choose``.
        split: Split the choice and the front are computed on.

    Returns:
        A complete HTML document.
    """
    choice, default = report_choice(study, objective, maximize, constraints, split)
    warn, words = verdict(study, split)
    advice = recommendation(study, choice, default=default, tradeoff=not warn)
    title = f"Study {study.name}: {study.setting('strategy')} on {study.setting('benchmark')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="verdict{" warn" if warn else ""}"><p>{html.escape(words)}</p>'
        + (f"<p><strong>{html.escape(advice)}</strong></p>" if advice else "")
        + "</div>",
        "<h2>Setup</h2>",
        setup_table(study),
        f"<h2>Pareto front ({html.escape(split)})</h2>",
        _image(plots.plot_front(study, split=split), "Pareto front"),
        "<h2>Top trials</h2>",
        top_trials_table(study, split),
        "<h2>References</h2>",
        references_table(study),
        *_sensitivity_section(study, split),
        *_choice_section(choice, default),
        *_matrix_section(study, choice, split),
        *(["<h2>Pruned trials</h2>", pruned] if (pruned := pruned_table(study)) else []),
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


def _choice_section(choice: Choice | None, default: bool = False) -> list[str]:
    """The production choice in words and, when feasible, as a training config."""
    parts = ["<h2>Chosen setting</h2>"]
    if choice is None:
        parts.append(
            "<p>No naive reference to state the default constraint against: run <code>sweep report STUDY"
            " --constraint ...</code> or <code>sweep choose</code> to add the production choice.</p>"
        )
        return parts
    if default:
        parts.append(
            f"<p>No constraint given, so the report answers the default question: the most stable setting"
            f" under <code>{html.escape(DEFAULT_CONSTRAINT)}</code> (keep 95% of naive's plasticity). Ask"
            " another with <code>sweep report STUDY --constraint ...</code> or <code>sweep choose</code>.</p>"
        )
    parts.append(f'<pre class="choice">{html.escape(format_choice(choice))}</pre>')
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
