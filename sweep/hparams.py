"""The hyperparameter table: every config field, declared once (torch-free).

Each row (:class:`HParam`) gives a field's type, default, allowed values, whether it is a
hyperparameter or a setting, the first task it acts on and a one-line why. The data's, the
model's and the trainer's rows are here; each strategy's rows live beside the strategies in
:mod:`sweep.strategies.specs` and are collected here. Everything else is derived from this table:
``TrainConfig`` (:mod:`sweep.config`), the ``sweep train``/``pretrain``/``run`` flags and their
help, the ``hp_*`` Parquet columns and their types, ``sweep choose``'s types, the search-space
checks and the task-prefix cache key. :meth:`HParam.check` is the one check every way in shares,
so a config file, a search space's bounds and a flag refuse a bad value with the same line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sweep.errors import ConfigError, did_you_mean
from sweep.strategies.specs import EVERY_STRATEGY, EWC_MODES, FISHER_ESTIMATORS, STRATEGY_ROWS

HYPERPARAMETER = "hyperparameter"  # changes what a trial learns; may be searched; the column hp_<name>
SETTING = "setting"  # what a study asks (benchmark, model) or where and how it runs (seed, data root)

# class: one head, no task id at test time; task: logits restricted to the task's classes; domain: one
# label space shared by every task (see docs/design.md)
SCENARIOS = ("class", "task", "domain")
OPTIMIZERS = ("adam", "sgd")
# reset: a fresh optimizer every task; keep: each parameter's optimizer state carries from task to task
OPTIMIZER_STATES = ("reset", "keep")
CLASS_SHUFFLES = ("none", "per-seed")
CLASS_OUTPUTS = ("all", "seen")
LR_SCHEDULES = ("constant", "cosine")  # the learning rate of tasks 2..T after its warmup
# the built-in benchmarks and strategies, torch-free (the help lists them); tests keep them equal to
# sweep.data.benchmarks.BENCHMARKS and sweep.strategies.registry.STRATEGIES
STRATEGY_NAMES = tuple(STRATEGY_ROWS)
BENCHMARK_NAMES = ("split-digits", "split-mnist", "permuted-mnist", "mnist-fashion", "fashion-mnist", "split-cifar10",
                   "split-fashion")
MODELS = ("mlp", "cnn")
# torchvision architectures built with weights=None; frozen_layers counts stem, layer1..layer4, head
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50")
# "package.module:function": a user's builder, imported when the model or benchmark is built
ENTRY_POINT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
MAX_SEED = 2**32 - 1  # as build_benchmark's split_seed; beyond 2**64 - 1 torch raises a bare ValueError
MAX_HIDDEN = 65536  # a sanity bound: far above any MNIST-scale MLP, far below an allocation failure
__all__ = ["EWC_MODES", "FISHER_ESTIMATORS"]  # the strategies' choice lists, beside the others


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (None: unbounded); an open end leaves that bound out."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    text: str = ""  # as written in the table: "> 0", "[0, 1)", "0..4294967295"; messages quote it

    _FORMS = re.compile(r"^(?:(?P<op>>=|>|<=|<) *(?P<bound>\S+)|(?P<open>[\[(]) *(?P<low>[^,]+), *(?P<high>[^\])]+)"
                        r"(?P<close>[\])])|(?P<first>[-\d]+)\.\.(?P<last>[-\d]+))(?: +\((?P<note>.+)\))?$")

    @classmethod
    def parse(cls, text: str) -> Range:
        """``"> 0"``, ``">= 2 (forgetting needs two tasks)"``, ``"(0, 1]"``, ``"1..65536"`` (integers)."""
        m = cls._FORMS.match(text)
        if m is None:
            raise ValueError(f"range {text!r}: expected '> 0', '>= 1', '(0, 1]' or '1..10'")
        if m["op"]:
            bound = _number(m["bound"])
            if m["op"].startswith(">"):
                return cls(low=bound, low_open=m["op"] == ">", text=text)
            return cls(high=bound, high_open=m["op"] == "<", text=text)
        if m["open"]:
            return cls(_number(m["low"]), _number(m["high"]), m["open"] == "(", m["close"] == ")", text)
        return cls(int(m["first"]), int(m["last"]), text=text)

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        """``> 0``, ``in (0, 1]``, ``in 0..4294967295``: the text, read as words."""
        return self.text if self.text[0] in "<>" else f"in {self.text}"


def _number(text: str) -> float:
    return int(text) if re.fullmatch(r"-?\d+", text.strip()) else float(text)


@dataclass(frozen=True)
class HParam:
    """A config field, declared once: every view (TrainConfig, flags, columns, spaces) is derived from it.

    Attributes:
        name: The field's name (``ewc_lambda``); its flag is ``--ewc-lambda``, its column ``hp_ewc_lambda``.
        type: ``int``, ``float``, ``str`` or ``tuple`` (a tuple of ints: ``--hidden 400,400``).
        default: The value when nothing sets it.
        why: One line, what it is and why the default; the flag's help.
        owner: Who reads it: ``trainer``, ``data``, ``model`` or a strategy's name.
        kind: :data:`HYPERPARAMETER` or :data:`SETTING`.
        first_task: The first task it acts on. 2: it cannot change the state after task 1, so trials
            that differ only in it share that state (it is left out of the task-prefix cache key).
        range: Allowed numbers (a tuple's every entry), as ``"> 0"``, ``"[0, 1)"`` or ``"1..65536"``.
        choices: Allowed strings (empty: any).
        entry_point: A string may also be ``module:function`` (a user's builder).
        nullable: None is allowed (the why says what it means).
        min_len: A tuple's fewest entries.
        path: ``"file"`` or ``"folder"`` for a path on this machine (``~`` is expanded; a file's may
            not be empty); ``""`` otherwise.
        per_sweep: A setting given once per sweep on the command line, never in a (reusable) search space.
        recorded: False: left out of the results' config column (the seeds column has the seeds; a
            data root is a path on the machine that ran the sweep).
        names: What the help lists as allowed when the values are not :attr:`choices` (they are checked
            where they are built: a strategy may compose, a benchmark may be ``module:function``).
        active_when: Other fields' values this one needs to act at all (``{"ewc_mode": "online"}``:
            a value or a tuple of values per field); otherwise it is inert, and a search space that
            searches it while fixing those fields otherwise is refused.
    """

    name: str
    type: type
    default: Any
    why: str
    owner: str = "trainer"
    kind: str = HYPERPARAMETER
    first_task: int = 1
    range: str = ""
    choices: tuple[str, ...] = ()
    entry_point: bool = False
    nullable: bool = False
    min_len: int = 0
    path: str = ""
    per_sweep: bool = False
    recorded: bool = True
    active_when: dict[str, Any] = field(default_factory=dict, compare=False)
    names: str = ""  # the help's allowed values where they are not choices (a composed strategy, a benchmark)
    pattern: str = ""  # a string must match this regular expression, whole; names says in words what it allows
    bounds: Range | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.range:  # parsed once, when the table is built: a typo fails on import
            object.__setattr__(self, "bounds", Range.parse(self.range))
        object.__setattr__(self, "active_when", {name: tuple(v) if isinstance(v, (tuple, list)) else (v,)
                                                 for name, v in self.active_when.items()})

    def inert_because(self, values: Mapping[str, Any]) -> str | None:
        """Why this field cannot act when the other fields hold ``values`` (a field absent from them is
        not known: no reason); None when it may act."""
        for name, needed in self.active_when.items():
            if name in values and values[name] not in needed:
                wanted = " or ".join(repr(v) for v in needed)
                return f"{self.name} acts only when {name} is {wanted}, and {name} is {values[name]!r}"
        return None

    @property
    def annotation(self) -> Any:
        """The dataclass field's type: ``float``, ``float | None``, ``tuple[int, ...] | None``."""
        base: Any = tuple[int, ...] if self.type is tuple else self.type
        return base | None if self.nullable else base

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any, label: str | None = None) -> Any:
        """``value`` as the field holds it (lists become tuples, ints floats, ``~`` a home folder), or
        a one-line ConfigError naming the value and what is allowed.

        Args:
            value: The value to check.
            label: Names it in the message; default: the field's name (``--epochs`` for a flag).
        """
        label = label or self.name
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{label} may not be null")
        value = self._coerce(value, label)
        if self.type is tuple:
            if len(value) < self.min_len:
                raise ConfigError(f"{label} must list at least {self.min_len} value(s), got {list(value)}")
            if self.bounds is not None and not all(v in self.bounds for v in value):
                raise ConfigError(f"{label} values must each be {self.bounds.describe()}, got {list(value)}")
        elif self.type is str:
            if self.choices and value not in self.choices and not (self.entry_point and ENTRY_POINT.match(value)):
                raise ConfigError(f"{label} {value!r} is unknown; allowed: {self._choices_text()}"
                                  f"{did_you_mean(value, self.choices)}")
            if self.pattern and not re.fullmatch(self.pattern, value):
                raise ConfigError(f"{label} {value!r} is not allowed; allowed: {self.names}")
            if self.path == "file" and not value.strip():
                raise ConfigError(f"{label} must be a path to a file, got {value!r}")
            if self.path and value:
                value = os.path.expanduser(value)
        elif self.bounds is not None and value not in self.bounds:
            raise ConfigError(f"{label} must be {self.bounds.describe()}, got {value}")
        elif self.type is float and not math.isfinite(value):
            raise ConfigError(f"{label} must be a finite number, got {value}")
        return value

    def _coerce(self, value: Any, label: str) -> Any:
        if self.type is tuple and isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
            return tuple(int(v) for v in value)
        if self.type is float and (_is_int(value) or isinstance(value, float)):
            return float(value)
        if self.type is int and _is_int(value):
            return int(value)
        if self.type is str and isinstance(value, str):
            return value
        kind = "list of int" if self.type is tuple else self.type.__name__
        extra = " (YAML reads 1e-4 as a string: write 1.0e-4)" if isinstance(value, str) and _numeric(value) else ""
        if self.type is str and self.pattern and _is_int(value):
            extra = f" (quote it in YAML: '{value}')"
        raise ConfigError(f"{label} must be {kind}, got {value!r}{extra}")

    def _choices_text(self) -> str:
        return ", ".join(self.choices) + (", or module:function" if self.entry_point else "")

    def allowed(self) -> str:
        """What a value may be, in words: ``> 0``, ``one of adam, sgd``, ``comma-separated integers``."""
        if self.type is tuple:
            text = "comma-separated integers" + (f", each {self.bounds.describe()}" if self.bounds else "")
        elif self.choices:
            text = f"one of {self._choices_text()}"
        elif self.names:
            text = self.names
        elif self.bounds is not None:
            text = self.bounds.describe()
        elif self.path:
            text = f"a path to a {self.path}"
        else:
            text = {int: "an integer", float: "a number", str: "a name"}[self.type]
        return f"{text}, or none" if self.nullable else text

    def shown_default(self) -> str:
        if self.default is None:
            return "none"
        if isinstance(self.default, tuple):
            return ",".join(map(str, self.default))
        return str(self.default)

    def help(self, default: str | None = None) -> str:
        """A flag's help: the why, what is allowed, the default (``default`` replaces its text)."""
        return f"{self.why} ({self.allowed()}; default: {default or self.shown_default()})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _block(owner: str, rows: Iterable[HParam]) -> tuple[HParam, ...]:
    return tuple(dataclasses.replace(row, owner=owner) for row in rows)


