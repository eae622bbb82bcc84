"""Weights files: state_dicts of ``unwrap(model)``, read with ``weights_only=True`` (nothing is unpickled)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from sweep.atomic import atomic_write
from sweep.errors import ConfigError
from sweep.models.layers import unwrap
from sweep.reading import open_regular


def read_state_dict(path: str | os.PathLike[str], what: str = "weights") -> dict[str, Tensor]:
    """A state_dict file (or a dict holding one under "state_dict" or "model"), on the CPU.

    Raises:
        ConfigError: the file is missing, not a regular file, larger than ``LIMITS["checkpoint"]``
            (:mod:`sweep.reading`), or not a state_dict ``torch.load`` reads with ``weights_only=True``.
    """
    file = Path(path)
    # a regular file within the checkpoint cap: /dev/zero or a pipe would be read forever
    handle = open_regular(file, f"{what} file", "checkpoint", ConfigError)
    try:
        with handle:
            data = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError, EOFError across torch versions
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{what} file {file} is not a state_dict readable with weights_only=True ({first})") from None
    if isinstance(data, Mapping) and not all(isinstance(v, Tensor) for v in data.values()):
        data = next((data[k] for k in ("state_dict", "model") if isinstance(data.get(k), Mapping)), data)
    if not isinstance(data, Mapping) or not data or not all(isinstance(v, Tensor) for v in data.values()):
        raise ConfigError(f"{what} file {file} holds {type(data).__name__}, not a state_dict (name -> tensor)")
    return dict(data)


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True,
                 what: str = "pretrained") -> list[str]:
    """Load a state_dict file into ``unwrap(model)``; returns the names left at their initialisation.

    strict: every name and shape must match (a checkpoint of this very model). Not strict: names
    absent from the file or of another shape (a new head, a refitted stem) keep their
    initialisation, with a warning; a file that matches nothing is an error either way.
    """
    net = unwrap(model)
    state = read_state_dict(path, what)
    own = net.state_dict()
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    missing = sorted(set(own) - set(state))
    usable = {k: v for k, v in state.items() if k in own and k not in wrong}
    if not usable or (strict and (unexpected or wrong or missing)):
        problems = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in wrong[:3]]
        problems += [f"unexpected {k}" for k in unexpected[:3]] + [f"missing {k}" for k in missing[:3]]
        raise ConfigError(f"{what} file {path} does not fit model {type(net).__name__}: {'; '.join(problems[:4])}"
                          + (" (no tensor matches)" if not usable else ""))
    kept = sorted(set(own) - set(usable))
    if kept:
        warnings.warn(f"{what} file {path}: {len(kept)} tensors keep their initialisation "
                      f"({', '.join(kept[:4])}{', ...' if len(kept) > 4 else ''})", stacklevel=2)
    with torch.no_grad():
        for name, tensor in usable.items():
            own[name].copy_(tensor)
    return kept


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``unwrap(model)``'s state_dict atomically (temporary file, then rename)."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
    atomic_write(file, lambda handle: torch.save(state, handle))
    return file


