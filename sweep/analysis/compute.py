"""What a study's trials cost, counted exactly, and what stopping dominated trials (``--prune``) saved.

Compute is the samples passed through the model from task 2 on (training with replay, Fisher estimates,
evaluations), summed over seeds (``compute_samples``, sweep.results.schema). Task 1 is shared through the
prefix cache, so it is counted apart (``task1_samples``) and left out of the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class PruningSavings:
    trials: int  # search trials recorded
    pruned: int
    spent: float  # compute_samples of every search trial
    unpruned: float  # the same trials, each pruned one run to the end (estimated)

    @property
    def fraction(self) -> float:
        """The compute spent, as a fraction of running every trial to the end."""
        return self.spent / self.unpruned if self.unpruned else 1.0

    def sentence(self) -> str:
        return (f"pruning stopped {self.pruned} of {self.trials} search trials: the search used "
                f"{100 * self.fraction:.0f}% of the compute of running every one to the end "
                f"({self.spent:,.0f} of about {self.unpruned:,.0f} samples through the model from task 2 on; "
                "a pruned trial's remaining cost estimated from the finished trials' mean)")


def pruning_savings(trials: pd.DataFrame) -> PruningSavings | None:
    """None when no trial was pruned, or when the study has no compute counts or no finished trial to
    estimate a pruned trial's full cost from."""
    if "compute_samples" not in trials.columns:
        return None
    search = trials[trials["role"] == "search"]
    if "derived_from" in search.columns:  # free variants of a trial (an α grid) are not trials, and cost nothing
        search = search[search["derived_from"].isna()]
    pruned = search[search["status"] == "pruned"]
    finished = search[search["status"] == "finished"]["compute_samples"].dropna()
    if pruned.empty or finished.empty or search["compute_samples"].isna().all():
        return None
    full = float(finished.mean())
    spent = float(search["compute_samples"].fillna(0).sum())
    unpruned = spent + float((full - pruned["compute_samples"].fillna(0)).clip(lower=0).sum())
    return PruningSavings(len(search), len(pruned), spent, unpruned)
