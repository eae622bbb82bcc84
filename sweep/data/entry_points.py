"""User entry points: ``--benchmark mypkg.tasks:build`` and ``--model mypkg.models:build``.

A benchmark function returns the tasks, in order (at least two), each a mapping::

    {"name": "source", "train": (x, y), "test": (x, y), "val": (x, y), "classes": (0, 1, 2)}

``train`` and ``test`` are required; ``val`` is carved from ``train`` (per class, fixed seed) when
absent; ``name`` and ``classes`` default to ``task t`` and the labels present. A split is a pair
``(x, y)`` of tensors or numpy arrays, or a ``torch.utils.data.Dataset`` of ``(x, y)`` samples
(read once, at build time). ``x`` is (N, ...) — uint8 images in 0..255, or floats used as they
are; ``y`` holds integer class ids in one label space shared by every task (give disjoint ids to
tasks with different classes; the same ids when, as in domain-incremental form, every task has
the same classes). The function may declare ``data_root`` and ``scenario`` parameters to get them.

A model function is called with whichever of ``input_shape`` (C, H, W) and ``num_classes`` it
declares, and returns an ``nn.Module`` whose forward gives (batch, num_classes) logits. Its
layers, which ``frozen_layers`` and ``lr_decay`` count, are its ``layers()`` method if it has one,
else its top-level children that hold parameters (see :func:`sweep.models.named_layers`).

Modules are imported like ``python -m`` would: from ``sys.path``, and from the current folder.
Ray trials get the module's folder from the driver (:func:`import_paths`), so a module next to
the command line's folder imports in every trial without PYTHONPATH.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sweep.config import ENTRY_POINT
from sweep.errors import ConfigError, SweepError


def is_entry_point(name: str) -> bool:
    return ":" in name


def _parse(spec: str, what: str) -> tuple[str, str]:
    if ENTRY_POINT.match(spec) is None:
        raise ConfigError(f"{what} {spec!r} is not module:function (e.g. mypkg.tasks:build)")
    module, _, function = spec.partition(":")
    return module, function


def _import(module_name: str, spec: str, what: str) -> Any:
    top = module_name.split(".")[0]
    for attempt in range(2):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            ours = err.name is not None and (module_name == err.name or module_name.startswith(err.name + "."))
            cwd = os.getcwd()
            if ours and attempt == 0 and cwd not in sys.path and "" not in sys.path:
                sys.path.insert(0, cwd)  # as `python -m` does: the current folder's modules import
                continue
            if ours:
                raise ConfigError(
                    f"{what} {spec!r}: module {err.name!r} not found (run from the folder that holds {top}, "
                    "or add that folder to PYTHONPATH)"
                ) from None
            raise ConfigError(f"{what} {spec!r}: importing {module_name} failed: {first_line(err)}") from None
        except SystemExit as err:  # sys.exit() at import: an error, never the command's own exit
            raise ConfigError(f"{what} {spec!r}: importing {module_name} called sys.exit({err.code!r}); an entry "
                              "point's module must not exit") from None
        except Exception as err:  # the user's module raised while importing: a SyntaxError, an ImportError
            raise ConfigError(f"{what} {spec!r}: importing {module_name} failed: {first_line(err)}") from None
    raise AssertionError("unreachable")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def load_function(spec: str, what: str) -> Callable[..., Any]:
    """The function ``module:function`` names, imported; one-line ConfigError when it is not there."""
    module_name, function_name = _parse(spec, what)
    module = _import(module_name, spec, what)
    function = getattr(module, function_name, None)
    if function is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                        and getattr(v, "__module__", None) == module.__name__)
        raise ConfigError(f"{what} {spec!r}: module {module_name} has no function {function_name!r}"
                          + (f" (it has: {', '.join(public[:8])})" if public else ""))
    if not callable(function):
        raise ConfigError(f"{what} {spec!r}: {function_name} is a {type(function).__name__}, not a function")
    return function


def import_paths(*names: str) -> list[str]:
    """Folders to put on a Ray trial's ``sys.path`` so that each entry point among ``names`` imports there."""
    paths: list[str] = []
    for name in names:
        if not isinstance(name, str) or not is_entry_point(name) or ENTRY_POINT.match(name) is None:
            continue
        module_name = name.partition(":")[0]
        try:
            found = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.origin or not Path(found.origin).is_file():
            continue
        origin = Path(found.origin).resolve()
        base = origin.parent if origin.name == "__init__.py" else origin.with_suffix("")
        root = base.parents[len(module_name.split(".")) - 1]
        if str(root) not in paths:
            paths.append(str(root))
    return paths


def add_import_paths(paths: Sequence[str]) -> None:
    """In a trial: make the driver's entry-point modules importable (no-op for folders already there)."""
    for path in paths:
        if path not in sys.path:
            sys.path.insert(0, path)


def call_function(function: Callable[..., Any], spec: str, what: str, **available: Any) -> Any:
    """Call with the keyword arguments of ``available`` that the function declares."""
    parameters: Mapping[str, inspect.Parameter]
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in available.items() if takes_all or k in parameters}
    try:
        return function(**kwargs)
    except SweepError:
        raise
    except SystemExit as err:  # sys.exit(), even sys.exit(0), is no return value: never a silent exit 0
        raise SweepError(f"{what} {spec!r} called sys.exit({err.code!r}) instead of returning; an entry point "
                         "must return its result (or raise)") from None
    except Exception as err:
        raise SweepError(f"{what} {spec!r} raised {first_line(err)}") from None
