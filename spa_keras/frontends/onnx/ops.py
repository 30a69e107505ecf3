"""What each ONNX op type means for channels: one registry entry per op type.

An entry is ``fn(call) -> (Spec, out_axes)``: the node's :class:`~spa_keras.frontends.spec.Spec` and,
for each of its outputs, the axis that carries the channels there (``None``: no channel axis the graph
follows). ``call`` is an :class:`OnnxCall`: the node, its inputs' channel axis and shapes, and the
model's constants. An op type with no entry is held fixed and reported, never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from ...graph import BIAS, IN, OUT, STAT, WEIGHT, AxisRef
from ..spec import ELEMENTWISE, Spec, fixed

#: op type -> ``fn(call) -> (Spec, out_axes)``
REGISTRY: dict[str, Callable] = {}


def register_op(*op_types):
    """Register ``fn(call) -> (Spec, out_axes)`` for ONNX op types."""

    def deco(fn):
        for op in op_types:
            REGISTRY[op] = fn
        return fn

    return deco


def attr(node, name, default=None):
    """An attribute of an ONNX node (``default`` when absent)."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def set_attr(proto, name, value):
    for a in proto.attribute:
        if a.name == name:
            proto.attribute.remove(a)
            break
    proto.attribute.append(onnx.helper.make_attribute(name, value))


@dataclass
class OnnxCall:
    """One ONNX node as the registry sees it. ``dyn``: its computed (non-constant) inputs; ``axis``:
    the channel axis of the first of them (absolute, batch included; None if it has none)."""

    reader: object  # the OnnxGraph being read
    node: object  # NodeProto
    dyn: list
    axis: int | None

    @property
    def op(self) -> str:
        return self.node.op_type

    def attr(self, name, default=None):
        return attr(self.node, name, default)

    def const(self, name):
        """The value of a constant input (None for a computed one or an empty name)."""
        return self.reader.arrays.get(name) if name else None

    def shape(self, name) -> list:
        return self.reader.shapes.get(name) or []

    @property
    def rank_in(self) -> int:
        return len(self.shape(self.dyn[0]))

    @property
    def shape_out(self) -> list:
        return self.shape(self.node.output[0])

    @property
    def same(self) -> list:
        """Every output keeps the input's channel axis."""
        return [self.axis] * len(self.node.output)

    def spatial(self, name, axis=None) -> int:
        """Product of the dimensions other than batch and ``axis`` (default: the tensor's channel axis)."""
        axis = self.reader.axis.get(name) if axis is None else axis
        n = 1
        for i, d in enumerate(self.shape(name)[1:], start=1):
            if i != axis:
                n *= int(d) if d else 1
        return n

    def channels(self, name) -> int:
        return self.reader.graph.tensors[self.reader.tid[name]].channels


# ---- producers -----------------------------------------------------------------------------------


