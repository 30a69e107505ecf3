"""Keras 3 models into the standard channel graph.

- :mod:`.registry`: what a layer class means for channels (one entry per class; ``register_layer``
  for your own classes);
- :mod:`.layers` and :mod:`.ops`: the entries for Keras' own layers and for ``keras.ops`` calls;
- :mod:`.graph`: the walk of a Functional or Sequential model (:func:`from_keras`, :class:`KerasGraph`),
  over :mod:`.walk` (the one place Keras' private graph attributes are read);
- :mod:`.runner`, :mod:`.gradients`, :mod:`.view`: running the graph op by op, gradient statistics,
  and the rest of the frontend interface the algorithms use.
"""

from . import hub as _hub  # noqa: F401 - registers keras_hub's blocks (by name: keras_hub is not imported)
from . import layers as _layers  # noqa: F401 - registers Keras' own layers
from .graph import KerasGraph, from_keras, param_name, snapshot
from .walk import fill_in, functional_of, is_model, pack_inputs, pack_outputs, topological_nodes
from .registry import REGISTRY, Call, register, register_layer
from ..spec import Spec

__all__ = [
    "KerasGraph", "from_keras", "functional_of", "is_model", "topological_nodes", "fill_in", "pack_inputs",
    "pack_outputs", "param_name", "snapshot", "REGISTRY", "Call", "register", "register_layer", "Spec",
]
