"""Plots of a study: the Pareto front, sensitivity to a hyperparameter, an accuracy matrix, several fronts.

Every function builds a :class:`matplotlib.figure.Figure` without pyplot (no global backend, no
figure left open), saves it as PNG when given a path (atomically), and returns it. Accuracies are
stored as fractions and shown as percent. Matplotlib is imported inside the functions, so that
importing this module (the CLI builds its parser from it) stays cheap.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sweep.analysis import pareto
from sweep.analysis.io import Study, write_atomic
from sweep.errors import ConfigError, ResultsError
from sweep.results import schema

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
_REFERENCE_STYLE = {
    "naive": {"marker": "X", "color": "black", "label": "naive fine-tuning (reference)"},
    "joint": {"marker": "*", "color": "tab:green", "label": "joint training (reference)"},
}


def _figure(width: float = 7.0, height: float = 5.0) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (for embedding in HTML or ``IPython.display.Image``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _finish(fig: Figure, path: str | os.PathLike[str] | None) -> Figure:
    if path is not None:
        write_atomic(path, png_bytes(fig))
    return fig


def _columns(split: str, metric: str) -> tuple[str, str]:
    return schema.metric_column(split, metric), schema.metric_column(split, metric, "std")


def _pct(frame: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return 100.0 * values


def _errorbar(ax: Axes, frame: pd.DataFrame, split: str, **style: object) -> None:
    (x, sx), (y, sy) = _columns(split, "stability"), _columns(split, "plasticity")
    ax.errorbar(
        _pct(frame, x),
        _pct(frame, y),
        xerr=np.nan_to_num(_pct(frame, sx)),
        yerr=np.nan_to_num(_pct(frame, sy)),
        linestyle="none",
        capsize=2,
        elinewidth=0.8,
        **style,
    )


def _staircase(ax: Axes, frame: pd.DataFrame, split: str, **style: object) -> None:
    """The front's attainment line: points sorted by stability, stepping down in plasticity."""
    x, y = schema.metric_column(split, "stability"), schema.metric_column(split, "plasticity")
    ordered = frame.sort_values([x, y], ascending=[True, False])
    ax.plot(_pct(ordered, x), _pct(ordered, y), drawstyle="steps-pre", **style)


def _setting_title(study: Study) -> str:
    return (
        f"{study.name}: {study.setting('strategy')} on {study.setting('benchmark')},"
        f" {study.setting('scenario')}-incremental"
    )


def _seeds(study: Study) -> str:
    values = sorted({int(v) for v in study.finished(None)["n_seeds"].dropna()})
    return "/".join(map(str, values)) or "?"


def _axis_labels(ax: Axes, split: str) -> None:
    ax.set_xlabel(f"stability: old-task accuracy after the last task, {split} (%)")
    ax.set_ylabel(f"plasticity: new-task accuracy, {split} (%)")
    ax.grid(True, alpha=0.3)


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
    front = shown[shown["on_front"]]
    clear = shown[~shown["on_front"] & shown["clearly_dominated"]]
    close = shown[~shown["on_front"] & ~shown["clearly_dominated"]]
    fig = _figure()
    ax = fig.add_subplot()
    if not clear.empty:
        _errorbar(ax, clear, split, marker="o", color="tab:gray", alpha=0.6, markersize=5, label="dominated")
    if not close.empty:
        _errorbar(
            ax,
            close,
            split,
            marker="o",
            color="tab:orange",
            markerfacecolor="none",
            markersize=6,
            label="dominated, but within ±1 std of the front",
        )
    if not front.empty:
        _staircase(ax, front, split, color="tab:blue", linewidth=1.2, alpha=0.8)
        _errorbar(ax, front, split, marker="o", color="tab:blue", markersize=7, label="Pareto front")
        if annotate:
            # equal points are all on the front: one label listing them, not labels drawn over each other
            for (sx, py), ids in front.groupby([x, y])["trial_id"]:
                ax.annotate(
                    ", ".join(map(str, ids)),
                    (100 * float(sx), 100 * float(py)),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                    zorder=5,
                )
    for role, style in _REFERENCE_STYLE.items():
        reference = study.reference(role)
        if reference is not None:
            # drawn under the trials: a setting equal to naive (λ with no effect) must stay visible
            _errorbar(ax, reference.to_frame().T, split, markersize=11, zorder=1, **style)
    skipped = study.trials[(study.trials["role"] == "search") & (study.trials["status"] != "finished")]
    if not skipped.empty:
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
    if shown.empty:
        ax.text(0.5, 0.5, "no finished search trial", transform=ax.transAxes, ha="center")
    ax.set_title(
        f"{_setting_title(study)}\nPareto front on {split}: {len(shown)} finished trials,"
        f" error bars ±1 std over {_seeds(study)} seeds",
        fontsize=10,
    )
    _axis_labels(ax, split)
    ax.legend(fontsize=8, loc="best")
    return _finish(fig, path)