@register_op("Conv")
def _conv(c: OnnxCall):
    node = c.node
    w = c.const(node.input[1])
    if w is None:
        return fixed("Conv with a computed kernel"), [1]
    g = int(c.attr("group", 1) or 1)
    if g > 1 and (c.axis != 1 or c.channels(c.dyn[0]) == 0):
        # conv-attention hybrids' position encodings: tokens reshaped into an image in a way that cannot
        # be followed; the group count follows the input's channels, so the conv is held
        return fixed("grouped Conv whose input channels cannot be followed"), [1]
    o, ig = w.shape[:2]
    cin = ig * g
    ks = int(np.prod(w.shape[2:]))
    sp = c.spatial(node.output[0], axis=1)
    has_bias = len(node.input) > 2 and node.input[2]
    if has_bias and c.const(node.input[2]) is None:
        return fixed("Conv with a computed bias"), [1]
    bias = {node.input[2]: ({0: OUT}, BIAS)} if has_bias else {}
    if g == 1:
        return Spec("linear", {node.input[1]: ({0: OUT, 1: IN}, WEIGHT), **bias}, {}, [(sp * ks, [IN, OUT])]), [1]
    if ig == 1 and g == cin:

        def fix(proto, w_, backend):
            set_attr(proto, "group", w_(IN))

        spec = Spec("depthwise", {node.input[1]: ({0: OUT}, WEIGHT), **bias}, {"multiplier": o // cin},
                    [(sp * ks, [OUT])], fix)
        return spec, [1]
    spec = Spec("linear", {node.input[1]: ({0: OUT, 1: AxisRef("in", 0, block=True)}, WEIGHT), **bias},
                {"groups": g}, [(sp * ks / g, [IN, OUT])])
    return spec, [1]


@register_op("ConvTranspose")
def _conv_transpose(c: OnnxCall):
    node = c.node
    w = c.const(node.input[1])
    if w is None or (c.attr("group", 1) or 1) != 1:
        return fixed("ConvTranspose with groups or a computed kernel"), [1]
    ks = int(np.prod(w.shape[2:]))
    params = {node.input[1]: ({0: IN, 1: OUT}, WEIGHT)}
    if len(node.input) > 2 and node.input[2]:
        params[node.input[2]] = ({0: OUT}, BIAS)
    return Spec("linear", params, {}, [(c.spatial(c.dyn[0]) * ks, [IN, OUT])]), [1]


@register_op("Gemm", "MatMul")
def _dense(c: OnnxCall):
    node, op = c.node, c.op
    w_name = node.input[1]
    w = c.const(w_name)
    last = c.rank_in - 1
    if op == "MatMul" and len(c.dyn) == 2:
        return _matmul_computed(c)
    if w is None or w.ndim != 2 or len(c.dyn) != 1 or c.axis != last:
        return fixed(f"{op} between computed tensors (attention scores) or not on the feature axis"), [last]
    if op == "Gemm" and c.attr("transA", 0):
        return fixed("Gemm with transA"), [1]
    trans_b = op == "Gemm" and c.attr("transB", 0)
    params = {w_name: ({0: OUT, 1: IN} if trans_b else {0: IN, 1: OUT}, WEIGHT)}
    bias = c.const(node.input[2]) if op == "Gemm" and len(node.input) > 2 else None
    if bias is not None:
        n_out = w.shape[0] if trans_b else w.shape[1]
        if bias.ndim == 1 and bias.shape[0] == n_out:
            params[node.input[2]] = ({0: OUT}, BIAS)
        elif bias.size != 1:
            return fixed("Gemm with a 2-D bias"), [1]
    rank_out = len(c.shape_out or [c.rank_in])
    return Spec("linear", params, {}, [(c.spatial(node.output[0], axis=rank_out - 1), [IN, OUT])]), [last]


def _matmul_computed(c: OnnxCall):
    """The product of two computed tensors (attention scores, attention times values): the channel
    axis is a batch axis of both (attention heads), the rows of the first or the columns of the
    second; anything else is held. Its MACs are counted."""
    a, b = c.dyn
    og = c.reader
    sa, sb, so = (c.shape(x) for x in (a, b, c.node.output[0]))
    ra, rb, ro = len(sa), len(sb), len(so)
    xa, xb = og.axis.get(a), og.axis.get(b)
    if min(ra, rb) < 2 or not ro or None in so[1:] or sa[-1] is None:
        return fixed("MatMul of tensors of unknown shape"), [None]
    k = int(sa[-1])

    def macs(out_axis):
        n = k
        for i, d in enumerate(so):
            if i != out_axis and (i > 0 or out_axis == 0):
                n *= int(d or 1)
        return [(n, [OUT])]

    if xa is not None and xb is not None and xa <= ra - 3 and ra - xa == rb - xb:
        out = ro - (ra - xa)
        return Spec("merge", macs=macs(out)), [out]
    if xa == ra - 2 and xb != rb - 1:
        return Spec("pick", attrs={"input": 0}, macs=macs(ro - 2)), [ro - 2]
    if xb == rb - 1 and xa != ra - 2:
        return Spec("pick", attrs={"input": 1}, macs=macs(ro - 1)), [ro - 1]
    return fixed("MatMul of two computed tensors that contracts the channel axis", macs=macs(-1)[0][0]), [None]


def einsum_terms(equation):
    """``(["bhid", "bhjd"], "bhij")`` for an explicit einsum equation without ellipsis, else None."""
    eq = (equation.decode() if isinstance(equation, bytes) else str(equation)).replace(" ", "")
    if "->" not in eq or "." in eq:
        return None
    lhs, rhs = eq.split("->")
    return lhs.split(","), rhs


@register_op("Einsum")
def _einsum(c: OnnxCall):
    """An einsum of two computed tensors (MaxViT's attention ``bghid,bghjd->bghij``): like a MatMul of
    computed tensors, the channel axis may be a letter both keep (heads), or a letter only one input
    has that the output keeps; a contracted or mixed channel axis is held. Its MACs are counted."""
    terms = einsum_terms(c.attr("equation", b""))
    so = c.shape_out
    if terms is None or len(c.dyn) != 2 or len(c.node.input) != 2 or not so or None in so[1:]:
        return fixed("Einsum with an ellipsis, a constant operand or unknown shapes"), [None]
    (ta, tb), rhs = terms
    a, b = c.dyn
    xa, xb = c.reader.axis.get(a), c.reader.axis.get(b)
    sizes = {}
    for term, name in ((ta, a), (tb, b)):
        for letter, d in zip(term, c.shape(name)):
            sizes[letter] = int(d or 1)
    total = int(np.prod([sizes[k] for k in sizes if not (rhs and k == rhs[0])]))  # per sample
    la = ta[xa] if xa is not None and xa < len(ta) else None
    lb = tb[xb] if xb is not None and xb < len(tb) else None

    def macs(letter):
        return [(total / max(sizes[letter], 1), [OUT])]

    if la is not None and la == lb and la in rhs and rhs.index(la) > 0:
        return Spec("merge", macs=macs(la)), [rhs.index(la)]
    if la is not None and la in rhs and la not in tb and rhs.index(la) > 0:
        return Spec("pick", attrs={"input": 0}, macs=macs(la)), [rhs.index(la)]
    if lb is not None and lb in rhs and lb not in ta and rhs.index(lb) > 0:
        return Spec("pick", attrs={"input": 1}, macs=macs(lb)), [rhs.index(lb)]
    return fixed("Einsum that contracts or mixes the channel axis", macs=total), [None]


# ---- channel-wise ops ----------------------------------------------------------------------------


@register_op("BatchNormalization")
def _batchnorm(c: OnnxCall):
    if c.axis != 1:
        return fixed("BatchNormalization whose input has no channel axis 1"), c.same
    s, b, m, v = c.node.input[1:5]
    params = {s: ({0: OUT}, WEIGHT, "norm_scale"), b: ({0: OUT}, BIAS), m: ({0: OUT}, BIAS), v: ({0: OUT}, STAT)}
    if all(c.const(k) is not None for k in params):
        return Spec("identity", params), [1] + [None] * (len(c.node.output) - 1)
    return fixed("BatchNormalization with computed statistics"), c.same


@register_op("InstanceNormalization")
def _instancenorm(c: OnnxCall):
    if c.axis != 1:
        return fixed("InstanceNormalization whose input has no channel axis 1"), c.same
    s, b = c.node.input[1:3]
    return Spec("identity", {s: ({0: OUT}, WEIGHT, "norm_scale"), b: ({0: OUT}, BIAS)}), c.same


@register_op("LayerNormalization", "GroupNormalization", "LpNormalization")
def _norm_across_channels(c: OnnxCall):
    return fixed(f"{c.op} normalises across channels (its stream is held fixed)"), c.same


POOLING = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize", "Upsample",
           "SpaceToDepth", "DepthToSpace")
