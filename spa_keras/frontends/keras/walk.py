"""How a Functional model's graph is read: the Keras nodes in order, their arguments, nested models.

Keras' private graph attributes (``_nodes_by_depth``, ``node.arguments``, ``_inputs_struct``) are read
here and only here.
"""

from __future__ import annotations

import keras

from ...errors import UnsupportedModelError


def functional_of(model):
    """The Functional graph behind a Functional or Sequential model."""
    if isinstance(model, keras.Sequential):
        fn = getattr(model, "_functional", None)
        if fn is None:
            raise UnsupportedModelError(
                f"Sequential model {model.name!r} is not built: give its first layer an input shape "
                "(keras.Input(shape=...)) or call model.build(input_shape) first"
            )
        return fn
    if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth") and model._nodes_by_depth:
        return model
    raise UnsupportedModelError(
        f"{type(model).__name__} {getattr(model, 'name', '')!r} is a subclassed model without a "
        "functional graph: build it with the Functional API (keras.Model(inputs, outputs)) or as a "
        "keras.Sequential, so that spa_keras can see how its layers connect; a custom layer inside such "
        "a model is described to spa_keras with spa.register_layer"
    )


def is_model(op) -> bool:
    return isinstance(op, keras.Model)


def topological_nodes(fmodel):
    """The Keras nodes of a Functional model in execution order (input nodes left out)."""
    for depth in sorted(fmodel._nodes_by_depth, reverse=True):
        for node in fmodel._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node


def fill_in(node, tensor_map):
    """The positional and keyword arguments of a Keras node with its tensors replaced."""
    return node.arguments.fill_in(tensor_map)


def pack_inputs(fmodel, flat):
    """``flat`` tensors in the structure (list, dict, single) of a Functional model's inputs."""
    return keras.tree.pack_sequence_as(fmodel._inputs_struct, flat)


def pack_outputs(fmodel, flat):
    """``flat`` tensors in the structure of a Functional model's outputs."""
    return keras.tree.pack_sequence_as(fmodel._outputs_struct, flat)
