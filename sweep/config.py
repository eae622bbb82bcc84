"""Training configuration: one frozen dataclass generated from the hyperparameter table, validated once at the edge.

``TrainConfig``'s fields, types, defaults and range checks are the rows of :mod:`sweep.hparams`
(each with its one-line why); only the checks across fields are written here. A config comes from
CLI flags, a YAML file (``chosen.yaml`` from ``sweep choose``) or a Ray Tune trial; all three go
through :meth:`TrainConfig.from_mapping`, so an unknown key, a wrong type or an out-of-range value
is refused the same way everywhere, with one line that names it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import yaml

from sweep.errors import ConfigError
from sweep.hparams import (  # noqa: F401 - the choice lists, importable from here as before
    ENTRY_POINT,
    EWC_MODES,
    FISHER_ESTIMATORS,
    GENERAL_PARAMS,
    MAX_HIDDEN,
    MAX_SEED,
    MODELS,
    OPTIMIZERS,
    ROWS,
    SCENARIOS,
    TORCHVISION_MODELS,
)
from sweep.reading import read_regular


class _TrainConfigMethods:
    """What ``TrainConfig`` does besides holding its fields (they are the table's rows)."""

    if TYPE_CHECKING:
        # what a type checker cannot see in make_dataclass below: the fields, one per row of ROWS, in order
        # (test_hparams checks these lines against the table), and keyword construction, checked at run time
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
        benchmark: str
        scenario: str
        class_outputs: str
        num_tasks: int | None
        class_order: tuple[int, ...] | None
        class_shuffle: str
        data_root: str | None
        val_fraction: float
        model: str
        hidden: tuple[int, ...]
        init_weights: str | None
        pretrained: str | None
        dropout: float
        optimizer: str
        optimizer_state: str
        lr: float
        finetune_lr: float | None
        lr_decay: float
        warmup_epochs: float
        lr_schedule: str
        early_stop_patience: int
        epochs: int
        batch_size: int
        weight_decay: float
        seed: int
        strategy: str
        threads: int
        ewc_lambda: float
        fisher: str
        fisher_samples: int | None
        ewc_mode: str
        ewc_gamma: float
        distill_variant: str
        distill_weighting: str
        distill_temperature: float
        distill_alpha: float
        feature_distill_weight: float
        feature_distill_layers: str
        replay_size: int
        replay_ratio: float
        l2sp_lambda: float
        frozen_layers: int
        interp_alpha: float
        interp_last_alpha: float | None
        interp_grid: int
        lp_epochs: int
        si_c: float
        si_xi: float
        mas_lambda: float
        mas_samples: int | None
        adapter_rank: int
        adapter_alpha: float
        adapter_layers: str
        adapter_mode: str
        genreplay_latent: int
        genreplay_epochs: int
        genreplay_ratio: float
        genreplay_temperature: float
        genreplay_targets: str
        genreplay_weighting: str

        def __init__(self, **values: Any) -> None: ...

    def __post_init__(self) -> None:
        # types, then ranges, field by field (the Python API gets the same checks as YAML), then across fields
        for row in ROWS:
            object.__setattr__(self, row.name, row.check(getattr(self, row.name)))
        _check_across_fields(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "config") -> Self:
        """Build from a flat mapping, checking keys and types; ``source`` names the file in errors."""
        allowed = cls.field_names()
        for key in values:
            if key not in allowed:
                raise ConfigError(f"{source}: unknown key {key!r}; allowed: {', '.join(allowed)}")
        try:
            return cls(**dict(values))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Self:
        """Read a YAML file: either a flat mapping or ``sweep choose``'s ``{config: ..., evidence: ...}``."""
        path = Path(path).expanduser()
        data = read_yaml(path, "config")
        if isinstance(data, dict) and "config" in data:
            data = data["config"]
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
        return cls.from_mapping(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


if TYPE_CHECKING:
    TrainConfig = _TrainConfigMethods
else:
    TrainConfig = dataclasses.make_dataclass(
        "TrainConfig",
        [(row.name, row.annotation, dataclasses.field(default=row.default)) for row in ROWS],
        bases=(_TrainConfigMethods,),
        frozen=True,
        namespace={"__module__": __name__, "__doc__": "The configuration of one run: one field per row of "
                   "sweep.hparams.ROWS (see there for each field's type, default, range and why)."},
    )


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that names one key twice: YAML would keep the last value and drop the first silently."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(None, None, f"duplicate key {key!r}", again)
        self.key, self.first_line, self.line = key, first.line + 1, again.line + 1


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping naming a key twice (merge keys ``<<`` aside)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: SafeLoader names it below
                    continue
                if first is not key_node.start_mark:
                    raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing a mapping that names a key twice (:class:`DuplicateKeyError`)."""
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in a file, every failure a one-line ConfigError naming the file.

    The file must be a regular one within :data:`sweep.reading.LIMITS` (a device or a pipe would
    never end), UTF-8, valid YAML without Python tags, and no mapping in it may name a key twice.
    """
    data = read_regular(path, what, "yaml", ConfigError)
    try:
        return safe_load_unique(data.decode("utf-8"))
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}: duplicate key {err.key!r} on line {err.line} (first on line {err.first_line}); "
                          "a YAML mapping keeps only the last value: keep one") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML file (not UTF-8 text)") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a {what} file (nested too deeply to read)") from None


def _check_across_fields(c: TrainConfig) -> None:
    """What no single row can say; each field's own range is its row's (strategy composition: sweep.strategies)."""
    if c.init_weights is not None and c.pretrained is not None:
        raise ConfigError("init_weights and pretrained both set: pretrained replaces every weight before task 1; "
                          "pass one")
    if (c.scenario == "class" and c.class_outputs == "seen" and c.adapter_mode == "per-task"
            and "adapter" in c.strategy.split("+")):
        # its routing compares every head's confidence over all outputs; under seen, head k's rows for the classes
        # after task k stay at their initial values, so that comparison would not mean what it does under all
        raise ConfigError("adapter_mode per-task routes a class-incremental sample by each task's head's confidence "
                          "over every output, which class_outputs seen leaves untrained: use class_outputs all, or "
                          "adapter_mode merge")