# --- the rows: data, model, trainer, then each strategy's block; TrainConfig's fields in this order
_DATA = (
    HParam("benchmark", str, "split-digits", "the task sequence; split-digits (scikit-learn's 8x8 digits) needs no "
           "download, the others read or download torchvision's files", kind=SETTING, per_sweep=True,
           names=f"one of {', '.join(BENCHMARK_NAMES)}, or module:function"),
    HParam("scenario", str, "task", "class: one head, no task id at test; task: logits restricted to the task's "
           "classes, where EWC/LwF/L2-SP trade-offs show; domain: one shared label space", choices=SCENARIOS,
           kind=SETTING, per_sweep=True),
    # all by default: every study and cache entry so far was computed so, and a production model's head has every
    # class from the start; seen is what both published Split-MNIST codes do (van de Ven & Tolias's active_classes,
    # Hsu et al.'s valid_out_dim): the outputs of classes not seen yet take no part, neither pushed down by the loss
    # nor predicted (weight_decay > 0 still shrinks their weights, as it does in those codes)
    HParam("class_outputs", str, "all", "class-incremental: the outputs the loss and the accuracy run over; all: "
           "every class of the benchmark from task 1 on; seen: the classes of the tasks so far, as the published "
           "Split-MNIST codes do (task t's loss, Fisher and MAS norm, and after task t the accuracy of tasks 1..t, "
           "run over tasks 1..t's classes; a later task i is scored over tasks 1..i's)", choices=CLASS_OUTPUTS,
           kind=SETTING, per_sweep=True,
           active_when={"scenario": "class"}),
    HParam("num_tasks", int, None, "number of tasks; none: the benchmark's default (2 for the split benchmarks)",
           range=">= 2 (forgetting needs two tasks)", nullable=True, kind=SETTING, per_sweep=True),
    HParam("class_order", tuple, None, "the classes in the order the tasks take them; none: natural order",
           min_len=2, nullable=True, kind=SETTING, per_sweep=True),
    # none by default: every seed of a study sees the same tasks, and a class order is a setting of its own;
    # per-seed is van de Ven & Tolias's protocol (their split-MNIST deals the digits anew for every seed)
    HParam("class_shuffle", str, "none", "split benchmarks: none: every seed's tasks take class_order (or the "
           "natural order); per-seed: each seed deals the classes to the tasks in an order drawn from the seed, so "
           "a trial's mean is over class orders too, as van de Ven & Tolias's code does", choices=CLASS_SHUFFLES,
           kind=SETTING, per_sweep=True),
    HParam("data_root", str, None, "data root in torchvision's layout; none: $SWEEP_DATA_ROOT, else ./data",
           path="folder", nullable=True, kind=SETTING, per_sweep=True, recorded=False),
    HParam("val_fraction", float, 0.1, "share of each task's training data held out for validation, which the "
           "search optimises on", range="(0, 1)", kind=SETTING),
)
_MODEL = (
    HParam("model", str, "mlp", "mlp: the classic Split-MNIST 784-256-256-10 network; cnn; resnet18/34/50 "
           "(torchvision, untrained); or your builder as module:function", choices=MODELS + TORCHVISION_MODELS,
           entry_point=True, kind=SETTING, per_sweep=True),
    HParam("hidden", tuple, (256, 256), "the MLP's hidden layer sizes", range=f"1..{MAX_HIDDEN}", min_len=1,
           kind=SETTING),
    HParam("init_weights", str, None, "state_dict task 1 starts from (e.g. ImageNet weights); mismatched shapes "
           "keep their initialisation", path="file", nullable=True, kind=SETTING, per_sweep=True),
    HParam("pretrained", str, None, "state_dict after the source task: task 1 is then evaluated, not trained",
           path="file", nullable=True, kind=SETTING, per_sweep=True),
    HParam("dropout", float, 0.0, "dropout rate after each hidden layer of the built-in mlp and before the cnn's "
           "head, its masks drawn from the run's own generator; 0: none (another model refuses more)",
           range="[0, 1)"),
)
_TRAINER = (  # the trainer owns every optimizer step
    HParam("optimizer", str, "adam", "the optimizer of every task", choices=OPTIMIZERS),
    # reset by default: a production fine-tune starts its own optimizer (a released checkpoint carries no Adam
    # moments), and every study and cache entry so far was computed so; keep reproduces the published Split-MNIST
    # code (one optimizer for the whole sequence). Task 1 trains the same either way: it acts from task 2 on
    HParam("optimizer_state", str, "reset", "reset: every task starts a fresh optimizer, as a fine-tune of a "
           "released checkpoint must; keep: from task 2 on each model parameter resumes the optimizer state (Adam's "
           "moments and step count) its last training left, as the published Split-MNIST code's single optimizer "
           "does; with sgd (no momentum) there is no state and keep changes nothing", choices=OPTIMIZER_STATES,
           first_task=2),
    HParam("lr", float, 1e-3, "learning rate; Adam 1e-3 is the standard Split-MNIST setting", range="> 0"),
    HParam("finetune_lr", float, None, "learning rate of tasks 2..T; none: lr. A lower one is itself a mitigation",
           range="> 0", nullable=True, first_task=2),
    HParam("lr_decay", float, 1.0, "tasks 2..T: layer k of L learns at lr·decay^(L-1-k), so early layers move less; "
           "1: off", range="(0, 1]", first_task=2),
    HParam("warmup_epochs", float, 0.0, "tasks 2..T: epochs (fractions allowed) over which each task's learning rate "
           "rises linearly to lr, step k of n at lr·k/n; 0: off", range=">= 0", first_task=2),
    HParam("lr_schedule", str, "constant", "tasks 2..T: the learning rate after the warmup; cosine decays it to 0 "
           "by the task's end", choices=LR_SCHEDULES, first_task=2),
    HParam("early_stop_patience", int, 0, "tasks 2..T: stop after this many epochs without a better validation "
           "accuracy; 0: off", range=">= 0", first_task=2),
    HParam("epochs", int, 1, "epochs per task; 1 is enough to learn a Split-MNIST task to >95%", range=">= 1"),
    HParam("batch_size", int, 64, "samples per training batch (replay adds its own on top)", range=">= 1"),
    HParam("weight_decay", float, 0.0, "L2 weight decay; never applied to frozen layers (they leave the optimizer)",
           range=">= 0"),
    HParam("seed", int, 0, "seed of the run's random generator; a sweep sets it from --seeds", range=f"0..{MAX_SEED}",
           kind=SETTING, per_sweep=True, recorded=False),
    HParam("strategy", str, "naive", "the mitigation: '+'-joined components, e.g. ewc+replay+freeze", kind=SETTING,
           per_sweep=True, names=f"one of {', '.join(STRATEGY_NAMES)}, or several joined with '+'"),
    HParam("threads", int, 1, "torch CPU threads of the run; 1 cannot oversubscribe a busy machine and these small "
           "models gain little from more (a sweep's trial uses its --cpus-per-trial); changes how fast, not what it "
           "learns", range="1..1024", kind=SETTING, per_sweep=True, recorded=False),
)

