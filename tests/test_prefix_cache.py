"""Task-prefix reuse: cached and uncached trials give identical accuracy matrices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from sweep.config import TrainConfig
from sweep.strategies.registry import STRATEGIES
from sweep.train.trainer import load_benchmark
from sweep.tune.prefix_cache import PrefixCache, prefix_free_fields, prefix_key
from sweep.tune.trial import run_trial

CASES = [
    *[(name, {}, "task") for name in STRATEGIES],
    ("replay", {}, "class"),  # the buffer fill and its generator draws, class-incremental
    ("distill", {}, "class"),  # the teacher's known classes
    ("ewc", {"class_outputs": "seen"}, "class"),  # task 2's loss, Fisher and accuracies over the classes so far
    ("ewc", {"fisher": "sampled", "fisher_samples": 100}, "task"),  # sampled labels use the generator
    ("ewc+replay+freeze", {"frozen_layers": 1, "replay_size": 40}, "task"),
    ("naive", {"finetune_lr": 1e-4}, "task"),
]


def _matrices(config: TrainConfig, prefix_dir: Path | None) -> dict:
    benchmark = load_benchmark(config)
    return run_trial(config, benchmark, [0, 1], lambda metrics: None, prefix_dir=str(prefix_dir) if prefix_dir
                     else None)["accuracy"]


@pytest.mark.parametrize("strategy,extra,scenario", CASES, ids=[f"{s}-{sc}{'-' + '-'.join(e) if e else ''}"
                                                                 for s, e, sc in CASES])
def test_cached_and_uncached_trials_are_identical(tmp_path: Path, strategy: str, extra: dict, scenario: str):
    config = TrainConfig(strategy=strategy, scenario=scenario, epochs=1, **extra)
    uncached = _matrices(config, None)
    filling = _matrices(config, tmp_path)  # computes and stores the prefix
    entries = list(tmp_path.glob("*.pt"))
    cacheable = all(STRATEGIES[name].prefix_cacheable for name in strategy.split("+"))
    assert len(entries) == (2 if cacheable else 0)  # one per seed; none for a generator of the data (genreplay)
    reused = _matrices(config, tmp_path)  # loads it
    assert uncached == filling == reused


def test_prefix_free_change_shares_the_entry_and_anything_else_does_not():
    config = TrainConfig(strategy="ewc+replay+freeze", frozen_layers=1, ewc_lambda=10.0, replay_size=30)
    benchmark = load_benchmark(config)
    key = prefix_key(config, benchmark)
    free = prefix_free_fields(config.strategy)
    assert {"ewc_lambda", "replay_ratio", "frozen_layers", "finetune_lr", "lr_decay", "early_stop_patience",
            "optimizer_state"} <= free
    assert prefix_key(config.replace(ewc_lambda=1e6, replay_ratio=0.2, frozen_layers=2, finetune_lr=1e-5),
                      benchmark) == key
    assert prefix_key(config.replace(threads=2), benchmark) == key  # how fast, not what: threads never split the cache
    changed = {"seed": 1, "lr": 2e-3, "epochs": 2, "batch_size": 32, "fisher": "empirical", "fisher_samples": 10,
               "replay_size": 31, "hidden": (128, 128), "optimizer": "sgd", "weight_decay": 1e-4,
               "strategy": "ewc+replay", "ewc_mode": "online", "dropout": 0.2, "class_shuffle": "per-seed"}
    for field, value in changed.items():
        other = config.replace(**{field: value}, **({"frozen_layers": 0} if field == "strategy" else {}))
        assert prefix_key(other, benchmark) != key, field
    assert all(f.name in free or f.name in changed or f.name in (
        "benchmark", "scenario", "num_tasks", "class_order", "data_root", "val_fraction", "model", "ewc_gamma",
        "distill_temperature", "distill_alpha", "l2sp_lambda", "lr_decay", "early_stop_patience", "init_weights",
        "pretrained", "threads", "lp_epochs", "feature_distill_weight", "feature_distill_layers", "interp_alpha",
        "interp_last_alpha", "interp_grid", "si_c", "si_xi", "mas_lambda", "mas_samples", "genreplay_latent",
        "genreplay_epochs", "genreplay_ratio", "genreplay_temperature", "genreplay_weighting", "genreplay_targets",
        "distill_variant", "class_outputs",  # class_outputs: test_class_outputs_splits_the_cache_only_where_it_acts
        "distill_weighting", "adapter_rank", "adapter_alpha", "adapter_layers", "adapter_mode")
        for f in dataclasses.fields(TrainConfig))


def test_class_outputs_splits_the_cache_only_where_it_acts():
    """seen trains task 1 over its own classes in class-incremental form only: elsewhere it shares the entry."""
    for scenario, splits in (("task", False), ("domain", False), ("class", True)):
        config = TrainConfig(strategy="ewc", scenario=scenario)
        benchmark = load_benchmark(config)
        seen = prefix_key(config.replace(class_outputs="seen"), benchmark)
        assert (seen != prefix_key(config, benchmark)) is splits, scenario


def test_a_corrupt_entry_is_recomputed(tmp_path: Path):
    config = TrainConfig(strategy="ewc", epochs=1)
    expected = _matrices(config, None)
    _matrices(config, tmp_path)
    for entry in tmp_path.glob("*.pt"):
        entry.write_bytes(b"not a torch file")
    assert _matrices(config, tmp_path) == expected


def test_entries_hold_tensors_and_numbers_only_never_samples(tmp_path: Path):
    config = TrainConfig(strategy="replay", replay_size=50, epochs=1)
    benchmark = load_benchmark(config)
    _matrices(config, tmp_path)
    entry = PrefixCache(tmp_path, prefix_key(config.replace(seed=0), benchmark)).load()
    assert entry is not None and set(entry) == {"model", "strategy", "generator", "initial_val", "initial_test",
                                                "val", "test"}
    image_size = benchmark.tasks[0].train.x[0].numel()
    for name, value in entry["strategy"].items():
        assert not isinstance(value, torch.Tensor) or value.dtype != torch.uint8, name
        assert not isinstance(value, torch.Tensor) or value.ndim < 2 or value.shape[-1] != image_size, name


def test_freezing_or_not_never_shares_an_entry():
    """frozen_layers is prefix-free, but freezing adds a component whose state layout differs."""
    config = TrainConfig(strategy="ewc")
    benchmark = load_benchmark(config)
    assert prefix_key(config, benchmark) != prefix_key(config.replace(frozen_layers=1), benchmark)
    assert prefix_key(config.replace(frozen_layers=1), benchmark) == prefix_key(
        config.replace(frozen_layers=2), benchmark)