UNARY = tuple(ELEMENTWISE | {"Dropout", "ThresholdedRelu", "Neg", "Not", "Clip"}) + POOLING


@register_op(*UNARY)
def _unary(c: OnnxCall):
    return Spec("identity"), c.same


def _const_along(c: OnnxCall, name, rank_out, channels):
    """The axis of constant ``name`` that broadcasts along the channel axis, -1 if it has extent 1
    there, None if it has another extent (cannot follow the channels)."""
    value = c.const(name)
    i = c.axis - (rank_out - value.ndim)
    if i < 0 or value.shape[i] == 1:
        return -1
    return i if value.shape[i] == channels else None


@register_op("PRelu")
def _prelu(c: OnnxCall):
    slope = c.node.input[1]
    rank = len(c.shape_out)
    i = _const_along(c, slope, rank, c.channels(c.dyn[0])) if c.const(slope) is not None else None
    if i is None:
        return fixed("PRelu with a computed slope"), c.same
    return Spec("identity", {slope: ({i: OUT}, BIAS)} if i >= 0 else {}), c.same


@register_op("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean")
def _binary(c: OnnxCall):
    shape_out = c.shape_out
    rank = len(shape_out)
    channels = shape_out[c.axis] if c.axis is not None and c.axis < rank else None
    params = {}
    for name in (x for x in c.node.input if x and c.const(x) is not None):
        i = _const_along(c, name, rank, channels) if channels else -1
        if i is None:
            return fixed(f"{c.op} with a constant that varies along the channels"), c.same
        if i >= 0:
            role = STAT if c.op in ("Div", "Pow") else (WEIGHT if c.op == "Mul" else BIAS)
            params[name] = ({i: OUT}, role)
    return Spec("merge" if len(c.dyn) > 1 else "identity", params), c.same


