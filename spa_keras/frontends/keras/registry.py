"""The registry of Keras layer classes: what each class means for channels.

What a layer class means is one entry: a function ``fn(call) -> Spec`` that says the op kind, which of
its weights follow which tensor's channels, its MACs, and how to rewrite its config for new widths.
A layer that no entry covers is never guessed at: it is held fixed and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import keras

from ...errors import InvalidArgumentError
from ...graph import BIAS, IN, OUT, WEIGHT
from ..spec import Spec

@dataclass
class Call:
    """One call of a layer: input and output shapes without the batch axis, and the Keras node."""

    layer: object
    in_shapes: list
    out_shapes: list
    node: object = None
    options: dict = field(default_factory=dict)

    @property
    def out_spatial(self) -> int:
        return _spatial(self.out_shapes[0])

    @property
    def in_spatial(self) -> int:
        return _spatial(self.in_shapes[0])

    def argument(self, position: int, keyword: str):
        """The call's argument by position or keyword (None when absent)."""
        args = self.node.arguments
        if len(args.args) > position:
            return args.args[position]
        return args.kwargs.get(keyword)

    def input_index(self, tensor) -> int:
        """Position of a KerasTensor argument among the node's inputs."""
        return [id(t) for t in self.node.input_tensors].index(id(tensor))


def _spatial(shape) -> int:
    n = 1
    for d in shape[:-1]:
        n *= int(d) if d is not None else 1
    return n


REGISTRY: dict[type, Callable[[Call], Spec]] = {}
REGISTRY_BY_NAME: dict[str, Callable[[Call], Spec]] = {}


def register(*classes):
    """Register a function ``fn(call) -> Spec`` for layer classes, or for classes named by their module
    path (``"keras_hub.src.models.llama.llama_decoder.LlamaTransformerDecoder"``: no import needed), or
    by their bare name for layers that ``keras.applications`` defines without exporting them."""

    def deco(fn):
        for c in classes:
            if isinstance(c, str):
                REGISTRY_BY_NAME[c] = fn
            else:
                REGISTRY[c] = fn
        return fn

    return deco


def register_layer(cls, kind: str = "identity", params: dict | None = None, config: dict | None = None,
                   macs=None, describe=None):
    """Tell spa_keras how a layer class of yours acts on channels. Returns ``cls`` (usable as a
    decorator through :func:`functools.partial` or directly).

    Declaratively, for the common cases:

    - ``kind``: ``"identity"`` (output channels are the input's: a per-channel scale, an activation),
      ``"linear"`` (fresh output channels: a dense or conv-like layer), ``"merge"`` (element-wise over
      several inputs), ``"depthwise"``, ``"concat"``, ``"flatten"`` or ``"fixed"`` (hold it).
    - ``params``: ``{weight name: {axis: "in" | "out"}}`` — which axis of each weight runs along the
      input's or the output's channels (``"in"`` is input 0; an :class:`AxisRef` for more). A value
      ``(axes, role)`` sets the role (``"weight"``, ``"bias"``, ``"stat"``); by default weights of rank
      > 1 are scored by magnitude criteria and 1-D ones are sliced as biases.
    - ``config``: ``{config key: "in" | "out"}`` — config entries that hold a width and must follow it.
    - ``macs``: ``fn(call) -> [(constant, [AxisRef, ...]), ...]`` (see :class:`Node`), optional.

    Or pass ``describe(call) -> Spec`` for anything else.

    >>> import keras, spa_keras as spa
    >>> class Scale(keras.layers.Layer):
    ...     def build(self, shape):
    ...         self.scale = self.add_weight(shape=(shape[-1],), initializer="ones", name="scale")
    ...     def call(self, x):
    ...         return x * self.scale
    >>> _ = spa.register_layer(Scale, kind="identity", params={"scale": {0: "out"}})
    """
    if describe is None:
        from ...graph import RULES

        if kind not in RULES or kind in ("input", "attention", "recurrent"):
            raise InvalidArgumentError(f"register_layer: kind must be one of identity, linear, merge, depthwise, "
                                       f"concat, flatten, fixed; got {kind!r}")
        side = {"in": IN, "out": OUT}

        def describe(call: Call) -> Spec:
            ranks = {v.name.split("/")[-1]: len(v.shape) for v in call.layer.weights}
            ps = {}
            for name, value in (params or {}).items():
                axes, role = value if isinstance(value, tuple) else (value, None)
                axes = {int(a): side.get(r, r) for a, r in axes.items()}
                ps[name] = (axes, role or (WEIGHT if ranks.get(name, 1) > 1 else BIAS))

            def resize(cfg, w):
                for key, s in (config or {}).items():
                    cfg[key] = w(side.get(s, s))

            return Spec(kind, ps, {}, list(macs(call)) if macs else [], resize if config else None)

    if not isinstance(cls, type) or not issubclass(cls, keras.layers.Layer):
        raise InvalidArgumentError(f"register_layer expects a keras.layers.Layer subclass, got {cls!r}")
    REGISTRY[cls] = describe
    return cls


def lookup(layer):
    """The registry entry for a layer (by its class or a base class), or None."""
    for cls in type(layer).__mro__:
        by_name = REGISTRY_BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")  # keras_hub's, by module path
        if by_name is not None:
            return by_name
        if cls in REGISTRY:
            return REGISTRY[cls]
    if type(layer).__module__.startswith("keras.src.applications"):
        return REGISTRY_BY_NAME.get(type(layer).__name__)
    return None


def _channels_first(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_first"


def _set_last(shape, n):
    shape = list(shape)
    shape[-1] = int(n)
    return shape



def identity(call: Call | None = None) -> Spec:
    return Spec("identity")

