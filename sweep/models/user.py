"""A user's model: ``--model mypkg.models:build`` (see :mod:`sweep.data.entry_points` for how it is imported).

A model function is called with whichever of ``input_shape`` (C, H, W) and ``num_classes`` it
declares, and returns an ``nn.Module`` whose forward gives (batch, num_classes) logits. Its
layers, which ``frozen_layers`` and ``lr_decay`` count, are its ``layers()`` method if it has one,
else its top-level children that hold parameters (see :func:`sweep.models.named_layers`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sweep.data.entry_points import call_function, first_line, load_function
from sweep.errors import ConfigError
from sweep.models.layers import LayeredModel, Wrapped, named_layers


def build_user_model(spec: str, input_shape: tuple[int, ...], num_classes: int) -> LayeredModel:
    """The user's model, wrapped so that it lists its layers, checked on a dummy batch."""
    function = load_function(spec, "model")
    net = call_function(function, spec, "model", input_shape=tuple(input_shape), num_classes=num_classes)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model {spec!r} returned {type(net).__name__}, expected a torch.nn.Module")
    model = net if isinstance(net, LayeredModel) else Wrapped(net)
    if not named_layers(model):
        raise ConfigError(f"model {spec!r}: {type(net).__name__} has no parameters to train")
    was_training = model.training
    model.eval()  # a BatchNorm must not learn from the zeros
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as err:
        raise ConfigError(f"model {spec!r} fails on a batch of shape {[2, *input_shape]}: {first_line(err)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, num_classes):
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"model {spec!r} outputs {shape} for a batch of 2; expected [2, {num_classes}] logits")
    return model


