"""Where Ray Tune writes outside a study's storage, recorded so that nothing of a study outlives ``sweep clean``.

Ray Tune 2.60 stages each experiment on the driver's node in ``<Ray session>/artifacts/<time>/<experiment>/``
(``driver_artifacts/``: ``experiment_state-*.json`` with every trial's config, ``searcher-state-*.pkl``,
``basic-variant-state-*.json``), and every trial, on whichever node runs it, works in
``<that node's Ray session>/artifacts/<time>/<experiment>/working_dirs/<trial>/``. These paths cannot be
moved (Ray derives them from its session folder, which stays short: Unix socket paths are limited to
about 107 bytes), so the driver records its own before each phase and removes it when the phase ends;
each trial reports its node and folder, which the driver records in the study's ``writes.json``;
``sweep clean`` removes what is left, on every recorded node (:mod:`sweep.tune.cleaning`).
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sweep.results.cleaning import (
    EXPERIMENT,
    NodeFolder,
    add_node_folders,
    local_host,
    read_node_folders,
    remove_node_folder,
    valid_node_folder,
    write_node_folders,
)

NODE_CACHE = "prefix_cache"  # a node's own task-prefix cache, inside its experiment folder


def experiment_name(phase: str) -> str:
    """A Tune experiment's name: the phase and the time to the microsecond (unique per study and run)."""
    name = f"{phase}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S-%f')}"
    assert EXPERIMENT.fullmatch(name), name
    return name


def _this_node(root: str, experiment: str) -> NodeFolder:
    import ray

    return NodeFolder(node=ray.get_runtime_context().get_node_id(), host=socket.gethostname(),
                      ip=ray.util.get_node_ip_address(), root=root, experiment=experiment)


def driver_folder(experiment: str) -> NodeFolder:
    """The folder Tune stages ``experiment`` in on this driver's node (Ray must be initialised)."""
    from ray.train.constants import _get_ray_train_session_dir  # the function Tune's StorageContext calls

    return _this_node(str(Path(_get_ray_train_session_dir())), experiment)


def trial_folder() -> tuple[NodeFolder, Path] | None:
    """Inside a trial: its node's record of the experiment folder Tune made for it there, and that folder; None
    if Tune's layout is not the one this module knows (then nothing is recorded, and no node cache is used)."""
    from ray import tune

    try:
        trial_dir = Path(tune.get_context().get_trial_dir())
    except Exception:  # not inside a Tune trial
        return None
    parents = trial_dir.parents
    if len(parents) < 4 or parents[3].name != "artifacts":
        return None
    entry = _this_node(str(parents[3]), parents[1].name)
    return (entry, parents[1]) if valid_node_folder(entry) else None


def record(study_dir: Path, entry: dict[str, Any] | NodeFolder) -> NodeFolder | None:
    """Add one node folder (as a trial reports it) to the study's record; None for one that is not valid."""
    folder = entry if isinstance(entry, NodeFolder) else _parse(entry)
    if folder is None:
        return None
    add_node_folders(study_dir, [folder])
    return folder


def _parse(item: dict[str, Any]) -> NodeFolder | None:
    try:
        folder = NodeFolder(**{k: str(item[k]) for k in NodeFolder.__dataclass_fields__})
    except (KeyError, TypeError):
        return None
    return folder if valid_node_folder(folder) else None


@contextmanager
def staged_experiment(study_dir: Path, experiment: str) -> Iterator[NodeFolder]:
    """Record the driver's staging folder of ``experiment`` before it runs. When it ends, remove its folders from
    this node (Tune's state, the working folders of the trials that ran here) and, when it completed, from every
    other live node of the cluster; drop what was removed from the record. What is left (a node that could not
    be reached, an interrupted phase's other nodes) stays recorded for ``sweep clean``."""
    mine = driver_folder(experiment)
    add_node_folders(study_dir, [mine])
    completed = False
    try:
        yield mine
        completed = True
    finally:
        _tidy(study_dir, mine, completed)


def _tidy(study_dir: Path, mine: NodeFolder, other_nodes: bool) -> None:
    from sweep.tune.cleaning import CleanReport, remove_on_nodes

    entries = [e for e in read_node_folders(study_dir) if e.experiment == mine.experiment]
    here = [e for e in entries if e.node == mine.node and e.root == mine.root and e.host == local_host()]
    done = {e for e in here if not remove_node_folder(e)[1]}
    others = [e for e in entries if e not in here]
    if other_nodes:
        report = CleanReport()
        try:
            unreached = remove_on_nodes(others, [mine.experiment], report, skip_node=mine.node)
        except Exception:  # a sweep that finished is not failed by its tidying: `sweep clean` does it later
            unreached = others
        done |= {e for e in others if e not in report.left and e not in unreached}
    if done:
        write_node_folders(study_dir, [e for e in read_node_folders(study_dir) if e not in done])


def trial_prefix_dir(setup: dict[str, Any], node: str, where: tuple[NodeFolder, Path] | None) -> str | None:
    """The task-prefix cache a trial uses: the study's (in ``--storage``, which every node reaches, or in the
    study folder on the driver's node); on another node without ``--storage``, that node's own, inside the
    recorded experiment folder; none when that folder is unknown (nothing is written at an unrecorded path)."""
    shared = setup.get("prefix_dir")
    if shared is None or setup.get("prefix_shared") or node == setup.get("driver_node"):
        return shared
    return str(where[1] / NODE_CACHE) if where is not None else None