@register_op("Softmax", "LogSoftmax", "Hardmax")
def _softmax(c: OnnxCall):
    a = c.attr("axis", -1) % max(c.rank_in, 1)
    return (fixed(f"{c.op} over the channel axis mixes channels") if a == c.axis else Spec("identity")), c.same


# ---- joining and cutting -------------------------------------------------------------------------


@register_op("Concat")
def _concat(c: OnnxCall):
    a = c.attr("axis") % c.rank_in
    return Spec("concat" if a == c.axis else "merge"), c.same


@register_op("Split")
def _split(c: OnnxCall):
    a = c.attr("axis", 0) % c.rank_in
    outs = [c.axis] * len(c.node.output)
    if a != c.axis:
        return Spec("identity"), outs

    def fix(proto, w_, backend):
        sizes = np.array([w_(AxisRef("out", i)) for i in range(len(proto.output))], np.int64)
        if len(proto.input) > 1 and proto.input[1]:
            proto.input[1] = backend.add_constant(f"{proto.input[1]}__{proto.name or 'split'}", sizes)
        elif attr(proto, "split") is not None:
            set_attr(proto, "split", [int(s) for s in sizes])
        else:  # opset 18's num_outputs splits evenly: the kept widths may differ, so they are written out
            for a in [a for a in proto.attribute if a.name == "num_outputs"]:
                proto.attribute.remove(a)
            name = backend.add_constant(f"{proto.name or 'split'}__sizes", sizes)
            if len(proto.input) > 1:
                proto.input[1] = name
            else:
                proto.input.append(name)

    return Spec("split", resize=fix), outs


@register_op("Pad")
def _pad(c: OnnxCall):
    node, rank = c.node, c.rank_in
    pads = c.const(node.input[1]) if len(node.input) > 1 else c.attr("pads")
    if pads is None:
        return fixed("Pad with computed pads"), c.same
    pads = np.ravel(pads)
    if len(pads) != 2 * rank or pads[c.axis] or pads[c.axis + rank]:
        return fixed("Pad along the channel axis"), c.same
    return Spec("identity"), c.same


@register_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
             "ReduceLogSumExp", "ReduceSumSquare")
def _reduce(c: OnnxCall):
    node, rank = c.node, c.rank_in
    axes = c.attr("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = c.const(node.input[1])
        if axes is None:
            return fixed(f"{c.op} with computed axes"), [None]
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in np.ravel(axes)]
    if c.axis in axes:
        return fixed(f"{c.op} over the channel axis"), [None]
    keep = c.attr("keepdims", 1)
    return Spec("identity"), [c.axis if keep else c.axis - sum(a < c.axis for a in axes)]



#: ops that only read their input's shape, or make a tensor from nothing: they couple no channels
SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range", "NonZero", "EyeLike"}
#: ops whose tensors are NCHW: their first input's axis 1 holds the channels
NCHW_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "MaxPool", "AveragePool",
            "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample"}


def describe(c: OnnxCall):
    """The registry entry's answer for ``c``, or the op held fixed when there is none."""
    fn = REGISTRY.get(c.op)
    if fn is not None:
        return fn(c)
    rank_out = [len(c.shape(o)) for o in c.node.output]
    return fixed(f"ONNX op {c.op} is not understood"), [c.axis if r == c.rank_in else None for r in rank_out]


from . import shape_ops as _shape_ops  # noqa: F401 - registers the shape-moving ops in REGISTRY
