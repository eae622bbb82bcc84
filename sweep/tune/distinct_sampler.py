"""A sampler that never spends a trial on a point its study already has (the sweep's NSGA-II).

NSGA-II's offspring copy each parameter from one of two parents and mutate each with probability 1/n: a
child is an exact copy of a parent often enough (3 to 6 of 48 trials on a 2-parameter space, seeds 0-2) to
spend a whole trial on a point already measured. TPE's ``constant_liar`` keeps TPE's proposals apart already.
Its own module, imported only by ``build_sampler``: Ray pickles the searcher with its sampler, so the class
must be importable by name, and Optuna is imported only when a sweep builds one.
"""

from __future__ import annotations

import threading
from typing import Any

import optuna

_LOCK = type(threading.Lock())
_MEASURED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


class DistinctSampler(optuna.samplers.BaseSampler):
    """``base``, except that a relative proposal equal to a trial the study already has (finished, pruned or
    running) is dropped, so every parameter of that trial is drawn independently (NSGA-II: at random) instead."""

    def __init__(self, base: optuna.samplers.BaseSampler) -> None:
        self.base = base

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        proposed = self.base.sample_relative(study, trial, search_space)
        if proposed:
            for other in study.get_trials(deepcopy=False, states=_MEASURED):
                if other.number != trial.number and other.params == proposed:
                    return {}
        return proposed

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.base.after_trial(study, trial, state, values)

    def __getstate__(self) -> dict[str, Any]:
        """Ray pickles the searcher with its sampler; Optuna 5.1's GA samplers (NSGA-II) hold a
        ``threading.Lock``, which cannot be pickled and which they do not leave out themselves: the base travels
        without its locks and gets new ones on arrival (a lock guards one process's threads only)."""
        state = vars(self.base)
        locks = [name for name, value in state.items() if isinstance(value, _LOCK)]
        return {"base_type": type(self.base), "locks": locks,
                "base": {name: value for name, value in state.items() if name not in locks}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        base = state["base_type"].__new__(state["base_type"])
        vars(base).update(state["base"])
        for name in state["locks"]:
            setattr(base, name, threading.Lock())
        self.base = base

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
