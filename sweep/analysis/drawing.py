"""What every plot of :mod:`sweep.analysis.plots` shares: a figure without pyplot, PNG output, percent axes.

Matplotlib is imported inside the functions, so that importing this module stays cheap.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sweep.analysis.io import Study, write_atomic
from sweep.results import schema

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
# hollow: a trial at the reference's point (a setting with no effect) stays visible through it
REFERENCE_STYLE = {
    "naive": {"marker": "X", "color": "black", "markerfacecolor": "none", "markeredgewidth": 1.2,
              "label": "naive fine-tuning (reference)"},
    "joint": {"marker": "*", "color": "tab:green", "markerfacecolor": "none", "markeredgewidth": 1.2,
              "label": "joint training (reference)"},
}


def new_figure(width: float = 7.0, height: float = 5.0) -> Figure:
    """A figure of its own (no global pyplot state, nothing left open)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (for embedding in HTML or ``IPython.display.Image``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def finish(fig: Figure, path: str | os.PathLike[str] | None) -> Figure:
    """Write ``fig`` as PNG to ``path`` (atomically) when given; return it."""
    if path is not None:
        write_atomic(path, png_bytes(fig))
    return fig


def mean_std_columns(split: str, metric: str) -> tuple[str, str]:
    return schema.metric_column(split, metric), schema.metric_column(split, metric, "std")


def percent(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column of fractions as percent; anything not a number reads NaN."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return 100.0 * values


def errorbar(ax: Axes, frame: pd.DataFrame, split: str, **style: Any) -> None:  # style: matplotlib's keywords
    """Each row as a point (stability, plasticity) with ±1 std bars."""
    (x, sx), (y, sy) = mean_std_columns(split, "stability"), mean_std_columns(split, "plasticity")
    ax.errorbar(
        percent(frame, x),
        percent(frame, y),
        xerr=np.nan_to_num(percent(frame, sx)),
        yerr=np.nan_to_num(percent(frame, sy)),
        linestyle="none",
        capsize=2,
        elinewidth=0.8,
        **style,
    )


def staircase(ax: Axes, frame: pd.DataFrame, split: str, **style: Any) -> None:
    """The front's attainment line: points sorted by stability, stepping down in plasticity."""
    x, y = schema.metric_column(split, "stability"), schema.metric_column(split, "plasticity")
    ordered = frame.sort_values([x, y], ascending=[True, False])
    ax.plot(percent(ordered, x), percent(ordered, y), drawstyle="steps-pre", **style)


def setting_title(study: Study) -> str:
    return (
        f"{study.name}: {study.setting('strategy')} on {study.setting('benchmark')},"
        f" {study.setting('scenario')}-incremental"
    )


def seeds_text(study: Study) -> str:
    """The seed counts of the finished trials, e.g. "3" or "2/3"."""
    values = sorted({int(v) for v in study.finished(None)["n_seeds"].dropna()})
    return "/".join(map(str, values)) or "?"


def front_axes(ax: Axes, split: str) -> None:
    """Stability on x, plasticity on y, with a light grid."""
    ax.set_xlabel(f"stability: old-task accuracy after the last task, {split} (%)")
    ax.set_ylabel(f"plasticity: new-task accuracy, {split} (%)")
    ax.grid(True, alpha=0.3)
