"""Memory: peak memory of a sweep with 2 concurrent trials against 1, and a check that trials never
copy the dataset.

- Peak: the summed PSS of this process and every descendant (the driver, Ray's GCS, raylet and
  workers), sampled every 0.25 s while ``run_sweep`` runs. PSS counts a page shared by n
  processes as 1/n in each, so the object store's single copy of the dataset is counted once.
  Each configuration gets its own fresh local Ray.
- Copies: the benchmark goes into the object store once (``ray.put`` of numpy arrays) and a
  trial wraps the read-only arrays with ``torch.from_numpy``. A probe in a Ray worker receives
  the payload by object reference, runs the package's ``benchmark_from_arrays`` and ``run_trial``
  up to the trainer and looks up, in ``/proc/self/maps``, where each task tensor the trainer
  receives lives: in the shared object-store mapping or in private memory.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from bench import sweep_overhead
from bench.common import Row, Settings
from bench.sweeps import SweepRun, local_ray, measured_sweep

TRIALS = 2  # per configuration: enough for two to run at once


class _Probed(Exception):
    """Raised by the probe's stand-in trainer once it has seen the tensors: the trial goes no further."""


def _where(ptr: int) -> str:
    """'object store' if the address lies in a shared plasma mapping, else 'private'."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(v, 16) for v in fields[0].split("-"))
            if low <= ptr < high:
                shared = fields[1].endswith("s")
                path = fields[5] if len(fields) > 5 else ""
                return "object store" if shared and ("plasma" in path or "/dev/shm" in path) else "private"
    return "private"


def _probe(payload: dict[str, Any], config: dict[str, Any], device: str) -> dict[str, Any]:
    """In a Ray worker: follow the package's path from the payload to the trainer, then stop."""
    import sweep.tune.trial as trainable
    from sweep.config import TrainConfig

    seen: dict[str, Any] = {"tensors": 0, "private_tensors": 0, "private_mb": 0.0, "device": device,
                            "device_copy_mb": 0.0,  # on a GPU each trial's own copy in device memory: expected
                            "payload_writeable": any(t["train_x"].flags.writeable for t in payload["tasks"])}

    def trainer_stand_in(benchmark, model, strategy, config, *, device, **kwargs):  # noqa: ANN001, ANN202, ARG001
        moved = benchmark.to(device)  # the trainer's first step: a no-op on the CPU
        for task in moved.tasks:
            for split in (task.train, task.val, task.test):
                for tensor in (split.x, split.y):
                    seen["tensors"] += 1
                    if tensor.device.type != "cpu":
                        seen["device_copy_mb"] += tensor.numel() * tensor.element_size() / 2**20
                    elif _where(tensor.data_ptr()) == "private":
                        seen["private_tensors"] += 1
                        seen["private_mb"] += tensor.numel() * tensor.element_size() / 2**20
        raise _Probed

    trainable.iter_sequence = trainer_stand_in  # this worker process only
    with contextlib.suppress(_Probed):
        trainable.run_trial(TrainConfig.from_mapping(config), trainable.benchmark_from_arrays(payload), [0],
                            lambda metrics: None, device=torch.device(device))
    return seen


def probe_copies(settings: Settings, benchmark: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Put the benchmark in the object store as ``run_sweep`` does and probe a worker that receives it.

    The worker gets the object reference as a task argument, which Ray resolves with the same
    zero-copy ``ray.get`` that Tune's ``with_parameters`` uses for the sweep's trials.
    """
    import ray

    from sweep.tune.trial import benchmark_to_arrays

    payload_ref = ray.put(benchmark_to_arrays(benchmark))
    remote = ray.remote(num_cpus=1, num_gpus=1 if settings.device == "cuda" else 0)(_probe)
    return ray.get(remote.remote(payload_ref, config, settings.device))


def _peak(settings: Settings, concurrent: int) -> SweepRun:
    # --quick shares its sweeps with the other rows: 2 concurrent is the overhead row's, 1 is prefix reuse's "off"
    quick_twin = {"trials": sweep_overhead.QUICK_TRIALS, "prefix_cache": None if concurrent == 2 else False}
    return measured_sweep(settings, trials=quick_twin["trials"] if settings.quick else TRIALS, concurrent=concurrent,
                          prefix_cache=quick_twin["prefix_cache"] if settings.quick else None, own_ray=True,
                          sample_memory=True)


def run(settings: Settings) -> list[Row]:
    from bench.data import package_benchmark
    from sweep.data.benchmarks import build_benchmark

    one, two = _peak(settings, 1), _peak(settings, 2)
    benchmark = (build_benchmark("split-digits", "task") if settings.quick else package_benchmark(settings))
    dataset_mb = sum((s.x.numel() * s.x.element_size() + s.y.numel() * s.y.element_size())
                     for t in benchmark.tasks for s in (t.train, t.val, t.test)) / 2**20
    config = {"benchmark": benchmark.name, "scenario": "task", "strategy": "ewc",
              "data_root": str(settings.data_root)}
    with local_ray():
        copies = probe_copies(settings, benchmark, config)
    peak1, peak2 = one.peak_bytes / 2**20, two.peak_bytes / 2**20

    def trials_of(sweep: SweepRun) -> list[dict[str, Any]]:
        return [p for p in sweep.peak_processes if p["name"].startswith("ray::") and not any(
            skip in p["name"] for skip in ("IDLE", "Agent"))]

    return [Row(
        "memory", "peak summed PSS of the sweep's process tree: 2 concurrent trials vs 1", "MB", peak2, peak1,
        peak2 / peak1, "2 trials / 1 trial", "==", 0.0, "0 MB of dataset copied into trials",
        checked=copies["private_mb"],
        details={"device": settings.device, "quick": settings.quick, "dataset_mb": dataset_mb,
                 "extra_mb_for_second_trial": peak2 - peak1, "probe": copies,
                 "trial_processes_at_peak_1": trials_of(one), "trial_processes_at_peak_2": trials_of(two),
                 "samples": [one.samples, two.samples], "wall_s": [one.wall_s, two.wall_s],
                 "benchmark": benchmark.name},
    )]
