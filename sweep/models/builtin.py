"""Built-in models (the Split-MNIST MLP, a small CNN), torchvision ResNets by name, and a user's
module:function builder: :func:`build_model` picks one."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.config import TORCHVISION_MODELS
from sweep.errors import ConfigError
from sweep.models.layers import LayeredModel, Wrapped
from sweep.reading import check_memory

TRAINING_COPIES = 4  # float32 weights, their gradients and Adam's two moments: the least a trained model holds


def check_mlp_memory(in_features: int, num_classes: int, hidden: Sequence[int]) -> None:
    """Refuse an MLP whose training would need more memory than this machine has available."""
    sizes = [in_features, *hidden, num_classes]
    params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    check_memory(params * 4 * TRAINING_COPIES, f"model mlp with hidden {list(hidden)} ({params:,} parameters, "
                 f"trained with Adam)", ConfigError)


class Dropout(nn.Module):
    """Dropout whose masks come from :attr:`generator`, which the trainer sets from the run's own generator
    for each task it trains; torch's ``nn.Dropout`` draws from the process-wide generator, which seeds in
    lockstep share and a run resumed from the task-prefix cache never saw. Without a generator (your own
    loop) it draws from torch's global one. Off in eval mode; ``p = 0`` returns its input untouched."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.generator: torch.Generator | None = None  # on the activations' device

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.generator is None:
            return F.dropout(x, self.p, training=True)
        keep = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def dropout_layers(model: nn.Module) -> list[Dropout]:
    """The model's :class:`Dropout` modules that drop something (``p > 0``)."""
    return [m for m in model.modules() if isinstance(m, Dropout) and m.p > 0]


class MLP(LayeredModel):
    """Flatten -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear. Default 784-256-256-10, no dropout."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 256),
                 dropout: float = 0.0) -> None:
        check_mlp_memory(in_features, num_classes, hidden)  # refused before a byte is allocated
        super().__init__()
        sizes = [in_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], num_classes)
        self.drop = Dropout(dropout)  # no weights: checkpoints are the same with or without it

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = self.drop(torch.relu(layer(x)))
        return self.head(x)  # (batch, classes)

    def layers(self) -> list[nn.Module]:
        return [*self.hidden, self.head]


class CNN(LayeredModel):
    """Two 3x3 conv blocks (32, 64 channels, each followed by 2x2 max-pool), a 128-unit FC, dropout, a head."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (32, 64),
                 dropout: float = 0.0) -> None:
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
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = torch.max_pool2d(torch.relu(conv(x)), 2)
        return self.head(self.drop(torch.relu(self.fc(x.flatten(1)))))  # (batch, classes)

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


ModelBuilder = Callable[[tuple[int, ...], int, tuple[int, ...], float], LayeredModel]  # shape, classes, hidden, dropout
DROPOUT_MODELS = ("mlp", "cnn")  # the models built with a Dropout of their own


def _resnet_builder(name: str) -> ModelBuilder:
    return lambda input_shape, num_classes, hidden, dropout: torchvision_resnet(name, input_shape, num_classes)


MODELS: dict[str, ModelBuilder] = {
    "mlp": lambda input_shape, num_classes, hidden, dropout: MLP(math.prod(input_shape), num_classes, hidden,
                                                                 dropout=dropout),
    "cnn": lambda input_shape, num_classes, hidden, dropout: CNN(input_shape, num_classes, dropout=dropout),
    **{name: _resnet_builder(name) for name in TORCHVISION_MODELS},
}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256), dropout: float = 0.0
) -> LayeredModel:
    """Build a registered model, or a user's ``module:function`` one, for inputs of ``input_shape``
    (C, H, W) and a head of ``num_classes``; ``dropout`` > 0 only for the built-in mlp and cnn."""
    if dropout and name not in DROPOUT_MODELS:
        raise ConfigError(f"dropout {dropout:g} applies to the built-in {' and '.join(DROPOUT_MODELS)} only, not to "
                          f"model {name}; set dropout to 0")
    if ":" in name:
        from sweep.models.user import build_user_model

        return build_user_model(name, tuple(input_shape), num_classes)
    if name not in MODELS:
        raise ConfigError(f"model {name!r} is unknown; allowed: {', '.join(MODELS)}, or module:function")
    return MODELS[name](tuple(input_shape), num_classes, tuple(hidden), dropout)


