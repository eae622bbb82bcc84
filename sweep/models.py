"""Models. Each exposes ``layers()``: its parametrised layers in forward order, so that
"freeze the first k layers" means one thing for every model."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from sweep.errors import ConfigError


class LayeredModel(nn.Module):
    """A classifier whose parametrised layers are listed in order by ``layers()``."""

    def layers(self) -> list[nn.Module]:
        raise NotImplementedError


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


ModelBuilder = Callable[[tuple[int, ...], int, tuple[int, ...]], LayeredModel]

MODELS: dict[str, ModelBuilder] = {
    "mlp": lambda input_shape, num_classes, hidden: MLP(math.prod(input_shape), num_classes, hidden),
    "cnn": lambda input_shape, num_classes, hidden: CNN(input_shape, num_classes),
}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256)
) -> LayeredModel:
    """Build a registered model for inputs of ``input_shape`` (C, H, W) and a head of ``num_classes``."""
    if name not in MODELS:
        raise ConfigError(f"model {name!r} is unknown; allowed: {', '.join(MODELS)}")
    return MODELS[name](tuple(input_shape), num_classes, tuple(hidden))


def layer_parameters(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameters grouped by parametrised layer, in forward order."""
    layers = model.layers() if isinstance(model, LayeredModel) else None
    if layers is None:
        raise ConfigError(f"model {type(model).__name__} does not list its layers (needs a layers() method)")
    return [list(layer.parameters()) for layer in layers]
