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

from torch import Tensor, nn

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
        layers = list(model.layers())  # type: ignore[operator]  # a method (checked above); torch types it a Module
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
        _set_flags(norm, _sweep_frozen=frozen, _sweep_was_training=False)


def _frozen_norm_pre_hook(module: nn.Module, args: tuple) -> None:
    if module.training and module._sweep_frozen:
        module.training = False  # this call only: eval-mode normalisation
        _set_flags(module, _sweep_was_training=True)


def _frozen_norm_post_hook(module: nn.Module, args: tuple, output: Tensor) -> None:
    if module._sweep_was_training:
        module.training = True
        _set_flags(module, _sweep_was_training=False)


def _set_flags(module: nn.Module, **flags: bool) -> None:
    """Plain attributes on a module (torch's stubs type ``Module.__setattr__`` for tensors and modules only)."""
    for name, value in flags.items():
        setattr(module, name, value)




def layer_parameters(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameters grouped by parametrised layer, in forward order."""
    layers = model.layers() if isinstance(model, LayeredModel) else None
    if layers is None:
        raise ConfigError(f"model {type(model).__name__} does not list its layers (needs a layers() method)")
    return [list(layer.parameters()) for layer in layers]