ROWS: tuple[HParam, ...] = (
    *_block("data", _DATA),
    *_block("model", _MODEL),
    *_TRAINER,
    *(HParam(name, **spec, owner=owner) for owner, block in STRATEGY_ROWS.items() for name, spec in block.items()),
)
BY_NAME: dict[str, HParam] = {row.name: row for row in ROWS}
assert len(BY_NAME) == len(ROWS), "a field is declared twice"

# --- the views
FIELD_NAMES = tuple(BY_NAME)  # TrainConfig's fields, in order
DEFAULTS: dict[str, Any] = {row.name: row.default for row in ROWS}
# every hyperparameter a trial can carry; each becomes the Parquet column f"hp_{name}"
HYPERPARAMETERS = tuple(row.name for row in ROWS if row.kind == HYPERPARAMETER)
# knobs every strategy has: the trainer's and the model's own, and those of the components built beside any strategy
GENERAL_PARAMS = tuple(row.name for row in ROWS if row.kind == HYPERPARAMETER
                       and (row.owner in ("trainer", "model") or row.owner in EVERY_STRATEGY))
# set per sweep on the command line, never searched or fixed in a space file
SWEEP_LEVEL = tuple(row.name for row in ROWS if row.per_sweep)
# the settings a search space may fix (hidden, val_fraction): what every trial of the space shares
SPACE_SETTINGS = tuple(row.name for row in ROWS if row.kind == SETTING and not row.per_sweep)
UNRECORDED = tuple(row.name for row in ROWS if not row.recorded)  # left out of the results' config column


def check(name: str, value: Any, label: str | None = None) -> Any:
    """``value`` checked against field ``name``'s row (see :meth:`HParam.check`)."""
    return BY_NAME[name].check(value, label)


def strategy_fields(strategy: str) -> tuple[str, ...]:
    """The fields one strategy component is built from (its block in :mod:`sweep.strategies.specs`)."""
    return tuple(STRATEGY_ROWS.get(strategy, ()))


def prefix_free(components: Iterable[str]) -> set[str]:
    """Fields that cannot change the state after task 1, for a strategy of these components.

    A row with ``first_task == 2`` is free when its owner runs in every trial (the trainer, a
    component built beside any strategy) or is one of ``components``; another strategy's row stays
    in the key, as it always has (its value is unused there, so keeping it only costs sharing).
    """
    present = set(components) | set(EVERY_STRATEGY)
    return {row.name for row in ROWS
            if row.first_task == 2 and (row.owner not in STRATEGY_ROWS or row.owner in present)}
