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

# layers as frozen_layers counts them: comma-separated 0-based indices (negative from the end) or names
LAYER_LIST = r"[^,\s]+(,[^,\s]+)*"

DISTILL: Block = {  # all are read only once a teacher exists (task 2 on)
    "distill_temperature": dict(type=float, default=2.0, range="> 0", first_task=2,
                                why="LwF's softmax temperature T; 2 is the usual"),
    "distill_alpha": dict(type=float, default=0.5, range="[0, 1]", first_task=2,
                          why="weight α of the new task's cross-entropy; 1 - α goes to distillation"),
    "feature_distill_weight": dict(type=float, default=0.0, range=">= 0", first_task=2,
                                   why="weight of feature distillation, the MSE between the student's and the "
                                       "teacher's outputs at feature_distill_layers (mean over layers); 0: off"),
    "feature_distill_layers": dict(type=str, default="-2", first_task=2, pattern=LAYER_LIST,
                                   names="comma-separated layers as frozen_layers counts them, each a 0-based "
                                         "index (negative from the end: -1 the head) or a name, e.g. -2 or 0,1",
                                   why="the layers whose outputs feature distillation matches; -2: the layer "
                                       "before the head, what the head reads"),
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

INTERP: Block = {  # interpolation acts when a task from task 2 on ends
    "interp_alpha": dict(type=float, default=0.5, range="[0, 1]", first_task=2,
                         why="WiSE-FT's α: after each task from task 2 on the weights become "
                             "(1 - α) θ_before + α θ_after; 0 keeps the previous task's weights, 1 the fine-tune's"),
    "interp_last_alpha": dict(type=float, default=None, range="[0, 1]", nullable=True, first_task=2,
                              why="α of the last task's interpolation (none: interp_alpha); a point of the free α "
                                  "grid is this value"),
    "interp_grid": dict(type=int, default=11, range="0..1001", first_task=2, kind="setting",
                        why="points of the free α grid from 0 to 1 evaluated after the last task, each a result "
                            "of its own at no training cost (0 or 1: none)"),
}

LPFT: Block = {  # the probing phase opens every task from task 2 on
    "lp_epochs": dict(type=int, default=1, range=">= 0", first_task=2,
                      why="LP-FT: epochs that train only the head at the start of each task from task 2 on, before "
                          "its epochs of fine-tuning every layer not frozen; 0: plain fine-tuning"),
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
    "interp": INTERP,
    "lpft": LPFT,
}
# built beside any strategy whenever its knob is set (``strategy_components``): its rows are every strategy's
EVERY_STRATEGY = ("freeze",)
