"""Keras 3 models into the standard channel graph.

:func:`from_keras` walks a Functional or Sequential model (nested models inlined, shared layers and
non-Layer ``keras.ops`` nodes included) and describes every call as a :class:`~spa_keras.graph.Node`.
What a layer class means for channels is one entry of :data:`REGISTRY`: the op kind, which of its
weights follow which tensor's channels, its MACs, and how to rewrite its config for new widths.
A layer that no entry covers is never guessed at: it is held fixed and reported.

Keras' private graph attributes (``_nodes_by_depth``, ``node.arguments``) are read here and only here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import keras

from ..errors import InvalidArgumentError, NonFiniteWeightsError, UnsupportedModelError
from ..graph import BIAS, IN, OUT, STAT, WEIGHT, AxisRef, Graph, Node, Param
from .spec import Spec, fixed

L = keras.layers

# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------


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
    """Register a function ``fn(call) -> Spec`` for layer classes (or, for layers defined inside
    ``keras.applications`` that Keras does not export, for class names)."""

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
        from ..graph import RULES

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


def _lookup(layer):
    for cls in type(layer).__mro__:
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


# ---- producers -----------------------------------------------------------------------------------


@register(L.Conv1D, L.Conv2D, L.Conv3D)
def _conv(call: Call) -> Spec:
    layer = call.layer
    if _channels_first(layer):
        return fixed("channels_first layout is not supported; use channels_last")
    rank = len(layer.kernel_size)
    cin, cout = call.in_shapes[0][-1], layer.filters
    g = int(getattr(layer, "groups", 1) or 1)
    ks = int(np.prod(layer.kernel_size))
    k_in, k_out = rank, rank + 1
    if g > 1 and g == cin:  # depthwise written as a grouped conv: input c feeds outputs c*m..c*m+m-1

        def resize(cfg, w):
            cfg["filters"] = w(OUT)
            cfg["groups"] = w(IN)

        return Spec(
            "depthwise",
            {"kernel": ({k_out: OUT}, WEIGHT), "bias": ({0: OUT}, BIAS)},
            {"multiplier": cout // cin},
            [(call.out_spatial * ks, [OUT])],
            resize,
        )

    def resize(cfg, w):
        cfg["filters"] = w(OUT)

    k_in_ref = AxisRef("in", 0, block=True) if g > 1 else IN
    return Spec(
        "linear",
        {"kernel": ({k_in: k_in_ref, k_out: OUT}, WEIGHT), "bias": ({0: OUT}, BIAS)},
        {"groups": g},
        [(call.out_spatial * ks / g, [IN, OUT])],
        resize,
    )


@register(L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
def _conv_transpose(call: Call) -> Spec:
    layer = call.layer
    if _channels_first(layer):
        return fixed("channels_first layout is not supported; use channels_last")
    rank = len(layer.kernel_size)
    ks = int(np.prod(layer.kernel_size))

    def resize(cfg, w):
        cfg["filters"] = w(OUT)

    return Spec(
        "linear",
        {"kernel": ({rank: OUT, rank + 1: IN}, WEIGHT), "bias": ({0: OUT}, BIAS)},
        {},
        [(call.in_spatial * ks, [IN, OUT])],
        resize,
    )


@register(L.DepthwiseConv1D, L.DepthwiseConv2D)
def _depthwise(call: Call) -> Spec:
    layer = call.layer
    if _channels_first(layer):
        return fixed("channels_first layout is not supported; use channels_last")
    rank = len(layer.kernel_size)
    ks = int(np.prod(layer.kernel_size))
    return Spec(
        "depthwise",
        {"kernel": ({rank: IN}, WEIGHT), "bias": ({0: OUT}, BIAS)},
        {"multiplier": int(layer.depth_multiplier)},
        [(call.out_spatial * ks, [OUT])],
    )


@register(L.SeparableConv1D, L.SeparableConv2D)
def _separable(call: Call) -> Spec:
    layer = call.layer
    if _channels_first(layer):
        return fixed("channels_first layout is not supported; use channels_last")
    rank = len(layer.kernel_size)
    m = int(layer.depth_multiplier)
    ks = int(np.prod(layer.kernel_size))

    def resize(cfg, w):
        cfg["filters"] = w(OUT)

    return Spec(
        "linear",
        {
            "depthwise_kernel": ({rank: IN}, WEIGHT),
            "pointwise_kernel": ({rank: AxisRef("in", 0, repeat=m), rank + 1: OUT}, WEIGHT),
            "bias": ({0: OUT}, BIAS),
        },
        {},
        [(call.out_spatial * ks * m, [IN]), (call.out_spatial * m, [IN, OUT])],
        resize,
    )


@register(L.Dense)
def _dense(call: Call) -> Spec:
    def resize(cfg, w):
        cfg["units"] = w(OUT)

    return Spec(
        "linear",
        {"kernel": ({0: IN, 1: OUT}, WEIGHT), "bias": ({0: OUT}, BIAS)},
        {},
        [(call.out_spatial, [IN, OUT])],
        resize,
    )


def _einsum_terms(equation: str):
    lhs, out = equation.split("->")
    inp, ker = lhs.split(",")
    return inp, ker, out


@register(L.EinsumDense)
def _einsum_dense(call: Call) -> Spec:
    layer = call.layer
    inp, ker, out = _einsum_terms(layer.equation)
    kshape = tuple(layer.kernel.shape)
    reduced = [d for c, d in zip(ker, kshape) if c not in out]
    total = _spatial(call.out_shapes[0] + (1,)) * int(np.prod(reduced or [1]))
    a, b = inp[-1], out[-1]
    dense_like = (
        "." not in ker and a in ker and a not in out and b in ker and b not in inp and ker.count(a) == 1
    )
    if not dense_like:
        return fixed(f"EinsumDense equation {layer.equation!r} does not act on the last axis alone", total)
    cin, cout = call.in_shapes[0][-1], call.out_shapes[0][-1]
    params = {"kernel": ({ker.index(a): IN, ker.index(b): OUT}, WEIGHT)}
    bias_axes = layer.bias_axes or ""
    if bias_axes:
        params["bias"] = ({len(layer.bias.shape) - 1: OUT}, BIAS) if b in bias_axes else ({}, BIAS)

    def resize(cfg, w):
        shape = cfg["output_shape"]
        cfg["output_shape"] = w(OUT) if isinstance(shape, int) else _set_last(shape, w(OUT))

    return Spec("linear", params, {}, [(total / (cin * cout), [IN, OUT])], resize)


@register(L.Embedding)
def _embedding(call: Call) -> Spec:
    def resize(cfg, w):
        cfg["output_dim"] = w(OUT)

    return Spec("linear", {"embeddings": ({1: OUT}, WEIGHT)}, {}, [], resize)


# ---- channel-wise ops ----------------------------------------------------------------------------


def identity(call: Call | None = None) -> Spec:
    return Spec("identity")


@register(L.BatchNormalization)
def _batchnorm(call: Call) -> Spec:
    layer = call.layer
    rank = len(call.in_shapes[0]) + 1
    if layer.axis not in (-1, rank - 1):
        return fixed(f"BatchNormalization on axis {layer.axis}, not the channel axis")
    return Spec(
        "identity",
        {
            "gamma": ({0: OUT}, WEIGHT, "norm_scale"),
            "beta": ({0: OUT}, BIAS),
            "moving_mean": ({0: OUT}, BIAS),
            "moving_variance": ({0: OUT}, STAT),
        },
    )


@register(L.LayerNormalization, L.GroupNormalization, L.UnitNormalization)
def _norm_across_channels(call: Call) -> Spec:
    layer = call.layer
    rank = len(call.in_shapes[0]) + 1
    axes = getattr(layer, "axis", None)
    axes = list(axes) if isinstance(axes, (list, tuple)) else [axes]
    if (
        call.options.get("prune_layer_norm")
        and isinstance(layer, L.LayerNormalization)
        and [a % rank for a in axes] == [rank - 1]
    ):
        params = {"gamma": ({0: OUT}, WEIGHT, "norm_scale"), "beta": ({0: OUT}, BIAS)}
        return Spec("identity", params)
    return fixed(
        f"{type(call.layer).__name__} normalises across channels: removing one changes the others "
        "(its stream is held fixed; prune_layer_norm=True prunes LayerNorm streams approximately)"
    )


@register(L.Normalization)
def _normalization(call: Call) -> Spec:
    cfg = call.layer.get_config()
    axis = cfg.get("axis")
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if cfg.get("mean") is not None or cfg.get("invert") or axis not in (-1, len(call.in_shapes[0])):
        return fixed("Normalization with statistics in its config or on another axis")
    return Spec("identity", {"mean": ({0: OUT}, BIAS), "variance": ({0: OUT}, STAT)})


@register(L.Rescaling)
def _rescaling(call: Call) -> Spec:
    cfg = call.layer.get_config()
    if any(np.ndim(cfg.get(k, 0)) > 0 and np.size(cfg.get(k)) > 1 for k in ("scale", "offset")):
        return fixed("Rescaling with a per-channel scale or offset")
    return identity()


@register(L.Activation)
def _activation(call: Call) -> Spec:
    name = keras.activations.serialize(call.layer.activation)
    name = name if isinstance(name, str) else str(name.get("config", name))
    if "softmax" in name:
        return fixed("softmax mixes channels")
    return identity()


@register(L.Softmax)
def _softmax(call: Call) -> Spec:
    axis = call.layer.axis
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    rank = len(call.in_shapes[0]) + 1
    if any(a in (-1, rank - 1) for a in axes):
        return fixed("softmax mixes channels")
    return identity()


@register(L.PReLU)
def _prelu(call: Call) -> Spec:
    nd = len(call.layer.alpha.shape)
    return Spec("identity", {"alpha": ({nd - 1: OUT}, BIAS)})


@register(L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D)
def _dropout(call: Call) -> Spec:
    def resize(cfg, w):
        ns = cfg.get("noise_shape")
        if ns is not None and ns[-1] not in (None, 1):
            cfg["noise_shape"] = _set_last(ns, w(OUT))

    return Spec("identity", resize=resize)


for _cls in (
    L.ReLU, L.LeakyReLU, L.ELU, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
    L.ActivityRegularization, L.Identity, L.Masking,
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
    L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
    L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
):  # fmt: skip

    def _channelwise(call: Call, _name=_cls.__name__) -> Spec:
        if _channels_first(call.layer):
            return fixed("channels_first layout is not supported; use channels_last")
        return identity()

    register(_cls)(_channelwise)


@register(L.Flatten)
def _flatten(call: Call) -> Spec:
    if _channels_first(call.layer):
        return fixed("channels_first Flatten reorders features")
    return Spec("identity" if len(call.in_shapes[0]) == 1 else "flatten")


@register(L.Reshape)
def _reshape(call: Call) -> Spec:
    src, dst = tuple(call.in_shapes[0]), tuple(call.out_shapes[0])
    if None in src or None in dst:
        return fixed("Reshape with unknown dimensions")
    if src and dst and src[-1] == dst[-1] and np.prod(src[:-1]) == np.prod(dst[:-1]):

        def keep_last(cfg, w):
            cfg["target_shape"] = _set_last(cfg["target_shape"], w(OUT))

        return Spec("identity", resize=keep_last)
    if len(dst) == 1 and dst[0] == np.prod(src):

        def flat(cfg, w):
            cfg["target_shape"] = [w(OUT)]

        return Spec("flatten", resize=flat)
    return fixed(f"Reshape {src} -> {dst} moves the channel axis")


@register(L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
def _merge(call: Call) -> Spec:
    return Spec("merge")


@register(L.Concatenate)
def _concat(call: Call) -> Spec:
    rank = len(call.out_shapes[0]) + 1
    return Spec("concat" if call.layer.axis in (-1, rank - 1) else "merge")


@register(L.MultiHeadAttention)
def _mha(call: Call) -> Spec:
    """Heads, key width and value width are units of their own; the output projection's width follows
    the query unless ``output_shape`` is set."""
    layer = call.layer
    cfg = layer.get_config()
    q_t, v_t = call.argument(0, "query"), call.argument(1, "value")
    k_t = call.argument(2, "key")
    k_t = v_t if k_t is None else k_t
    qi, vi, ki = call.input_index(q_t), call.input_index(v_t), call.input_index(k_t)
    h, dk = int(layer.num_heads), int(layer.key_dim)
    dv = int(layer.value_dim or dk)
    tq, tk = _spatial(call.in_shapes[qi]), _spatial(call.in_shapes[ki])
    out_shape = cfg.get("output_shape")
    if cfg.get("use_gate") or (out_shape is not None and np.ndim(out_shape) > 0 and len(out_shape) > 1):
        macs = tq * call.in_shapes[qi][-1] * h * dk + tk * h * (dk * call.in_shapes[ki][-1] + dv * call.in_shapes[vi][-1])
        return fixed("MultiHeadAttention with a gate or a multi-axis output_shape is kept whole", macs)
    n = len(call.out_shapes)
    Q, K, V = AxisRef("in", qi), AxisRef("in", ki), AxisRef("in", vi)
    H, DK, DV = AxisRef("out", n), AxisRef("out", n + 1), AxisRef("out", n + 2)

    def resize(c, w):
        c["num_heads"], c["key_dim"], c["value_dim"] = w(H), w(DK), w(DV)
        if out_shape is not None:
            c["output_shape"] = w(OUT)

    def transform(name, value, w):
        # Keras scales queries by 1/sqrt(key_dim): keep the old scale when key_dim shrinks
        if name.startswith("query/"):
            return value * np.sqrt(w(DK) / dk).astype(value.dtype)
        return value

    return Spec(
        "attention",
        {
            "query/kernel": ({0: Q, 1: H, 2: DK}, WEIGHT),
            "query/bias": ({0: H, 1: DK}, BIAS),
            "key/kernel": ({0: K, 1: H, 2: DK}, WEIGHT),
            "key/bias": ({0: H, 1: DK}, BIAS),
            "value/kernel": ({0: V, 1: H, 2: DV}, WEIGHT),
            "value/bias": ({0: H, 1: DV}, BIAS),
            "attention_output/kernel": ({0: H, 1: DV, 2: OUT}, WEIGHT),
            "attention_output/bias": ({0: OUT}, BIAS),
        },
        {"tied": out_shape is None, "query": qi},
        [(tq, [Q, H, DK]), (tk, [K, H, DK]), (tk, [V, H, DV]), (tq * tk, [H, DK]), (tq * tk, [H, DV]),
         (tq, [H, DV, OUT])],
        resize,
        hidden=[("heads", h), ("key_dim", dk), ("value_dim", dv)],
        transform=transform,
    )


_GATES = {L.LSTM: 4, L.GRU: 3, L.SimpleRNN: 1}


def _rnn_params(call: Call, cell_layer, n_out: int, in_ref=IN) -> tuple:
    g = _GATES[type(cell_layer)]
    units = AxisRef("out", n_out)
    gates = AxisRef("out", n_out, tile=g)
    bias_rank = 2 if isinstance(cell_layer, L.GRU) and cell_layer.reset_after else 1
    params = {
        "kernel": ({0: in_ref, 1: gates}, WEIGHT),
        "recurrent_kernel": ({0: units, 1: gates}, WEIGHT),
        "bias": ({bias_rank - 1: gates}, BIAS),
    }
    steps = call.in_shapes[0][0] or 1
    macs = [(steps * g, [in_ref, units]), (steps * g, [units, units])]
    return params, macs, units


@register(L.LSTM, L.GRU, L.SimpleRNN)
def _rnn(call: Call) -> Spec:
    layer = call.layer
    if type(layer) not in _GATES:
        return fixed(f"{type(layer).__name__} is a recurrent layer spa_keras does not know")
    n = len(call.out_shapes)
    params, macs, units = _rnn_params(call, layer, n)

    def resize(cfg, w):
        cfg["units"] = w(units)

    return Spec("recurrent", params, {"units": layer.units}, macs, resize, hidden=[("units", layer.units)])


@register(L.Bidirectional)
def _bidirectional(call: Call) -> Spec:
    layer = call.layer
    fwd, bwd = layer.forward_layer, layer.backward_layer
    if type(fwd) not in _GATES or type(bwd) is not type(fwd):
        return fixed("Bidirectional around a layer other than LSTM, GRU or SimpleRNN")
    n = len(call.out_shapes)
    params, macs, units = _rnn_params(call, fwd, n)

    def resize(cfg, w):
        for key in ("layer", "backward_layer"):
            if cfg.get(key):
                cfg[key]["config"]["units"] = w(units)

    return Spec(
        "recurrent",
        params,
        {"units": fwd.units, "concat": layer.merge_mode == "concat"},
        [(2 * c, refs) for c, refs in macs],
        resize,
        hidden=[("units", fwd.units)],
    )


@register(L.InputLayer)
def _input(call: Call) -> Spec:
    return Spec("input")


# layers that keras.applications defines without exporting them
register("LayerScale")(lambda call: Spec("identity", {"gamma": ({0: OUT}, WEIGHT, "norm_scale")}))
register("StochasticDepth")(identity)
register("CustomScaleLayer")(lambda call: Spec("merge"))


# ---- non-Layer operations (keras.ops calls, x + y) -----------------------------------------------

OPS_MERGE = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power"}
OPS_UNARY = {
    "Relu", "Relu6", "Sigmoid", "Silu", "Swish", "Tanh", "Gelu", "Elu", "Selu", "Celu", "LeakyRelu",
    "HardSigmoid", "HardSilu", "HardSwish", "Softplus", "Softsign", "Mish", "Abs", "Absolute",
    "Square", "Sqrt", "Rsqrt", "Exp", "Log", "Log1p", "Expm1", "Negative", "Sign", "Clip", "Cast",
    "Floor", "Ceil", "Round", "Sin", "Cos", "Erf", "Reciprocal", "StopGradient", "Identity",
    "Tanhshrink", "SoftShrink", "HardShrink", "HardTanh", "SparsePlus", "Squareplus", "LogSigmoid",
}  # fmt: skip
OPS_REDUCE = {"Mean", "Sum", "Max", "Min", "Prod", "Amax", "Amin", "Std", "Var"}


def _const_is_per_channel(node) -> bool:
    """A constant array argument as wide as the channels would be left unsliced."""
    def check(x):
        if isinstance(x, keras.KerasTensor):
            return False
        shape = getattr(x, "shape", None)
        return shape is not None and len(shape) >= 1 and shape[-1] not in (None, 1)

    args = list(node.arguments.args) + list(node.arguments.kwargs.values())
    return any(check(x) for x in keras.tree.flatten(args))


def _key_spares_last_axis(key, rank: int) -> bool:
    """Whether ``x[key]`` leaves the last axis whole (``x[:, 0]``, ``x[..., 1:, :]``)."""
    key = tuple(key) if isinstance(key, (tuple, list)) else (key,)
    if any(k is None for k in key):
        return False
    whole = slice(None)
    if Ellipsis in key:
        tail = key[key.index(Ellipsis) + 1 :]
        return all(k == whole for k in tail)
    return len(key) < rank or key[-1] == whole


def _describe_op(op, call: Call) -> Spec:
    name = type(op).__name__
    if _const_is_per_channel(call.node):
        return fixed(f"keras.ops {name} with a per-channel constant argument")
    if name in OPS_MERGE:
        return Spec("merge")
    if name in OPS_UNARY:
        return identity()
    if name == "Concatenate":
        rank = len(call.out_shapes[0]) + 1
        return Spec("concat" if getattr(op, "axis", None) in (-1, rank - 1) else "merge")
    if name == "GetItem" and _key_spares_last_axis(call.argument(1, "key"), len(call.in_shapes[0]) + 1):
        return identity()
    if name in OPS_REDUCE:
        axis = getattr(op, "axis", None)
        rank = len(call.in_shapes[0]) + 1
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        if axis is not None and all(a not in (-1, rank - 1) for a in axes):
            return identity()
    return fixed(f"keras.ops {name} is not understood")


# --------------------------------------------------------------------------------------------------
# Walking a model
# --------------------------------------------------------------------------------------------------


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


def _shape(t):
    return tuple(t.shape[1:])


def _channels(t) -> int:
    s = t.shape
    if len(s) < 2 or s[-1] is None:
        return 0
    return int(s[-1])


class KerasGraph:
    """A Keras model read as a standard channel graph.

    Attributes: ``model``; ``graph``; ``variables`` (parameter key -> Keras variable); ``specs``
    (node name -> :class:`Spec`); ``layer_nodes`` (id(layer) -> first node of that layer);
    ``model_inputs`` (id(nested model) -> graph tensor ids of its inputs at its first call).
    """

    def __init__(self, model, **options):
        self.model = model
        self.options = options
        self.graph = Graph(model.name)
        self.variables: dict = {}
        self.specs: dict = {}
        self.layer_nodes: dict = {}
        self.model_inputs: dict = {}
        self._calls: dict = {}
        self._seen_tensors: dict = {}
        fmodel = functional_of(model)
        tmap = {}
        for x in fmodel.inputs:
            tid = self.graph.add_tensor(x.name, _shape(x), _channels(x))
            tmap[id(x)] = tid
            self.graph.inputs.append(tid)
        self._walk(fmodel, tmap, "")
        self.graph.outputs = [tmap[id(t)] for t in fmodel.outputs]
        for ids in self._seen_tensors.values():
            for other in ids[1:]:
                self.graph.tie(ids[0], other)

    def weight(self, key) -> np.ndarray:
        return np.asarray(self.variables[key].numpy())

    def gradient_stats(self, data, loss=None, batch_size: int = 8, max_samples: int = 512):
        """Mean gradient and mean squared gradient (empirical Fisher) of the loss over ``data``, per
        parameter key. The model runs in inference mode (BatchNorm statistics are not touched).

        ``loss``: a Keras loss (name or callable ``loss(y_true, y_pred)``). With no targets in the
        data, the loss is half the mean squared output (the output's energy).
        """
        import tensorflow as tf

        from ..data import iterate_batches

        keys = [k for k, v in self.variables.items() if v.trainable]
        tvars = [self.variables[k] for k in keys]
        gsum = [np.zeros(v.shape, np.float64) for v in tvars]
        fsum = [np.zeros(v.shape, np.float64) for v in tvars]
        n = 0
        for x, y in iterate_batches(data, batch_size, max_samples):
            with tf.GradientTape() as tape:
                pred = self.model(x, training=False)
                value = _loss_value(loss, y, pred)
            grads = tape.gradient(value, tvars)
            for i, g in enumerate(grads):
                if g is not None:
                    g = np.asarray(g, np.float64)
                    gsum[i] += g
                    fsum[i] += g * g
            n += 1
        if n == 0:
            raise InvalidArgumentError("the data yielded no batch")
        grad = {k: g / n for k, g in zip(keys, gsum)}
        fisher = {k: f / n for k, f in zip(keys, fsum)}
        zeros = lambda k: np.zeros(self.variables[k].shape)  # noqa: E731 - non-trainable: no gradient
        return (lambda k: grad[k] if k in grad else zeros(k)), (lambda k: fisher[k] if k in fisher else zeros(k))

    def run(self, inputs, keep=None, training: bool = False) -> dict:
        """Execute the model op by op on ``inputs`` and return ``{graph tensor id: value}`` for the
        tensors in ``keep`` (every tensor when None). Traceable: the algorithms call it inside
        ``tf.function`` and ``GradientTape``. ``training`` is passed to every layer that takes it
        (BatchNorm statistics update only when it is True).

        >>> import keras, numpy as np, spa_keras.frontends.keras as fk
        >>> x = keras.Input((4,)); m = keras.Model(x, keras.layers.Dense(2)(x))
        >>> kg = fk.from_keras(m); out = kg.run(np.ones((1, 4), "float32"), keep=kg.graph.outputs)
        >>> out[kg.graph.outputs[0]].shape
        TensorShape([1, 2])
        """
        fmodel = functional_of(self.model)
        flat = keras.tree.flatten(inputs)
        if len(flat) != len(fmodel.inputs):
            raise InvalidArgumentError(
                f"model {self.model.name!r} takes {len(fmodel.inputs)} inputs, got {len(flat)}"
            )
        keep = None if keep is None else set(keep)
        values = {}
        tmap = {}
        for x, v, tid in zip(keras.tree.flatten(fmodel._inputs_struct), flat, self.graph.inputs):
            tmap[id(x)] = v
            if keep is None or tid in keep:
                values[tid] = v
        self._run(fmodel, tmap, iter(self.graph.nodes), values, keep, training)
        return values

    def _run(self, fmodel, tmap, nodes, values, keep, training):
        for knode in topological_nodes(fmodel):
            op = knode.operation
            if is_model(op):
                inner = functional_of(op)
                inner_map = {id(x): tmap[id(t)] for x, t in zip(inner.inputs, knode.input_tensors)}
                self._run(inner, inner_map, nodes, values, keep, training)
                for t, inner_t in zip(knode.output_tensors, inner.outputs):
                    tmap[id(t)] = inner_map[id(inner_t)]
                continue
            node = next(nodes)
            args, kwargs = fill_in(knode, tmap)
            if getattr(op, "_call_has_training_arg", False):
                kwargs["training"] = training
            out = keras.tree.flatten(op(*args, **kwargs))
            for t, v, tid in zip(knode.output_tensors, out, node.outputs):
                tmap[id(t)] = v
                if keep is None or tid in keep:
                    values[tid] = v

    def _walk(self, fmodel, tmap, prefix):
        for knode in topological_nodes(fmodel):
            op = knode.operation
            in_ids = [tmap[id(t)] for t in knode.input_tensors]
            if is_model(op):
                inner = functional_of(op)
                inner_map = {id(x): tid for x, tid in zip(inner.inputs, in_ids)}
                self.model_inputs.setdefault(id(op), in_ids)
                self._walk(inner, inner_map, f"{prefix}{op.name}/")
                for t, inner_t in zip(knode.output_tensors, inner.outputs):
                    tmap[id(t)] = inner_map[id(inner_t)]
                continue
            out_ids = []
            for t in knode.output_tensors:
                tid = self.graph.add_tensor(f"{prefix}{t.name}", _shape(t), _channels(t))
                tmap[id(t)] = tid
                out_ids.append(tid)
                if prefix:  # inner tensor of a nested model: one width however often it is called
                    self._seen_tensors.setdefault(id(t), []).append(tid)
            self._add_node(op, knode, in_ids, out_ids, prefix)
        if prefix:
            for x, tid in ((x, tmap[id(x)]) for x in fmodel.inputs):
                self._seen_tensors.setdefault(id(x), []).append(tid)

    def _add_node(self, op, knode, in_ids, out_ids, prefix):
        g = self.graph
        call = Call(
            op,
            [g.tensors[t].shape for t in in_ids],
            [g.tensors[t].shape for t in out_ids],
            knode,
            self.options,
        )
        if isinstance(op, keras.layers.Layer):
            handler = _lookup(op)
            if handler is None:
                spec = fixed(f"unknown layer class {type(op).__name__}: its channels are held fixed")
            else:
                spec = handler(call)
        else:
            spec = _describe_op(op, call)
        base = f"{prefix}{op.name}"
        k = self._calls.get(base, 0)
        self._calls[base] = k + 1
        name = base if k == 0 else f"{base}#{k}"
        for hname, width in spec.hidden:
            out_ids.append(g.add_tensor(f"{name}:{hname}", (width,), width))
        params = []
        for v in getattr(op, "weights", []) if isinstance(op, keras.layers.Layer) else []:
            key = id(v)
            if key not in self.variables:
                _check_finite(op, v)
            self.variables[key] = v
            short = param_name(spec, v)
            axes, role, *tag = spec.params.get(short, ({}, STAT))
            params.append(Param(key, v.path, tuple(v.shape), dict(axes), role, tag[0] if tag else ""))
        node = Node(name, spec.kind, in_ids, out_ids, params, dict(spec.attrs), list(spec.macs), base,
                    (op, knode))
        g.add_node(node)
        self.specs[name] = spec
        self.layer_nodes.setdefault(id(op), node)


def _check_finite(layer, v) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the layer and the weight if ``v`` holds NaN or Inf."""
    if "float" not in str(v.dtype):
        return
    value = np.asarray(v.numpy())
    if np.isfinite(value).all():
        return
    nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
    raise NonFiniteWeightsError(
        f"layer {layer.name!r} ({type(layer).__name__}): weight {v.name!r} ({v.path}) holds {nan} NaN and "
        f"{inf} Inf values; no criterion can rank its channels. Restore the weights from a checkpoint taken "
        "before training diverged (or lower the learning rate), then prune"
    )


def _loss_value(loss, y, pred):
    outputs = keras.tree.flatten(pred)
    if y is None:
        return sum(0.5 * keras.ops.mean(keras.ops.square(o)) for o in outputs)
    if loss is None:
        out = outputs[0]
        if np.issubdtype(np.asarray(y).dtype, np.integer):
            probs = bool(keras.ops.all(out >= 0)) and bool(
                keras.ops.all(keras.ops.abs(keras.ops.sum(out, axis=-1) - 1.0) < 1e-3)
            )
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not probs)
        else:
            loss = keras.losses.MeanSquaredError()
    fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    return keras.ops.mean(fn(y, outputs[0]))


def param_name(spec: Spec, v) -> str:
    """The key of ``spec.params`` that names variable ``v``: its id, the end of its path, or its
    short name."""
    if id(v) in spec.params:
        return id(v)
    path = v.path
    for key in spec.params:
        if isinstance(key, str) and "/" in key and path.endswith("/" + key):
            return key
    return v.name.split("/")[-1]


def from_keras(model, prune_layer_norm: bool = False) -> KerasGraph:
    """Read a Keras model into the standard channel graph.

    ``prune_layer_norm``: let channels through LayerNormalization (gamma and beta sliced). Exact only
    up to LayerNorm's statistics, which change when channels go: fine-tune afterwards. Default: held.

    >>> import keras, spa_keras.frontends.keras as fk
    >>> x = keras.Input((8, 8, 3)); y = keras.layers.Conv2D(4, 3)(x)
    >>> kg = fk.from_keras(keras.Model(x, y))
    >>> [n.kind for n in kg.graph.nodes]
    ['linear']
    """
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"expected a keras.Model, got {type(model).__name__}; load it first "
            "(keras.saving.load_model) or pass a path to spa.prune"
        )
    return KerasGraph(model, prune_layer_norm=prune_layer_norm)
