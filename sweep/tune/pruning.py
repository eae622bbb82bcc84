"""Multi-objective early stopping at task and epoch boundaries: rungs, and successive halving on them.

Continual learning has a fidelity axis of its own: the tasks, and the epochs inside each task. A
trial reports validation (stability, plasticity), the mean over its seeds, at every **rung**:

- the end of every task from task 2 on (task 1's end has no old task: stability is not defined yet,
  and task 1 is shared through the prefix cache anyway);
- inside every task from task 2 on, the epochs ``grace * eta**k`` short of the task's last (epochs
  1, 3, 9 of a fine-tune at ``eta=3``), spaced geometrically as in ASHA.

A rung is a position (task, epoch), ``epoch=None`` for the task's end: trials are compared only at
the same rung. The last task's end is the trial's final result, never a rung.

:class:`SuccessiveHalving` is asynchronous successive halving on two objectives, after
Schmucker et al. 2021 (MO-ASHA) and Syne Tune's ``moasha.py``: when a trial reaches a rung it is
ranked against the trials that reached that rung before it, and continues only if it ranks in
the top ``1/eta`` of them. It never waits for a trial that has not reached the rung, so the first
trials to arrive are judged against few peers (as in ASHA; Ray's ASHA stops a trial below the
rung's ``1 - 1/eta`` quantile of the values recorded so far, and this is the same rule on ranks).
A trial on the rung's non-dominated front continues, however many share the front: it is the best
known trade-off for some preference, and stopping it could only lose front (the front exception).
In the last task, with the naive reference, the hypervolume's floor below narrows that exception.

**Noise.** A rung's values are means over a few seeds, and early rungs separate settings by less than
the seeds disagree (after task 2 of a 5-task Split-MNIST, most EWC settings retain task 1 at 98.5-100 %).
Ranked on the means alone, a setting that ends on the front is stopped at such a rung for a
difference that does not last. So a trial is judged on the front when no peer dominates its
*optimistic* values, mean + ``noise`` × its std over seeds (an upper confidence bound, as in
bandit-based early stopping): a peer must beat it by more than its own seeds vary. Replayed on the
benchmark's six recorded sweeps (docs/pruning.md), ``noise=0.5`` kept every late bloomer of the task
sequences (test hypervolume 0.961 -> 0.999 in the seed that lost them) for 77 % instead of 54 % of the
compute; ``noise=0`` is the plain rule. With one seed there is no std: the means decide.

**The hypervolume's region.** The front a study is judged by is its hypervolume against (the naive
reference's final validation stability, 0) (sweep.analysis): a point retaining no more than plain
fine-tuning adds nothing to it, and a point that adds a sliver (a setting that has not started on the
new task, beside one that has; a near-copy of a neighbour) adds nothing a user chooses. Early on most
trials sit on a rung's front (after one epoch of a fine-tune a low learning rate looks the most stable
and a high one the most plastic), and the front exception alone let the first ten trials of a
24-trial fine-tune all run to the end. So, at the rungs inside the last task (``reference_task``),
where a trial's stability is over the same old tasks as at the end, with ``reference`` (the naive
reference's final validation stability, which a sweep with references knows before its search starts):

- a trial whose optimistic stability is at or below ``reference`` stops, whatever its rank: it
  already retains no more than plain fine-tuning does at the end;
- a front trial goes on by the front exception only if its optimistic values add at least
  ``min_share`` (0.5 %) of the rung's hypervolume against (``reference``, 0).

At an earlier task's rungs stability is over fewer old tasks, and naive's final value is no floor for
it: against it every point of a 5-task sweep's task-2 rung is a sliver (replayed so, one of three
Split-MNIST sweeps lost its `sweep choose` pick). Without a reference (``--no-references``) neither
applies either: the rung's own worst values are no floor (one fine-tune sweep of six lost its pick).
``min_share=0`` turns both off. Replayed on six recorded fine-tune sweeps (docs/pruning.md), this
cut the compute to 95 % of the final validation hypervolume from 12-51 % to 12-44 %, every `sweep
choose` pick kept.

The ranking is non-dominated sorting, ties inside a front broken by **crowding distance**
(NSGA-II), not by hypervolume contribution: at an intermediate rung the values are partial (a
stability over fewer old tasks, a plasticity a few epochs in) and there is no reference point that
means anything for them, while crowding distance needs none; and it keeps the front's extremes
(infinite distance), the most stable and the most plastic settings, which are the ends of the
trade-off a user chooses along.

The scheduler reads reported values only, so it can be replayed exactly on the rung records of a
study swept without it (the benchmark does). :func:`tune_scheduler` wraps it for Ray Tune.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sweep.metrics import hypervolume

DEFAULT_ETA = 3.0
DEFAULT_GRACE = 1  # epochs trained past task 1 before a trial can be stopped
DEFAULT_NOISE = 0.5  # a trial is on a rung's front unless a peer dominates its mean + 0.5 std over seeds
DEFAULT_MIN_SHARE = 0.005  # a front trial goes on only if it adds 0.5 % of the rung's hypervolume

RungKey = tuple[int, int]  # (task, epoch): 1-based; END for the task's end
END = 1 << 30  # sorts after every epoch of its task


def rung_key(task: int, epoch: int | None) -> RungKey:
    return (task, END if epoch is None else epoch)


def rung_label(task: int, epoch: int | None) -> str:
    return f"task {task} end" if epoch is None else f"task {task} epoch {epoch}"


def epoch_rungs(epochs: int, eta: float = DEFAULT_ETA, grace: int = DEFAULT_GRACE) -> tuple[int, ...]:
    """The epochs (1-based) inside a task of ``epochs`` epochs after which a trial reports: ``grace *
    eta**k`` below ``epochs`` (the last epoch is the task's end, a rung of its own)."""
    out: list[int] = []
    k = 0
    while True:
        epoch = int(round(grace * eta**k))
        if epoch >= epochs:
            return tuple(out)
        if not out or epoch > out[-1]:
            out.append(epoch)
        k += 1


@dataclass(frozen=True)
class RungPlan:
    """Where the trials of a study report, and from which rung on a report can stop one."""

    num_tasks: int
    epochs: int
    eta: float = DEFAULT_ETA
    grace: int = DEFAULT_GRACE

    @property
    def epochs_inside(self) -> tuple[int, ...]:
        return epoch_rungs(self.epochs, self.eta, self.grace)

    def reports_after(self, task_index: int, epoch_index: int) -> bool:
        """Whether a trial reports after epoch ``epoch_index`` of task ``task_index`` (both 0-based)."""
        return task_index >= 1 and epoch_index + 1 in self.epochs_inside

    def trained(self, task: int, epoch: int | None) -> int:
        """Epochs trained past task 1 at a rung (a task's end counts its ``epochs``)."""
        return (task - 2) * self.epochs + (self.epochs if epoch is None else epoch)

    def decides(self, task: int, epoch: int | None) -> bool:
        """A rung can stop a trial once ``grace`` epochs past task 1 are trained; the last task's end
        is the trial's final result, never a rung."""
        return task >= 2 and not (task == self.num_tasks and epoch is None) and self.trained(task, epoch) >= self.grace

    def rungs(self) -> list[tuple[int, int | None]]:
        """Every rung in order."""
        out: list[tuple[int, int | None]] = []
        for task in range(2, self.num_tasks + 1):
            out += [(task, e) for e in self.epochs_inside]
            if task < self.num_tasks:
                out.append((task, None))
        return out


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one (all maximised)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def nondominated_fronts(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """Indices of ``points`` by non-dominated front: front 0 is dominated by none, front 1 only by front 0, ..."""
    remaining = list(range(len(points)))
    fronts: list[list[int]] = []
    while remaining:
        front = [i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining if j != i)]
        fronts.append(front)
        remaining = [i for i in remaining if i not in front]
    return fronts


def crowding_distances(points: Sequence[Sequence[float]], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each point of one front: the extremes of every objective infinite."""
    distance = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: math.inf for i in front}
    for m in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: points[i][m])
        low, high = points[ordered[0]][m], points[ordered[-1]][m]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if high == low:
            continue
        for before, i, after in zip(ordered, ordered[1:], ordered[2:]):
            distance[i] += (points[after][m] - points[before][m]) / (high - low)
    return distance


def rank_order(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of ``points`` best first: by front, then by crowding distance (larger first), then first come."""
    order: list[int] = []
    for front in nondominated_fronts(points):
        crowding = crowding_distances(points, front)
        order += sorted(front, key=lambda i: (-crowding[i], i))
    return order


@dataclass
class Decision:
    keep: bool
    rank: int  # 1-based place at the rung among the trials that reached it so far, this one included
    of: int
    on_front: bool  # goes on by the front exception (on the rung's front, adding its share of the hypervolume)
    below: tuple[float, float] | None = None  # stopped below the floor: (its optimistic stability, the floor)
    share: tuple[float, float] | None = None  # on the front, adding too little: (its share, the share asked)

    def reason(self, eta: float, task: int, epoch: int | None) -> str:
        if self.below is not None:
            return (f"at {rung_label(task, epoch)} it retains no more than the naive reference does at the end "
                    f"(stability {self.below[0]:.4g}, raised by the noise; naive's {self.below[1]:.4g})")
        ranked = f"rank {self.rank} of {self.of}, top 1/{eta:g} go on"
        if self.share is not None:
            return (f"on the front at {rung_label(task, epoch)} adding {self.share[0]:.3%} of the rung's "
                    f"hypervolume (under {self.share[1]:.3%}): {ranked}")
        return f"dominated at {rung_label(task, epoch)}: {ranked}"


@dataclass
class SuccessiveHalving:
    """Asynchronous multi-objective successive halving (see the module docstring). Ray-free: it reads values only.

    ``record`` adds what a trial reported at a rung without a decision (a resumed study's trials);
    ``decide`` records it and says whether the trial goes on.
    """

    eta: float = DEFAULT_ETA
    noise: float = DEFAULT_NOISE  # stds over seeds a trial's values are raised by to be judged on the front
    reference: float | None = None  # the naive reference's final validation stability: the hypervolume's floor
    reference_task: int | None = None  # the last task: the floor and min_share hold at its rungs only
    min_share: float = DEFAULT_MIN_SHARE  # of the rung's hypervolume a front trial must add to go on by the front
    recorded: dict[RungKey, dict[str, tuple[float, float]]] = field(default_factory=dict)
    stopped: dict[str, tuple[int, int | None, Decision]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reference is not None and not math.isfinite(self.reference):
            self.reference = None  # a naive value that is no number is no floor (NaN would make every share 0)

    def record(self, trial_id: str, task: int, epoch: int | None, values: Sequence[float]) -> None:
        self.recorded.setdefault(rung_key(task, epoch), {}).setdefault(trial_id, (float(values[0]), float(values[1])))

    def decide(self, trial_id: str, task: int, epoch: int | None, values: Sequence[float],
               decides: bool = True, spread: Sequence[float] = (0.0, 0.0)) -> Decision:
        """Record a trial's values (means over its seeds) at a rung and say whether it goes on; ``spread``:
        their stds over seeds (NaN or absent: 0). ``decides=False`` (a rung inside the grace period, from
        the trial's own :class:`RungPlan`) records them and lets it go on."""
        at = self.recorded.setdefault(rung_key(task, epoch), {})
        if trial_id in at:  # a repeated report (a retried trial): the first one was judged
            return Decision(True, 0, len(at), False)
        peers = list(at.values())
        at[trial_id] = (float(values[0]), float(values[1]))
        points = [*peers, at[trial_id]]
        me = len(points) - 1
        order = rank_order(points)
        rank = order.index(me)
        optimistic = (at[trial_id][0] + self.noise * _finite(spread[0]),
                      at[trial_id][1] + self.noise * _finite(spread[1]))
        floor = self.reference if task == self.reference_task and self.min_share > 0 else None
        below = floor is not None and optimistic[0] <= floor
        nondominated = not below and not any(dominates(peer, optimistic) for peer in peers)
        share = _share(optimistic, peers, floor) if nondominated and floor is not None else None
        on_front = nondominated and (share is None or share >= self.min_share)
        keep = not decides or (not below and (on_front or rank < len(points) / self.eta))
        decision = Decision(keep, rank + 1, len(points), on_front,
                            (optimistic[0], floor) if below and floor is not None else None,
                            (share, self.min_share) if share is not None and not on_front else None)
        if not keep:
            self.stopped[trial_id] = (task, epoch, decision)
        return decision

    def replay(self, curves: Iterable[tuple[str, Sequence[tuple[Any, ...]]]]
               ) -> dict[str, tuple[int, int | None] | None]:
        """Run the scheduler over trials' rung records (task, epoch, stability, plasticity, decides, and
        optionally their stds over seeds: stability_std, plasticity_std), one trial after another in the
        order given (each trial's rungs before the next one's: the order of trials run one at a time).
        Returns trial id -> the rung it would have been stopped at, or None."""
        out: dict[str, tuple[int, int | None] | None] = {}
        for trial_id, rungs in curves:
            out[trial_id] = None
            for task, epoch, stability, plasticity, decides, *spread in sorted(
                    rungs, key=lambda r: rung_key(r[0], r[1])):
                if not self.decide(trial_id, task, epoch, (stability, plasticity), decides,
                                   tuple(spread) or (0.0, 0.0)).keep:
                    out[trial_id] = (task, epoch)
                    break
        return out


def _share(point: tuple[float, float], peers: Sequence[tuple[float, float]], floor: float) -> float:
    """The share of the hypervolume of ``peers`` and ``point`` against (floor, 0) that ``point`` alone adds."""
    total = hypervolume([*peers, point], (floor, 0.0))
    return (total - hypervolume(peers, (floor, 0.0))) / total if total > 0.0 else 0.0


def tune_scheduler(halving: SuccessiveHalving) -> Any:
    """A Ray Tune scheduler that stops a search trial when :class:`SuccessiveHalving` says so.

    Tune then hands the trial's last (rung) result to the searcher, which tells Optuna PRUNED
    (:mod:`sweep.tune.searcher`), and to the sink, which records it as ``pruned``.
    """
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class MultiObjectiveHalving(FIFOScheduler):
        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            if result.get("final") or result.get("rung_task") is None:
                return TrialScheduler.CONTINUE
            decision = halving.decide(trial.trial_id, int(result["rung_task"]), _epoch(result),
                                      (result["stability"], result["plasticity"]), bool(result.get("rung_decides")),
                                      (_finite(result.get("val_stability_std")),
                                       _finite(result.get("val_plasticity_std"))))
            return TrialScheduler.CONTINUE if decision.keep else TrialScheduler.STOP

        def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
            pass  # a trial's end is not a rung: its final values are judged by the front, not here

        def debug_string(self) -> str:
            return f"multi-objective successive halving (eta={halving.eta:g}, {len(halving.stopped)} stopped)"

    return MultiObjectiveHalving()


def _finite(value: Any) -> float:
    """A std over seeds as a number: 0 for one seed (NaN) or none reported."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _epoch(result: dict) -> int | None:
    """A report's ``rung_epoch``: 0 (or absent) is the task's end, None here."""
    epoch = result.get("rung_epoch")
    return None if not epoch or (isinstance(epoch, float) and math.isnan(epoch)) else int(epoch)
