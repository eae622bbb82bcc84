"""The Ray Tune function trainable: a thin wrapper that runs :func:`sweep.tune.trial.run_trial` in Ray."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from sweep.strategies.registry import parse_strategy
from sweep.tune.pruning import RungPlan
from sweep.tune.staging import trial_folder, trial_prefix_dir
from sweep.tune.trial import benchmark_from_arrays, run_trial, trial_config


def trial_device() -> torch.device:
    """CUDA when Ray gave this trial a GPU, the CPU otherwise."""
    try:
        import ray

        if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available():
            return torch.device("cuda")
    except Exception:  # outside Ray, or no runtime context: the CPU is always right
        pass
    return torch.device("cpu")


def tune_trainable(params: dict[str, Any], payload: dict[str, Any] | None = None,
                   setup: dict[str, Any] | None = None) -> None:
    """The Ray Tune function trainable (wrapped with ``tune.with_parameters(payload=..., setup=...)``)."""
    import ray
    from ray import tune

    assert payload is not None and setup is not None
    torch.set_num_threads(max(1, int(setup.get("cpus_per_trial", 1))))
    if setup.get("import_paths"):  # a user's module:function model is imported here, in the trial's process
        from sweep.data.entry_points import add_import_paths

        add_import_paths(setup["import_paths"])
    config = trial_config(setup["base_config"], params)
    benchmark = benchmark_from_arrays(payload)
    node = ray.get_runtime_context().get_node_id()
    where = trial_folder()  # this node's folder of the experiment: every report names it, the driver records it
    wrote = {"wrote": asdict(where[0])} if where is not None else {}

    def report(metrics: dict[str, Any]) -> None:
        tune.report({**metrics, **wrote, "node": node})  # a pruned trial's last report is its record

    # where it reports inside tasks: from its own epochs (a space may search them), counted over a task's phases
    # as the trainer counts them (LP-FT's probing epochs come first)
    epochs = config.epochs + (config.lp_epochs if "lpft" in parse_strategy(config.strategy) else 0)
    num_tasks = int(setup.get("num_tasks") or benchmark.num_tasks)  # K of --protocol first-tasks K
    rungs = RungPlan(num_tasks, epochs, **setup["rungs"]) if setup.get("rungs") else None
    run_trial(config, benchmark, list(setup["seeds"]), report, device=trial_device(), objective=setup.get("objective"),
              prefix_dir=trial_prefix_dir(setup, node, where), rungs=rungs, num_tasks=num_tasks)
