"""Plots of a study: the Pareto front, sensitivity to a hyperparameter, an accuracy matrix, several fronts.

Every function builds a :class:`matplotlib.figure.Figure` without pyplot (no global backend, no
figure left open), saves it as PNG when given a path (atomically), and returns it. Accuracies are
stored as fractions and shown as percent. Matplotlib is imported inside the functions, so that
importing this module (the CLI builds its parser from it) stays cheap. The pieces the plots share
are in :mod:`sweep.analysis.drawing`; the sensitivity and accuracy-matrix plots have a module each
(:mod:`sweep.analysis.sensitivity_plot`, :mod:`sweep.analysis.matrix_plot`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from sweep.analysis import pareto
from sweep.analysis.drawing import (
    DPI,
    REFERENCE_STYLE,
    errorbar,
    finish,
    front_axes,
    new_figure,
    percent,
    png_bytes,
    seeds_text,
    setting_title,
    staircase,
)
from sweep.analysis.io import Study
from sweep.analysis.matrix_plot import plot_accuracy_matrix
from sweep.analysis.sensitivity_plot import plot_sensitivity
from sweep.results import schema

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DPI", "plot_accuracy_matrix", "plot_front", "plot_fronts", "plot_sensitivity", "png_bytes"]


def plot_front(
    study: Study, path: str | os.PathLike[str] | None = None, *, split: str = "val", annotate: bool = True
) -> Figure:
    """Every finished trial, the Pareto front highlighted and connected, the references, std error bars.

    Dominated trials whose spread overlaps a dominating front point (not clearly dominated) are
    drawn hollow: with this many seeds they are as good a choice as the front.

    Args:
        study: The study.
        path: PNG file to write, or ``None``.
        split: ``val`` (what the search optimised) or ``test``.
        annotate: Label front points with their trial ids.

    Returns:
        The figure.
    """
    x, y = schema.metric_column(split, "stability"), schema.metric_column(split, "plasticity")
    table = pareto.front_table(study.trials, x, y)
    shown = table[pareto.eligible(table, x, y)]
    fig = new_figure()
    ax = fig.add_subplot()
    _draw_trials(ax, shown, split, annotate)
    for role, style in REFERENCE_STYLE.items():
        reference = study.reference(role)
        if reference is not None:
            # drawn under the trials: a setting equal to naive (λ with no effect) must stay visible
            errorbar(ax, reference.to_frame().T, split, markersize=11, zorder=1, **style)
    _note_not_shown(ax, study)
    if shown.empty:
        ax.text(0.5, 0.5, "no finished search trial", transform=ax.transAxes, ha="center")
    ax.set_title(
        f"{setting_title(study)}\nPareto front on {split}: {len(shown)} finished trials,"
        f" error bars ±1 std over {seeds_text(study)} seeds",
        fontsize=10,
    )
    front_axes(ax, split)
    ax.legend(fontsize=8, loc="best")
    return finish(fig, path)


def _draw_trials(ax: Axes, shown: pd.DataFrame, split: str, annotate: bool) -> None:
    """The front (connected, optionally labelled), the dominated trials within noise of it, the others."""
    front = shown[shown["on_front"]]
    clear = shown[~shown["on_front"] & shown["clearly_dominated"]]
    close = shown[~shown["on_front"] & ~shown["clearly_dominated"]]
    if not clear.empty:
        errorbar(ax, clear, split, marker="o", color="tab:gray", alpha=0.6, markersize=5, label="dominated")
    if not close.empty:
        errorbar(
            ax,
            close,
            split,
            marker="o",
            color="tab:orange",
            markerfacecolor="none",
            markersize=6,
            label="dominated, but within ±1 std of the front",
        )
    if front.empty:
        return
    staircase(ax, front, split, color="tab:blue", linewidth=1.2, alpha=0.8)
    errorbar(ax, front, split, marker="o", color="tab:blue", markersize=7, label="Pareto front")
    if annotate:
        x, y = schema.metric_column(split, "stability"), schema.metric_column(split, "plasticity")
        # equal points are all on the front: one label listing them, not labels drawn over each other
        for (sx, py), ids in front.groupby([x, y])["trial_id"]:
            ax.annotate(
                ", ".join(map(str, ids)),
                (100 * float(sx), 100 * float(py)),  # type: ignore[arg-type]  # pandas-stubs: a key is Hashable
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
                zorder=5,
            )


def _note_not_shown(ax: Axes, study: Study) -> None:
    """A red note counting the search trials that did not finish, when there are any."""
    skipped = study.trials[(study.trials["role"] == "search") & (study.trials["status"] != "finished")]
    if skipped.empty:
        return
    counts = skipped["status"].value_counts()
    ax.text(
        0.01,
        0.01,
        "not shown: " + ", ".join(f"{n} {status}" for status, n in counts.items()),
        transform=ax.transAxes,
        fontsize=8,
        color="tab:red",
        va="bottom",
    )


def plot_fronts(
    studies: Sequence[Study],
    path: str | os.PathLike[str] | None = None,
    *,
    split: str = "val",
    ref: tuple[float, float] | None = None,
) -> Figure:
    """Several studies' fronts on one plot, with each study's hypervolume against one common reference.

    Args:
        studies: The studies (e.g. one per strategy, same benchmark and seeds).
        path: PNG file to write, or ``None``.
        split: ``val`` or ``test``.
        ref: Hypervolume reference; default as :func:`sweep.analysis.pareto.comparison_table`.

    Returns:
        The figure.
    """
    x, y = schema.metric_column(split, "stability"), schema.metric_column(split, "plasticity")
    table = pareto.comparison_table(studies, split, ref)
    volumes = dict(zip(table["study"], table["hypervolume"]))
    combined = pareto.fronts(studies, split)
    fig = new_figure(8.0, 5.5)
    ax = fig.add_subplot()
    for k, study in enumerate(studies):
        rows = combined[(combined["study"] == study.name) & pareto.eligible(combined, x, y)]
        _draw_study(ax, study, rows, split, f"C{k % 10}", volumes)
    best = combined[combined["on_combined_front"]]
    if not best.empty:
        staircase(ax, best, split, color="black", linestyle=":", linewidth=1, label="front of all studies")
    ref_x = float(table["ref_stability"].iloc[0])
    ax.axvline(
        100 * ref_x,
        color="gray",
        linestyle="--",
        linewidth=0.8,
        label=f"hypervolume reference: stability {100 * ref_x:.1f}%, plasticity 0%",
    )
    settings = {(s.setting("benchmark"), s.setting("scenario")) for s in studies}
    where = (
        f"{next(iter(settings))[0]}, {next(iter(settings))[1]}-incremental"
        if len(settings) == 1
        else "DIFFERENT benchmarks or scenarios: not a fair comparison"
    )
    ax.set_title(
        f"Pareto fronts on {split} ({where})\nX: each study's naive reference; faint dots: dominated trials",
        fontsize=10,
    )
    front_axes(ax, split)
    ax.legend(fontsize=8, loc="best")
    return finish(fig, path)


def _draw_study(
    ax: Axes, study: Study, rows: pd.DataFrame, split: str, color: str, volumes: dict[str, float]
) -> None:
    """One study of :func:`plot_fronts`: its trials faint, its front with its hypervolume, its naive reference."""
    x, y = schema.metric_column(split, "stability"), schema.metric_column(split, "plasticity")
    ax.scatter(percent(rows, x), percent(rows, y), s=12, color=color, alpha=0.25)
    front = rows[rows["on_front"]]
    if not front.empty:
        staircase(ax, front, split, color=color, linewidth=1.5)
        errorbar(
            ax,
            front,
            split,
            marker="o",
            color=color,
            markersize=6,
            label=f"{study.name} ({study.setting('strategy')}), hypervolume {volumes[study.name]:.4f}",
        )
    naive = study.reference("naive")
    if naive is not None:
        ax.scatter(  # hollow, so that the study's own points under it stay visible
            [100 * float(naive[x])],
            [100 * float(naive[y])],
            marker="X",
            s=80,
            facecolors="none",
            edgecolors=color,
            linewidths=1.2,
            zorder=3,
        )
