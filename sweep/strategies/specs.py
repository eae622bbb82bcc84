"""Each strategy's own hyperparameters: one block per strategy, torch-free, importing nothing of the package.

A block maps a config field to its row of the hyperparameter table (the keyword arguments of
:class:`sweep.hparams.HParam`: type, default, why, range or choices, the first task it acts on);
:mod:`sweep.hparams` collects them into the one table that ``TrainConfig``, the flags, the
``hp_*`` columns and the search-space checks are derived from. A strategy is built from the
config fields its block names (:meth:`sweep.strategies.base.Strategy.from_config`), so its
constructor's keyword arguments are exactly these names and its defaults are these.

``first_task=2`` says the field cannot change the state after task 1, so trials that differ only
in it share that state (the task-prefix cache leaves it out of its key): claim it only when the
strategy provably reads the field from task 2 on (tests/test_strategies.py checks every claim).
"""

from __future__ import annotations

from typing import Any

# a block: config field -> HParam's keyword arguments
Block = dict[str, dict[str, Any]]

FISHER_ESTIMATORS = ("exact", "sampled", "empirical", "batched")
EWC_MODES = ("separate", "online")

EWC: Block = {
    "ewc_lambda": dict(type=float, default=100.0, range=">= 0", first_task=2,  # scales a penalty from task 2 on
                       why="EWC's λ, the penalty's weight; only meaningful next to the Fisher's scale "
                           "(reported with results)"),
    "fisher": dict(type=str, default="exact", choices=FISHER_ESTIMATORS,
                   why="the diagonal Fisher estimator; batched is cheap and biased (its λ lives on another scale)"),
    "fisher_samples": dict(type=int, default=None, range=">= 1", nullable=True,
                           why="samples the Fisher averages over; none: every training sample of the task"),
    "ewc_mode": dict(type=str, default="separate", choices=EWC_MODES,
                     why="separate: one (F, θ*) per past task; online: F <- γF + F_new"),
    "ewc_gamma": dict(type=float, default=1.0, range="[0, 1]", active_when={"ewc_mode": "online"},
                      why="online EWC's decay of the past Fisher; 1 keeps all of it"),
}

DISTILL: Block = {  # both are read only once a teacher exists (task 2 on)
    "distill_temperature": dict(type=float, default=2.0, range="> 0", first_task=2,
                                why="LwF's softmax temperature T; 2 is the usual"),
    "distill_alpha": dict(type=float, default=0.5, range="[0, 1]", first_task=2,
                          why="weight α of the new task's cross-entropy; 1 - α goes to distillation"),
}

REPLAY: Block = {
    "replay_size": dict(type=int, default=500, range=">= 0",
                        why="M, samples in the class-balanced buffer (indices, in memory only)"),
    "replay_ratio": dict(type=float, default=0.5, range="[0, 1)", first_task=2,  # mixing starts once M is filled
                         why="share of each training batch drawn from the buffer"),
}

L2SP: Block = {
    "l2sp_lambda": dict(type=float, default=1.0, range=">= 0", first_task=2,  # scales a penalty from task 2 on
                        why="λ of the L2 penalty toward the weights after the previous task"),
}

FREEZE: Block = {
    "frozen_layers": dict(type=int, default=0, range=">= 0", first_task=2,  # nothing is frozen on task 1
                          why="the first k parametrised layers stop learning from task 2 on (with any strategy)"),
}

# every registered strategy, with its block (the references have none)
STRATEGY_ROWS: dict[str, Block] = {
    "naive": {},
    "joint": {},
    "ewc": EWC,
    "distill": DISTILL,
    "replay": REPLAY,
    "l2sp": L2SP,
    "freeze": FREEZE,
}
# built beside any strategy whenever its knob is set (``strategy_components``): its rows are every strategy's
EVERY_STRATEGY = ("freeze",)
