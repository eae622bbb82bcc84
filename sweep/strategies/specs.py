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

# which classes distillation covers and how it normalises them (sweep/strategies/distill.py, docs/reproductions.md)
DISTILL_VARIANTS = ("vandeven", "old-classes")
DISTILL_WEIGHTINGS = ("alpha", "task-count")
# what a field meant in a study made before the field existed, where that is not its default: a resumed study
# keeps its trials' meaning (sweep.tune.study.check_resume asks for the value as a flag)
LEGACY_VALUES = {"distill_variant": "old-classes"}

DISTILL: Block = {  # all are read only once a teacher exists (task 2 on)
    "distill_variant": dict(type=str, default="vandeven", choices=DISTILL_VARIANTS, first_task=2,
                            why="vandeven: the student's softmax over every class seen so far (the new task's "
                                "too; per past task in task-incremental form), the teacher's old-class targets padded "
                                "with 0, as van de Ven & Tolias' LwF; old-classes: both softmaxes over the old classes "
                                "only, which cannot stop new classes outranking old ones (this tool's before)"),
    "distill_weighting": dict(type=str, default="alpha", choices=DISTILL_WEIGHTINGS, first_task=2,
                              why="alpha: α·CE + (1 - α)·distillation; task-count: CE/t + (1 - 1/t)·distillation on "
                                  "task t, as van de Ven & Tolias (no α)"),
    "distill_temperature": dict(type=float, default=2.0, range="> 0", first_task=2,
                                why="LwF's softmax temperature T; 2 is the usual"),
    "distill_alpha": dict(type=float, default=0.5, range="[0, 1]", first_task=2,
                          active_when={"distill_weighting": "alpha"},
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

GENREPLAY_WEIGHTINGS = ("share", "task-count")
GENREPLAY_TARGETS = ("soft", "hard")

GENREPLAY: Block = {  # the generator is trained from task 1 on; it is replayed from task 2 on
    "genreplay_latent": dict(type=int, default=100, range="1..4096",
                             why="the VAE generator's latent size (100: van de Ven & Tolias's split-MNIST VAE)"),
    "genreplay_epochs": dict(type=int, default=5, range="0..1000",
                             why="epochs that train the generator alone after each task but the last (on the task "
                                 "and its own replay), on top of the steps it takes beside the classifier: a VAE "
                                 "needs many more steps than a classifier"),
    "genreplay_ratio": dict(type=float, default=0.5, range="[0, 0.95]", first_task=2,
                            why="share of each batch that is generated (0.5: as many generated samples as real "
                                "ones); also the replay term's weight unless genreplay_weighting is task-count"),
    "genreplay_temperature": dict(type=float, default=2.0, range="> 0", first_task=2,
                                  active_when={"genreplay_targets": "soft"},
                                  why="temperature T of the soft targets the previous model gives generated samples"),
    "genreplay_targets": dict(type=str, default="soft", choices=GENREPLAY_TARGETS, first_task=2,
                              why="soft: the previous model's softmax at genreplay_temperature, a T²·KL term "
                                  "(van de Ven & Tolias's DGR+distill); hard: its most likely class, a cross-entropy "
                                  "term (Shin et al.'s DGR)"),
    "genreplay_weighting": dict(type=str, default="share", choices=GENREPLAY_WEIGHTINGS, first_task=2,
                                why="share: (1 - r)·CE + r·replay term; task-count: CE/t + (1 - 1/t)·replay term on "
                                    "task t, as DGR (van de Ven & Tolias)"),
}

ADAPTER_MODES = ("merge", "per-task")

ADAPTER: Block = {  # task 1 trains the whole model; adapters exist from task 2 on
    "adapter_rank": dict(type=int, default=8, range="0..4096", first_task=2,
                         why="LoRA's rank r of each adapter (8: LoRA's usual); 0: no adapters, plain fine-tuning"),
    "adapter_alpha": dict(type=float, default=16.0, range="> 0", first_task=2,
                          why="LoRA's α: an adapter adds (α/r)·B A to its layer's weight (16 with r = 8: scale 2)"),
    "adapter_layers": dict(type=str, default="body", first_task=2, pattern=LAYER_LIST,
                           names="all, body (every layer but the head), or comma-separated layers as frozen_layers "
                                 "counts them, each a 0-based index (negative from the end) or a name",
                           why="the layers whose Linear and Conv2d get adapters; the others are frozen, except the "
                               "head, which trains fully unless listed"),
    "adapter_mode": dict(type=str, default="merge", choices=ADAPTER_MODES, first_task=2,
                         why="merge: each task's adapter is folded into the weights after it; per-task: each task "
                             "keeps its adapter and head (task-incremental: no forgetting; class and domain: each "
                             "sample routed to the most confident task)"),
}

SI: Block = {
    "si_c": dict(type=float, default=100.0, range=">= 0", first_task=2,  # scales a penalty from task 2 on
                 why="SI's strength c of the penalty c·Σ Ω (θ − θ*)²; only meaningful next to Ω's scale (reported "
                     "with results). 100 with ξ = 0.1 is Zenke et al.'s c/ξ = 1000; Hsu et al. use 300"),
    "si_xi": dict(type=float, default=0.1, range="> 0",
                  why="SI's damping ξ in Ω += ω / (Δθ² + ξ), Δθ a task's total change of the weight (0.1: "
                      "Hsu et al.'s and van de Ven's code)"),
}

MAS: Block = {
    "mas_lambda": dict(type=float, default=1.0, range=">= 0", first_task=2,  # scales a penalty from task 2 on
                       why="MAS's λ of the penalty λ·Σ Ω (θ − θ*)²; only meaningful next to Ω's scale (reported "
                           "with results); 1 as Aljundi et al. and Hsu et al."),
    "mas_samples": dict(type=int, default=None, range=">= 1", nullable=True,
                        why="training samples MAS's importance averages over after each task; none: every one"),
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
    "si": SI,
    "mas": MAS,
    "adapter": ADAPTER,
    "genreplay": GENREPLAY,
}
# built beside any strategy whenever its knob is set (``strategy_components``): its rows are every strategy's
EVERY_STRATEGY = ("freeze",)
