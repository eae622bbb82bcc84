"""Models. Each exposes ``layers()``: its parametrised layers in forward order, so that
"freeze the first k layers" means one thing for every model.

Besides the built-in MLP and CNN: torchvision ResNets by name (``resnet18``, weights=None), whose
layers are the named blocks stem, layer1..layer4, head; and any ``nn.Module`` (a user's
``module:function`` builder), whose layers are its own ``layers()`` if it defines one, else its
top-level children that hold parameters, in registration order. Both are wrapped in
:class:`Wrapped`; :func:`unwrap` gives back the module itself, whose ``state_dict`` is what
checkpoints hold, so a checkpoint loads into the user's own model unchanged.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from sweep.atomic import atomic_write
from sweep.config import TORCHVISION_MODELS
from sweep.errors import ConfigError


class LayeredModel(nn.Module):
    """A classifier whose parametrised layers are listed in order by ``layers()``."""

    def layers(self) -> list[nn.Module]:
        raise NotImplementedError


class Wrapped(LayeredModel):
    """Any classifier ``net`` as a LayeredModel; its layers are :func:`named_layers` of ``net``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def layers(self) -> list[nn.Module]:
        return [layer for _, layer in named_layers(self.net)]


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose ``state_dict`` a checkpoint holds: the user's or torchvision's, not the wrapper."""
    return model.net if isinstance(model, Wrapped) else model


RESNET_BLOCKS = (("stem", ("conv1", "bn1")), *((f"layer{i}", (f"layer{i}",)) for i in range(1, 5)), ("head", ("fc",)))


def named_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's layers (blocks) in forward order, named; what ``frozen_layers`` counts.

    A LayeredModel's ``layers()`` (or any module's own ``layers()`` method); a torchvision ResNet's
    stem, layer1..layer4 and head; else the top-level children that hold parameters, unless the
    module holds parameters of its own (outside any child): then it is one layer, so that no
    parameter is left out of training.
    """
    if isinstance(model, Wrapped):
        return named_layers(model.net)
    if isinstance(model, LayeredModel) or inspect.ismethod(getattr(model, "layers", None)):
        names = {id(module): name for name, module in model.named_modules() if name}
        layers = list(model.layers())  # type: ignore[operator]
        return [(names.get(id(layer), f"layer{index}"), layer) for index, layer in enumerate(layers)]
    if type(model).__name__ == "ResNet" and type(model).__module__.startswith("torchvision."):
        return [(name, nn.ModuleList([getattr(model, part) for part in parts]) if len(parts) > 1
                 else getattr(model, parts[0])) for name, parts in RESNET_BLOCKS]
    if any(True for _ in model.parameters(recurse=False)):
        return [(type(model).__name__, model)]
    return [(name, child) for name, child in model.named_children() if any(True for _ in child.parameters())]


def freeze_layers(model: nn.Module, k: int) -> list[nn.Parameter]:
    """Freeze the first k layers of :func:`named_layers`; return the parameters left to train.

    BatchNorm layers inside frozen layers run as in eval mode while frozen (their running
    statistics neither normalise the batch with its own statistics nor drift), whatever
    ``model.train()`` says: a frozen block computes exactly the function it was frozen with.
    """
    trainable: list[nn.Parameter] = []
    for index, (_, layer) in enumerate(named_layers(model)):
        frozen = index < k
        for p in layer.parameters():
            p.requires_grad_(not frozen)
            if not frozen:
                trainable.append(p)
        for module in layer.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                _hold_statistics(module, frozen)
    return trainable


def _hold_statistics(norm: nn.Module, frozen: bool) -> None:
    installed = hasattr(norm, "_sweep_frozen")
    if frozen and not installed:  # hooks once per module, when first frozen; they read the flag at each call
        norm.register_forward_pre_hook(_frozen_norm_pre_hook)
        norm.register_forward_hook(_frozen_norm_post_hook, always_call=True)
    if frozen or installed:
        norm._sweep_frozen = frozen
        norm._sweep_was_training = False


