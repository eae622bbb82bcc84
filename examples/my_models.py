"""Your own model for ``sweep``: ``--model examples.my_models:build``.

``build`` is called with the arguments it declares among ``input_shape`` (C, H, W) and
``num_classes``, and returns an ``nn.Module`` giving (batch, num_classes) logits. Its layers, the
unit of ``frozen_layers`` and ``lr_decay``, are its top-level children that hold parameters, in
the order they are assigned: here ``block1``, ``block2``, ``head``. (Define a ``layers()`` method
returning modules to count them differently.) The BatchNorm layers of a frozen block run in eval
mode, so freezing a block freezes its statistics too.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                                    nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(x)).flatten(1))  # (batch, classes)


def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return SmallNet(input_shape[0], num_classes)
