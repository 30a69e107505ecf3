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

from ..errors import UnsupportedModelError
from ..graph import BIAS, IN, OUT, STAT, WEIGHT, AxisRef, Graph, Node, Param

L = keras.layers

# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """How one call of a layer acts on channels.

    ``params`` maps a weight's short name (``kernel``, ``gamma``) to ``(axes, role)`` where ``axes``
    maps axis -> :class:`AxisRef`. ``resize(config, width)`` edits a config for new widths, where
    ``width(ref)`` gives the new width of the tensor an :class:`AxisRef` names.
    """

    kind: str
    params: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    macs: list = field(default_factory=list)
    resize: Callable | None = None


@dataclass
class Call:
    """One call of a layer: input and output shapes without the batch axis, and the Keras node."""

    layer: object
    in_shapes: list
    out_shapes: list
    node: object = None

    @property
    def out_spatial(self) -> int:
        return _spatial(self.out_shapes[0])

    @property
    def in_spatial(self) -> int:
        return _spatial(self.in_shapes[0])


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


def fixed(reason: str, macs: float = 0.0) -> Spec:
    return Spec("fixed", attrs={"reason": reason}, macs=[(float(macs), [])] if macs else [])


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
            "gamma": ({0: OUT}, WEIGHT),
            "beta": ({0: OUT}, BIAS),
            "moving_mean": ({0: OUT}, BIAS),
            "moving_variance": ({0: OUT}, STAT),
        },
    )


@register(L.LayerNormalization, L.GroupNormalization, L.UnitNormalization)
def _norm_across_channels(call: Call) -> Spec:
    return fixed(
        f"{type(call.layer).__name__} normalises across channels: removing one changes the others "
        "(its stream is held fixed)"
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
    layer = call.layer
    tq = _spatial(call.in_shapes[0])
    tk = _spatial(call.in_shapes[-1]) if len(call.in_shapes) > 1 else tq
    h, dk = layer.num_heads, layer.key_dim
    dv = layer.value_dim or dk
    dq = call.in_shapes[0][-1]
    dkv = call.in_shapes[-1][-1]
    do = call.out_shapes[0][-1]
    macs = tq * dq * h * dk + tk * dkv * h * (dk + dv) + h * tq * tk * (dk + dv) + tq * h * dv * do
    return fixed("MultiHeadAttention is kept whole (head pruning is not implemented yet)", macs)


@register(L.InputLayer)
def _input(call: Call) -> Spec:
    return Spec("input")


# layers that keras.applications defines without exporting them
register("LayerScale")(lambda call: Spec("identity", {"gamma": ({0: OUT}, WEIGHT)}))
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


def _describe_op(op, call: Call) -> Spec:
    name = type(op).__name__
    if _const_is_per_channel(call.node):
        return fixed(f"keras.ops {name} with a per-channel constant argument")
    if name in OPS_MERGE:
        return Spec("merge")
    if name in OPS_UNARY:
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
        "keras.Sequential, so that spa_keras can see how its layers connect"
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

    def __init__(self, model):
        self.model = model
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
        return keras.ops.convert_to_numpy(self.variables[key])

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
        params = []
        for v in getattr(op, "weights", []) if isinstance(op, keras.layers.Layer) else []:
            key = id(v)
            self.variables[key] = v
            short = v.name.split("/")[-1]
            axes, role = spec.params.get(short, ({}, STAT))
            params.append(Param(key, f"{base}/{short}", tuple(v.shape), dict(axes), role))
        node = Node(name, spec.kind, in_ids, out_ids, params, dict(spec.attrs), list(spec.macs), base,
                    (op, knode))
        g.add_node(node)
        self.specs[name] = spec
        self.layer_nodes.setdefault(id(op), node)


def from_keras(model) -> KerasGraph:
    """Read a Keras model into the standard channel graph.

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
    return KerasGraph(model)