def _frozen_norm_pre_hook(module: nn.Module, args: tuple) -> None:
    if module.training and module._sweep_frozen:
        module.training, module._sweep_was_training = False, True  # this call only: eval-mode normalisation


def _frozen_norm_post_hook(module: nn.Module, args: tuple, output: Tensor) -> None:
    if module._sweep_was_training:
        module.training, module._sweep_was_training = True, False


class MLP(LayeredModel):
    """Flatten -> [Linear -> ReLU] * len(hidden) -> Linear. Default 784-256-256-10."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)  # (batch, classes)

    def layers(self) -> list[nn.Module]:
        return [*self.hidden, self.head]


class CNN(LayeredModel):
    """Two 3x3 conv blocks (32, 64 channels, each followed by 2x2 max-pool), a 128-unit FC, a head."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        self.convs = nn.ModuleList()
        for out_channels in channels:
            self.convs.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
            in_channels = out_channels
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ConfigError(f"input {list(input_shape)} is too small for {len(channels)} pooling stages")
        self.fc = nn.Linear(in_channels * height * width, 128)
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = torch.max_pool2d(torch.relu(conv(x)), 2)
        return self.head(torch.relu(self.fc(x.flatten(1))))  # (batch, classes)

    def layers(self) -> list[nn.Module]:
        return [*self.convs, self.fc, self.head]


SMALL_INPUT = 64  # a ResNet on inputs smaller than this per side gets CIFAR's stem: 3x3 stride 1, no max-pool


def torchvision_resnet(name: str, input_shape: Sequence[int], num_classes: int) -> Wrapped:
    """torchvision's ``name`` with weights=None and a ``num_classes`` head, its stem fitted to the input.

    Small inputs (28x28 MNIST, 32x32 CIFAR) get a 3x3 stride-1 stem without max-pool, so that
    layer4 still sees more than one pixel; any channel count (1 for MNIST) gets a stem of its own.
    """
    if len(input_shape) != 3:
        raise ConfigError(f"model {name} needs image inputs (C, H, W), got shape {list(input_shape)}")
    import torchvision  # optional dependency, imported where used

    channels, height, width = input_shape
    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if min(height, width) < SMALL_INPUT:
        net.conv1 = nn.Conv2d(channels, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, net.conv1.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's own init
    return Wrapped(net)


ModelBuilder = Callable[[tuple[int, ...], int, tuple[int, ...]], LayeredModel]

MODELS: dict[str, ModelBuilder] = {
    "mlp": lambda input_shape, num_classes, hidden: MLP(math.prod(input_shape), num_classes, hidden),
    "cnn": lambda input_shape, num_classes, hidden: CNN(input_shape, num_classes),
    **{name: (lambda input_shape, num_classes, hidden, _name=name: torchvision_resnet(_name, input_shape, num_classes))
       for name in TORCHVISION_MODELS},
}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256)
) -> LayeredModel:
    """Build a registered model, or a user's ``module:function`` one, for inputs of ``input_shape``
    (C, H, W) and a head of ``num_classes``."""
    if ":" in name:
        from sweep.entry_points import build_user_model

        return build_user_model(name, tuple(input_shape), num_classes)
    if name not in MODELS:
        raise ConfigError(f"model {name!r} is unknown; allowed: {', '.join(MODELS)}, or module:function")
    return MODELS[name](tuple(input_shape), num_classes, tuple(hidden))


# --- weights files: state_dicts of unwrap(model), read with weights_only=True (nothing is unpickled)


def read_state_dict(path: str | os.PathLike[str], what: str = "weights") -> dict[str, Tensor]:
    """A state_dict file (or a dict holding one under "state_dict" or "model"), on the CPU."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} file {file} does not exist")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
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


def layer_parameters(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameters grouped by parametrised layer, in forward order."""
    layers = model.layers() if isinstance(model, LayeredModel) else None
    if layers is None:
        raise ConfigError(f"model {type(model).__name__} does not list its layers (needs a layers() method)")
    return [list(layer.parameters()) for layer in layers]
