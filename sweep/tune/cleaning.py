"""``sweep clean``: remove what a study wrote besides its results, here and on the nodes its sweep ran on.

The files side (which folder is a study, what its records name, removing it) is
:mod:`sweep.results.cleaning`'s. Folders a sweep wrote on other nodes of a Ray cluster (``writes.json``)
are removed by a task scheduled on each recorded node when ``--address`` (or ``$RAY_ADDRESS``) names
that cluster; those of this machine are removed here; the others are reported as left.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sweep.errors import ResultsError
from sweep.results.cleaning import (
    NodeFolder,
    check_is_study,
    clean_study_files,
    local_host,
    read_node_folders,
    remove_node_folder,
    write_node_folders,
)
from sweep.results.store import acquire_study_lock, release_study_lock

NODE_TIMEOUT_S = 120


@dataclass
class CleanReport:
    removed: list[str] = field(default_factory=list)
    left: list[NodeFolder] = field(default_factory=list)  # on nodes neither reached through Ray nor this machine
    problems: list[str] = field(default_factory=list)  # folders a node could not remove

    def left_line(self) -> str:
        """One line: which nodes still hold files of the study, and how to remove them."""
        nodes = sorted({entry.describe() for entry in self.left})
        problem = f" ({self.problems[0]})" if self.problems else ""
        return (f"files of this study remain on {len(nodes)} node(s): {', '.join(nodes)}{problem}; "
                "run `sweep clean --address <that cluster>` while it is up")


def clean_study(study_dir: str | os.PathLike[str], address: str | None = None) -> CleanReport:
    """Check that ``study_dir`` is a study this tool wrote, take its lock, and remove exactly what its records name.

    Raises:
        ResultsError: not a study this tool wrote, a record that names anything else, a file that cannot be removed.
        SweepError: the study is being run, its folder holds links where its own files belong, or ``address``
            cannot be reached.
    """
    study = Path(study_dir)
    check_is_study(study)  # reads only: a folder that is not a study gets no lock file either
    lock = acquire_study_lock(study)  # a running sweep's Tune folder and temporary files are not leftovers
    try:
        meta = check_is_study(study)  # again, now that no driver can change it
        entries = read_node_folders(study)
        report = CleanReport()
        address = address or os.environ.get("RAY_ADDRESS") or None
        # the cluster first: one that cannot be reached fails the command before anything is removed
        unreached = _remove_through_ray(entries, address, report) if entries and address else entries
        report.removed += [str(p) for p in clean_study_files(study, meta)]
        for entry in unreached:
            if entry.host != local_host():
                report.left.append(entry)
                continue
            removed, problems = remove_node_folder(entry)
            report.removed += removed
            report.problems += problems
            if problems:
                report.left.append(entry)
        write_node_folders(study, report.left)
    except OSError as err:
        raise ResultsError(f"cannot clean {study}: {err.strerror or err} ({err.filename})") from None
    finally:
        release_study_lock(study, lock)
    return report


def remove_on_node(items: list[dict[str, str]], experiments: list[str]) -> tuple[list[str], list[str]]:
    """Run on a node (a Ray task): remove the recorded folders there, and each of ``experiments``' folders in the
    node's current Ray session (Tune may make a trial's working folder on a node where the trial then never runs,
    so never reports it). Returns (removed, could not remove)."""
    from ray.train.constants import _get_ray_train_session_dir  # the function Tune's paths start from

    root = str(Path(_get_ray_train_session_dir()))
    entries = [NodeFolder(**item) for item in items]
    entries += [NodeFolder(node="", host="", ip="", root=root, experiment=name) for name in experiments]
    removed: list[str] = []
    problems: list[str] = []
    for place in dict.fromkeys((e.root, e.experiment) for e in entries):
        done, left = remove_node_folder(NodeFolder(node="", host="", ip="", root=place[0], experiment=place[1]))
        removed += done
        problems += left
    return removed, problems


def remove_on_nodes(entries: list[NodeFolder], experiments: list[str], report: CleanReport,
                    skip_node: str | None = None) -> list[NodeFolder]:
    """With Ray initialised: on every live node but ``skip_node``, a task pinned there removes the entries recorded
    for it (matched by node id, else by address: the same machine after a restart) and ``experiments``' folders in
    its session. Removed paths and problems go to ``report`` (a node's entries to ``report.left`` if it failed);
    returns the entries whose node is not in the cluster (or is ``skip_node``)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = {node["NodeID"]: node for node in ray.nodes() if node.get("Alive") and node["NodeID"] != skip_node}
    by_ip = {node["NodeManagerAddress"]: node_id for node_id, node in alive.items()}
    groups: dict[str, list[NodeFolder]] = {node_id: [] for node_id in alive}
    unreached = []
    for entry in entries:
        node_id = entry.node if entry.node in alive else by_ip.get(entry.ip)
        if node_id is None:
            unreached.append(entry)
        else:
            groups[node_id].append(entry)
    task = ray.remote(remove_on_node)
    pending: dict[str, Any] = {
        node_id: task.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_id, soft=False)).remote([asdict(e) for e in group], experiments)
        for node_id, group in groups.items()}
    for node_id, ref in pending.items():
        try:
            removed, problems = ray.get(ref, timeout=NODE_TIMEOUT_S)
        except Exception as err:  # the node died, the task timed out: its folders stay recorded
            line = str(err).strip().splitlines()
            report.problems.append(f"node {node_id[:12]}: {line[-1][:160] if line else type(err).__name__}")
            report.left += groups[node_id]
            continue
        report.removed += removed
        report.problems += problems
        if problems:
            report.left += groups[node_id]
    return unreached


def _remove_through_ray(entries: list[NodeFolder], address: str, report: CleanReport) -> list[NodeFolder]:
    """Join the cluster at ``address`` and clean every live node of it; returns the entries no live node holds."""
    import ray

    from sweep.tune.ray_session import init_ray

    init_ray(address, False)  # joins that cluster; never starts one
    try:
        return remove_on_nodes(entries, sorted({e.experiment for e in entries}), report)
    finally:
        ray.shutdown()
