"""The sensitivity plot: stability and plasticity against one hyperparameter (see :mod:`sweep.analysis.plots`)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sweep.analysis.drawing import finish, mean_std_columns, new_figure, percent, setting_title
from sweep.analysis.io import Study
from sweep.errors import ConfigError
from sweep.results import schema

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_METRIC_COLORS = (("stability", "tab:blue"), ("plasticity", "tab:orange"))
# one shade per group of ``by`` (a Fisher estimator, say): blues for stability, oranges for plasticity, so
# that groups differ in colour and line style, not in marker shape alone
_GROUP_SHADES = {
    "stability": ("tab:blue", "navy", "tab:cyan", "slateblue", "steelblue", "darkturquoise"),
    "plasticity": ("tab:orange", "firebrick", "goldenrod", "saddlebrown", "tomato", "darkkhaki"),
}
_GROUP_LINES = ("-", "--", ":", "-.")


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
    fig = new_figure()
    ax = fig.add_subplot()
    xs, log = _x_positions(ax, rows[f"hp_{name}"], name, log)
    searched = study.searched_params()
    by = _split_by(rows, searched, name, by)
    # connecting points is honest only when nothing else that was searched differs between them
    alone = set(searched) <= {name, by}
    _draw_metrics(ax, rows, xs, split, by, alone)
    _draw_naive(ax, study, split)
    if log:
        ax.set_xscale("log")
    note = (f" by {by}" if by is not None else "") + ("" if alone else " (other hyperparameters vary too)")
    ax.set_title(
        f"{setting_title(study)}\nsensitivity to {name}{note}, error bars ±1 std over seeds", fontsize=10
    )
    ax.set_xlabel(f"{name}" + (" (log scale)" if log else ""))
    ax.set_ylabel(f"accuracy, {split} (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return finish(fig, path)


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


def _x_positions(ax: Axes, raw: pd.Series, name: str, log: bool | None) -> tuple[pd.Series, bool]:
    """Each row's x, and whether the axis is logarithmic (``log`` None: when the values span > 2 decades)."""
    if not _categorical(raw):
        xs = pd.Series(pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float), index=raw.index)
        if log is None:
            log = bool(xs.min() > 0 and xs.max() / xs.min() > 100)
        if log and xs.min() <= 0:
            raise ConfigError(f"cannot draw {name} on a log axis: it has values <= 0")
        return xs, log
    # a categorical hyperparameter (optimizer, fisher, ...): one slot per value
    labels = sorted({str(v) for v in raw})
    ax.set_xticks(range(len(labels)), labels)
    return pd.Series([float(labels.index(str(v))) for v in raw], index=raw.index), False


def _split_by(rows: pd.DataFrame, searched: list[str], name: str, by: str | None) -> str | None:
    """The hyperparameter the points are grouped by: ``by``, or the one other categorical one searched."""
    if by is None:
        others = [p for p in searched if p != name and _categorical(rows[f"hp_{p}"])]
        return others[0] if len(others) == 1 else None
    if by.removeprefix("hp_") not in schema.HYPERPARAMETERS:
        raise ConfigError(f"unknown hyperparameter {by!r}: allowed are {', '.join(schema.HYPERPARAMETERS)}")
    return by.removeprefix("hp_")


def _draw_metrics(ax: Axes, rows: pd.DataFrame, xs: pd.Series, split: str, by: str | None, alone: bool) -> None:
    """Stability and plasticity of every row, one marker per value of ``by``; lines when ``alone``."""
    groups = [("", rows)] if by is None else list(rows.groupby(rows[f"hp_{by}"].astype(str), sort=True))
    for k, (group, members) in enumerate(groups):
        x = xs.loc[members.index].to_numpy()
        order = np.argsort(x, kind="stable")
        for metric, _ in _METRIC_COLORS:
            mean, std = mean_std_columns(split, metric)
            shades = _GROUP_SHADES[metric]
            ax.errorbar(
                x[order],
                percent(members, mean)[order],
                yerr=np.nan_to_num(percent(members, std)[order]),
                color=shades[k % len(shades)],
                marker="os^DvP<>"[k % 8],
                capsize=2,
                elinewidth=0.8,
                markersize=5,
                linestyle=_GROUP_LINES[k % len(_GROUP_LINES)] if alone else "none",
                linewidth=1,
                label=f"{metric} ({split})" + (f", {by}={group}" if by is not None else ""),
            )


def _draw_naive(ax: Axes, study: Study, split: str) -> None:
    """Naive's stability and plasticity as dashed horizontal lines, when the study has them."""
    naive = study.reference("naive")
    for metric, color in _METRIC_COLORS:
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