def _param_values(study: Study, param: str) -> tuple[str, pd.DataFrame]:
    name = param.removeprefix("hp_")
    if name not in schema.HYPERPARAMETERS:
        raise ConfigError(
            f"unknown hyperparameter {param!r}: allowed are {', '.join(schema.HYPERPARAMETERS)}"
        )
    rows = study.finished("search")
    rows = rows[rows[f"hp_{name}"].notna()]
    if rows.empty:
        searched = ", ".join(study.searched_params()) or "none"
        raise ConfigError(f"study {study.name} has no finished trial with {name}; searched: {searched}")
    return name, rows


def _categorical(values: pd.Series) -> bool:
    return bool(pd.to_numeric(values.dropna(), errors="coerce").isna().any())


def plot_sensitivity(
    study: Study,
    param: str = "ewc_lambda",
    path: str | os.PathLike[str] | None = None,
    *,
    log: bool | None = None,
    split: str = "val",
    by: str | None = None,
) -> Figure:
    """Stability and plasticity against one hyperparameter, with ±1 std error bars and naive as lines.

    Args:
        study: The study.
        param: Hyperparameter name, with or without ``hp_``.
        path: PNG file to write, or ``None``.
        log: Log x axis; ``None`` chooses it when the values are positive and span more than 2 decades.
        split: ``val`` or ``test``.
        by: A categorical hyperparameter to split the points by (one marker each); ``None`` picks the
            one categorical hyperparameter searched besides ``param``, if there is exactly one. This
            matters for EWC: each Fisher estimator puts λ on its own scale.

    Returns:
        The figure.

    Raises:
        ConfigError: unknown hyperparameter, or no finished trial has a value for it.
    """
    name, rows = _param_values(study, param)
    raw = rows[f"hp_{name}"]
    numeric = pd.to_numeric(raw, errors="coerce")
    fig = _figure()
    ax = fig.add_subplot()
    if not _categorical(raw):
        xs = pd.Series(numeric.to_numpy(dtype=float), index=rows.index)
        if log is None:
            log = bool(xs.min() > 0 and xs.max() / xs.min() > 100)
        if log and xs.min() <= 0:
            raise ConfigError(f"cannot draw {name} on a log axis: it has values <= 0")
    else:  # a categorical hyperparameter (optimizer, fisher, ...): one slot per value
        labels = sorted({str(v) for v in raw})
        xs = pd.Series([float(labels.index(str(v))) for v in raw], index=rows.index)
        ax.set_xticks(range(len(labels)), labels)
        log = False
    searched = study.searched_params()
    if by is None:
        others = [p for p in searched if p != name and _categorical(rows[f"hp_{p}"])]
        by = others[0] if len(others) == 1 else None
    elif by.removeprefix("hp_") not in schema.HYPERPARAMETERS:
        raise ConfigError(f"unknown hyperparameter {by!r}: allowed are {', '.join(schema.HYPERPARAMETERS)}")
    by = by.removeprefix("hp_") if by is not None else None
    groups = [("", rows)] if by is None else list(rows.groupby(rows[f"hp_{by}"].astype(str), sort=True))
    # connecting points is honest only when nothing else that was searched differs between them
    alone = set(searched) <= {name, by}
    for k, (group, members) in enumerate(groups):
        x = xs.loc[members.index].to_numpy()
        order = np.argsort(x, kind="stable")
        for metric, color in (("stability", "tab:blue"), ("plasticity", "tab:orange")):
            mean, std = _columns(split, metric)
            ax.errorbar(
                x[order],
                _pct(members, mean)[order],
                yerr=np.nan_to_num(_pct(members, std)[order]),
                color=color,
                marker="os^DvP<>"[k % 8],
                capsize=2,
                elinewidth=0.8,
                markersize=5,
                linestyle="-" if alone else "none",
                linewidth=1,
                label=f"{metric} ({split})" + (f", {by}={group}" if by is not None else ""),
            )
    naive = study.reference("naive")
    for metric, color in (("stability", "tab:blue"), ("plasticity", "tab:orange")):
        mean = schema.metric_column(split, metric)
        if naive is not None and math.isfinite(float(naive[mean])):
            ax.axhline(
                100 * float(naive[mean]),
                color=color,
                linestyle="--",
                linewidth=1,
                alpha=0.7,
                label=f"naive {metric}",
            )
    if log:
        ax.set_xscale("log")
    note = (f" by {by}" if by is not None else "") + ("" if alone else " (other hyperparameters vary too)")
    ax.set_title(
        f"{_setting_title(study)}\nsensitivity to {name}{note}, error bars ±1 std over seeds", fontsize=10
    )
    ax.set_xlabel(f"{name}" + (" (log scale)" if log else ""))
    ax.set_ylabel(f"accuracy, {split} (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _finish(fig, path)


def plot_accuracy_matrix(
    study: Study, trial_id: str, path: str | os.PathLike[str] | None = None, *, split: str = "test"
) -> Figure:
    """The trial's accuracy matrix R[t, i] (mean over seeds, ±std) as an annotated heatmap.

    Row ``init`` is the untrained model (the baseline of FWT); row ``after task t`` is the model
    after training through task t; column i is the task evaluated.

    Raises:
        ResultsError: the accuracy file has no rows for this trial and split.
    """
    accuracy = study.accuracy
    rows = accuracy[(accuracy["trial_id"].astype(str) == str(trial_id)) & (accuracy["split"] == split)]
    if rows.empty:
        raise ResultsError(f"{study.path / 'accuracy.parquet'} has no {split} rows for trial {trial_id}")
    stats = rows.groupby(["after_task", "eval_task"])["accuracy"].agg(["mean", "std"])
    mean = 100 * stats["mean"].unstack("eval_task").sort_index()
    std = 100 * stats["std"].unstack("eval_task").reindex_like(mean)
    n_seeds = rows["seed"].nunique()
    fig = _figure(1.6 + 1.3 * mean.shape[1], 1.4 + 0.8 * mean.shape[0])
    ax = fig.add_subplot()
    image = ax.imshow(mean.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for r in range(mean.shape[0]):
        for c in range(mean.shape[1]):
            value, spread = float(mean.iat[r, c]), float(std.iat[r, c])
            if not math.isfinite(value):
                continue
            text = f"{value:.1f}" + (f"\n±{spread:.1f}" if n_seeds > 1 and math.isfinite(spread) else "")
            ax.text(
                c, r, text, ha="center", va="center", fontsize=8, color="black" if value > 60 else "white"
            )  # readable on viridis' light and dark ends
    ax.set_xticks(range(mean.shape[1]), [f"task {int(i)}" for i in mean.columns])
    ax.set_yticks(
        range(mean.shape[0]), ["init" if int(t) == 0 else f"after task {int(t)}" for t in mean.index]
    )
    ax.set_xlabel("evaluated on task i")
    ax.set_ylabel("trained through task t")
    fig.colorbar(image, ax=ax, label=f"accuracy, {split} (%)")
    ax.set_title(
        f"{study.name}: trial {trial_id}\nR[t, i] on {split}, mean ± std of {n_seeds} seeds", fontsize=10
    )
    return _finish(fig, path)


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
    fig = _figure(8.0, 5.5)
    ax = fig.add_subplot()
    for k, study in enumerate(studies):
        color = f"C{k % 10}"
        rows = combined[(combined["study"] == study.name) & pareto.eligible(combined, x, y)]
        ax.scatter(_pct(rows, x), _pct(rows, y), s=12, color=color, alpha=0.25)
        front = rows[rows["on_front"]]
        if not front.empty:
            _staircase(ax, front, split, color=color, linewidth=1.5)
            _errorbar(
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
            ax.scatter(
                [100 * float(naive[x])],
                [100 * float(naive[y])],
                marker="X",
                s=80,
                color=color,
                edgecolors="black",
                linewidths=0.5,
            )
    best = combined[combined["on_combined_front"]]
    if not best.empty:
        _staircase(ax, best, split, color="black", linestyle=":", linewidth=1, label="front of all studies")
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
    _axis_labels(ax, split)
    ax.legend(fontsize=8, loc="best")
    return _finish(fig, path)
