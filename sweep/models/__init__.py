"""Models: built-in (MLP, CNN), torchvision ResNets and a user's module:function; named layers,
freezing, loading weights."""

from sweep.models.builtin import CNN, MLP, Dropout, build_model, dropout_layers, torchvision_resnet
from sweep.models.layers import LayeredModel, Wrapped, freeze_layers, layer_parameters, named_layers, unwrap
from sweep.models.weights import load_weights, read_state_dict, save_weights

__all__ = ["CNN", "MLP", "Dropout", "LayeredModel", "Wrapped", "build_model", "dropout_layers", "freeze_layers",
           "layer_parameters", "load_weights", "named_layers", "read_state_dict", "save_weights", "torchvision_resnet",
           "unwrap"]
