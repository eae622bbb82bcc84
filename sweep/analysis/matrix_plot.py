"""The accuracy-matrix plot: one trial's R[t, i], mean and std over seeds (see :mod:`sweep.analysis.plots`)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from sweep.analysis.drawing import finish, new_figure
from sweep.analysis.io import Study
from sweep.errors import ResultsError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    fig = new_figure(1.6 + 1.3 * mean.shape[1], 1.4 + 0.8 * mean.shape[0])
    ax = fig.add_subplot()
    image = ax.imshow(mean.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    mean_values, std_values = mean.to_numpy(dtype=float), std.to_numpy(dtype=float)
    for r in range(mean.shape[0]):
        for c in range(mean.shape[1]):
            value, spread = float(mean_values[r, c]), float(std_values[r, c])
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
    return finish(fig, path)
