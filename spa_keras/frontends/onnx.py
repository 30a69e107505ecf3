"""ONNX models into the standard channel graph.

:func:`from_onnx_model` reads an ``onnx.ModelProto`` (opset 13 and newer, as PyTorch's exporters write
it), infers every tensor's shape, and describes each node as a :class:`~spa_keras.graph.Node`.
Parameters are initializers (or ``Constant`` nodes) named by their tensor name. A tensor's channel axis
comes from its producer: axis 1 after convolutions, batch norms and pooling (NCHW), the last axis after
``MatMul``/``Gemm`` (token features); ``Transpose``, ``Squeeze``, ``Unsqueeze``, reductions and
``Gather`` move it. What this module does not understand is held fixed and reported, never guessed.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from ..errors import InvalidArgumentError, ModelFileError, NonFiniteWeightsError, UnsupportedModelError
from ..graph import BIAS, IN, OUT, STAT, WEIGHT, AxisRef, Graph, Node, Param
from .spec import Spec, fixed

UNARY = {
    "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Erf", "Gelu", "Sqrt", "Exp", "Log", "Neg", "Abs", "Identity", "Dropout", "Cast",
    "Mish", "ThresholdedRelu", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Reciprocal", "Not",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize", "Upsample",
    "SpaceToDepth", "DepthToSpace",
}  # fmt: skip
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean"}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSumExp", "ReduceSumSquare"}
SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range", "NonZero", "EyeLike"}
NCHW_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "MaxPool", "AveragePool",
            "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample"}


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _without_constant_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """PyTorch's TorchScript exporter passes some weights through ``Identity`` nodes; read them as the
    initializers they are (a copy of the model is rewired; the input model is not touched)."""
    inits = {i.name for i in model.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity" and n.input[0] in inits}
    outputs = {o.name for o in model.graph.output}
    alias = {k: v for k, v in alias.items() if k not in outputs}
    if not alias:
        return model
    model = copy.deepcopy(model)
    keep = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    for n in model.graph.node:
        for i, x in enumerate(n.input):
            if x in alias:
                n.input[i] = alias[x]
    return model


def inferred_graph(model: onnx.ModelProto):
    """The graph after ONNX shape inference, and ``{tensor name: [dims]}`` (None for unknown dims)."""
    try:
        g = shape_inference.infer_shapes(model).graph
    except Exception as e:  # noqa: BLE001
        raise UnsupportedModelError(f"ONNX shape inference failed on model {model.graph.name!r}: {e}") from e
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return g, shapes


class OnnxGraph:
    """An ONNX model read as a standard channel graph.

    Attributes: ``model`` (the input ``ModelProto``, never changed); ``graph`` (each node's ``ref`` is
    its index in ``model.graph.node``); ``arrays`` (parameter name -> NumPy array); ``specs`` (node name
    -> :class:`Spec`); ``protos`` (node name -> NodeProto).
    """

    def __init__(self, model: onnx.ModelProto):
        model = _without_constant_identities(model)
        self.model = model
        g, self.shapes = inferred_graph(model)
        self.arrays = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for node in g.node:
            if node.op_type == "Constant" and _attr(node, "value") is not None:
                self.arrays[node.output[0]] = numpy_helper.to_array(_attr(node, "value"))
        self.graph = Graph(g.name or "onnx_model")
        self.specs: dict = {}
        self.protos: dict = {}
        self.axis: dict = {}  # tensor name -> channel axis (absolute; None: no channel axis)
        self.tid: dict = {}
        consumers: dict = {}
        for node in g.node:
            for x in node.input:
                consumers.setdefault(x, []).append(node.op_type)
        for vi in g.input:
            if vi.name in self.arrays:
                continue
            rank = len(self.shapes.get(vi.name, []))
            axis = None if rank < 2 else (1 if rank != 3 else (1 if set(consumers.get(vi.name, [])) & NCHW_OPS else 2))
            self.graph.inputs.append(self._tensor(vi.name, axis))
        for i, node in enumerate(g.node):
            if node.op_type == "Constant":
                continue
            self._add(node, i)
        self._check_finite()
        missing = [o.name for o in g.output if o.name not in self.tid]
        if missing:
            raise UnsupportedModelError(f"ONNX graph outputs {missing} are not computed by any node")
        self.graph.outputs = [self.tid[o.name] for o in g.output]

    def _check_finite(self):
        """Raise :class:`NonFiniteWeightsError` naming the node and the initializer if a parameter the
        pruner reads (a weight, a bias, a sliced statistic) holds NaN or Inf."""
        for node in self.graph.nodes:
            for p in node.params:
                if p.role == STAT and not p.axes:
                    continue  # a constant of the computation (a mask may legitimately hold -inf)
                value = self.arrays[p.key]
                if not np.issubdtype(value.dtype, np.floating) or np.isfinite(value).all():
                    continue
                nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
                op = self.protos[node.name].op_type
                raise NonFiniteWeightsError(
                    f"ONNX node {node.name!r} ({op}): initializer {p.key!r} holds {nan} NaN and {inf} Inf "
                    "values; no criterion can rank its channels. Export the model again from weights that "
                    "are finite"
                )

    # ---- tensors -------------------------------------------------------------------------------------
    def _tensor(self, name, axis):
        shape = self.shapes.get(name)
        if shape is None or axis is None or axis >= len(shape) or len(shape) < 2 or shape[axis] is None:
            axis, channels, rest = None, 0, tuple(shape[1:]) if shape else ()
        else:
            channels, rest = int(shape[axis]), tuple(shape[1:])
        self.axis[name] = axis
        tid = self.graph.add_tensor(name, rest, channels, (axis - 1) if axis else -1)
        self.tid[name] = tid
        return tid

    def weight(self, key) -> np.ndarray:
        return self.arrays[key]

    def _is_const(self, name) -> bool:
        return name in self.arrays

    def _spatial(self, name, axis=None) -> int:
        """Product of the dimensions other than batch and ``axis`` (default: the tensor's channel axis)."""
        shape = self.shapes.get(name) or []
        axis = self.axis.get(name) if axis is None else axis
        n = 1
        for i, d in enumerate(shape[1:], start=1):
            if i != axis:
                n *= int(d) if d else 1
        return n

    # ---- nodes ---------------------------------------------------------------------------------------
    def _add(self, node, index):
        dyn = [x for x in node.input if x and not self._is_const(x)]
        if any(x not in self.tid for x in dyn):
            raise UnsupportedModelError(f"ONNX node {node.name or node.op_type} reads a tensor no node writes: {dyn}")
        in_axis = self.axis.get(dyn[0]) if dyn else None
        if dyn and all(self.tid[x] is not None and self.graph.tensors[self.tid[x]].channels == 0 for x in dyn) \
                and node.op_type not in NCHW_OPS | {"Gemm", "MatMul"}:
            spec, out_axes = Spec("shape"), [None] * len(node.output)
        elif not dyn or node.op_type in SHAPE_OPS:
            spec, out_axes = Spec("shape"), [None] * len(node.output)
        else:
            spec, out_axes = self._describe(node, dyn, in_axis)
        name = node.name or node.output[0]
        while name in self.protos:
            name += "_"
        out_ids = [self._tensor(o, a) for o, a in zip(node.output, out_axes)]
        for hname, width in spec.hidden:
            out_ids.append(self.graph.add_tensor(f"{name}:{hname}", (width,), width))
        params = []
        for key, value in spec.params.items():
            axes, role, *tag = value
            params.append(Param(key, key, tuple(self.arrays[key].shape), dict(axes), role, tag[0] if tag else ""))
        for x in node.input:  # other float constants still count as parameters
            if x in self.arrays and x not in spec.params and np.issubdtype(self.arrays[x].dtype, np.floating):
                params.append(Param(x, x, tuple(self.arrays[x].shape), {}, STAT))
        self.graph.add_node(Node(name, spec.kind, [self.tid[x] for x in dyn], out_ids, params, dict(spec.attrs),
                                 list(spec.macs), name, index))
        self.specs[name] = spec
        self.protos[name] = node

    def _describe(self, node, dyn, axis):
        op = node.op_type
        out = node.output[0]
        rank_in = len(self.shapes.get(dyn[0]) or [])
        same = [axis] * len(node.output)
        shape_out = self.shapes.get(out) or []
        if op == "Conv":
            return self._conv(node, dyn), [1]
        if op == "ConvTranspose":
            w = self.arrays.get(node.input[1])
            if w is None or (_attr(node, "group", 1) or 1) != 1:
                return fixed("ConvTranspose with groups or a computed kernel"), [1]
            ks = int(np.prod(w.shape[2:]))
            params = {node.input[1]: ({0: IN, 1: OUT}, WEIGHT)}
            if len(node.input) > 2 and node.input[2]:
                params[node.input[2]] = ({0: OUT}, BIAS)
            return Spec("linear", params, {}, [(self._spatial(dyn[0]) * ks, [IN, OUT])]), [1]
        if op in ("Gemm", "MatMul"):
            return self._dense(node, dyn, axis, rank_in)
        if op == "BatchNormalization" and axis == 1:
            s, b, m, v = node.input[1:5]
            params = {s: ({0: OUT}, WEIGHT, "norm_scale"), b: ({0: OUT}, BIAS), m: ({0: OUT}, BIAS), v: ({0: OUT}, STAT)}
            if all(k in self.arrays for k in params):
                return Spec("identity", params), [1] + [None] * (len(node.output) - 1)
            return fixed("BatchNormalization with computed statistics"), same
        if op == "InstanceNormalization" and axis == 1:
            s, b = node.input[1:3]
            return Spec("identity", {s: ({0: OUT}, WEIGHT, "norm_scale"), b: ({0: OUT}, BIAS)}), same
        if op in ("LayerNormalization", "GroupNormalization", "LpNormalization"):
            return fixed(f"{op} normalises across channels (its stream is held fixed)"), same
        if op in UNARY or op == "PRelu":
            return self._unary(node, dyn, axis)
        if op in BINARY:
            return self._binary(node, dyn, axis, shape_out)
        if op in ("Softmax", "LogSoftmax", "Hardmax"):
            a = _attr(node, "axis", -1) % max(rank_in, 1)
            return (fixed(f"{op} over the channel axis mixes channels") if a == axis else Spec("identity")), same
        if op == "Concat":
            a = _attr(node, "axis") % rank_in
            return Spec("concat" if a == axis else "merge"), same
        if op == "Split":
            a = _attr(node, "axis", 0) % rank_in
            if a != axis:
                return Spec("identity"), [axis] * len(node.output)
            return Spec("split", resize=self._split_fix(node)), [axis] * len(node.output)
        if op == "Slice":
            axes = self.arrays.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            axes = list(range(rank_in)) if axes is None else [int(a) % rank_in for a in np.ravel(axes)]
            return (fixed("Slice along the channel axis") if axis in axes else Spec("identity")), same
        if op == "Pad":
            pads = self.arrays.get(node.input[1]) if len(node.input) > 1 else _attr(node, "pads")
            if pads is None:
                return fixed("Pad with computed pads"), same
            pads = np.ravel(pads)
            if len(pads) != 2 * rank_in or pads[axis] or pads[axis + rank_in]:
                return fixed("Pad along the channel axis"), same
            return Spec("identity"), same
        if op in REDUCE:
            return self._reduce(node, axis, rank_in)
        if op == "Flatten":
            a = _attr(node, "axis", 1) % max(rank_in, 1)
            if axis is None or a != 1 or axis != 1:
                return fixed("Flatten that does not start at the channel axis"), [1]
            return Spec("identity" if rank_in == 2 else "flatten", {}, {"channel_major": True}), [1]
        if op == "Reshape":
            return self._reshape(node, dyn, axis, shape_out)
        if op == "Transpose":
            perm = list(_attr(node, "perm") or reversed(range(rank_in)))
            return Spec("identity"), [perm.index(axis)]
        if op in ("Squeeze", "Unsqueeze"):
            axes = _attr(node, "axes")
            if axes is None and len(node.input) > 1:
                axes = self.arrays.get(node.input[1])
            if axes is None:
                return fixed(f"{op} with computed axes"), same
            if op == "Squeeze":
                axes = [int(a) % rank_in for a in np.ravel(axes)]
                if axis in axes:
                    return fixed("Squeeze of the channel axis"), same
                return Spec("identity"), [axis - sum(a < axis for a in axes)]
            rank_out = rank_in + len(np.ravel(axes))
            new = axis
            for a in sorted(int(a) % rank_out for a in np.ravel(axes)):
                if a <= new:
                    new += 1
            return Spec("identity"), [new]
        if op == "Gather":
            a = _attr(node, "axis", 0) % rank_in
            if a == axis:
                return fixed("Gather along the channel axis"), same
            idx = self.arrays.get(node.input[1])
            dropped = 1 if idx is not None and np.ndim(idx) == 0 else 0
            return Spec("identity"), [axis - dropped if a < axis else axis]
        rank_out = [len(self.shapes.get(o) or []) for o in node.output]
        return fixed(f"ONNX op {op} is not understood"), [axis if r == rank_in else None for r in rank_out]

    def _conv(self, node, dyn):
        w = self.arrays.get(node.input[1])
        if w is None:
            return fixed("Conv with a computed kernel")
        g = int(_attr(node, "group", 1) or 1)
        o, ig = w.shape[:2]
        cin = ig * g
        ks = int(np.prod(w.shape[2:]))
        sp = self._spatial(node.output[0], axis=1)
        has_bias = len(node.input) > 2 and node.input[2]
        if has_bias and node.input[2] not in self.arrays:
            return fixed("Conv with a computed bias")
        bias = {node.input[2]: ({0: OUT}, BIAS)} if has_bias else {}
        if g == 1:
            return Spec("linear", {node.input[1]: ({0: OUT, 1: IN}, WEIGHT), **bias}, {}, [(sp * ks, [IN, OUT])])
        if ig == 1 and g == cin:

            def fix(proto, w_, backend):
                _set_attr(proto, "group", w_(IN))

            return Spec("depthwise", {node.input[1]: ({0: OUT}, WEIGHT), **bias}, {"multiplier": o // cin},
                        [(sp * ks, [OUT])], fix)
        return Spec("linear", {node.input[1]: ({0: OUT, 1: AxisRef("in", 0, block=True)}, WEIGHT), **bias},
                    {"groups": g}, [(sp * ks / g, [IN, OUT])])

    def _dense(self, node, dyn, axis, rank_in):
        op = node.op_type
        w_name = node.input[1]
        w = self.arrays.get(w_name)
        last = rank_in - 1
        if w is None or w.ndim != 2 or len(dyn) != 1 or axis != last:
            return fixed(f"{op} between computed tensors (attention scores) or not on the feature axis"), [last]
        if op == "Gemm" and _attr(node, "transA", 0):
            return fixed("Gemm with transA"), [1]
        trans_b = op == "Gemm" and _attr(node, "transB", 0)
        params = {w_name: ({0: OUT, 1: IN} if trans_b else {0: IN, 1: OUT}, WEIGHT)}
        if op == "Gemm" and len(node.input) > 2 and node.input[2] in self.arrays:
            c = self.arrays[node.input[2]]
            n_out = w.shape[0] if trans_b else w.shape[1]
            if c.ndim == 1 and c.shape[0] == n_out:
                params[node.input[2]] = ({0: OUT}, BIAS)
            elif c.size != 1:
                return fixed("Gemm with a 2-D bias"), [1]
        rank_out = len(self.shapes.get(node.output[0]) or [rank_in])
        return Spec("linear", params, {}, [(self._spatial(node.output[0], axis=rank_out - 1), [IN, OUT])]), [last]

    def _const_along(self, name, axis, rank_out, channels):
        """The axis of constant ``name`` that broadcasts along the channel axis, -1 if it has extent 1
        there, None if it has another extent (cannot follow the channels)."""
        c = self.arrays[name]
        i = axis - (rank_out - c.ndim)
        if i < 0 or c.shape[i] == 1:
            return -1
        return i if c.shape[i] == channels else None

    def _unary(self, node, dyn, axis):
        same = [axis] * len(node.output)
        if node.op_type != "PRelu":
            return Spec("identity"), same
        slope = node.input[1]
        rank = len(self.shapes.get(node.output[0]) or [])
        i = self._const_along(slope, axis, rank, self.graph.tensors[self.tid[dyn[0]]].channels) if slope in self.arrays else None
        if i is None:
            return fixed("PRelu with a computed slope"), same
        return Spec("identity", {slope: ({i: OUT}, BIAS)} if i >= 0 else {}), same

    def _binary(self, node, dyn, axis, shape_out):
        same = [axis] * len(node.output)
        consts = [x for x in node.input if x and self._is_const(x)]
        rank = len(shape_out)
        channels = shape_out[axis] if axis is not None and axis < rank else None
        params = {}
        for c in consts:
            i = self._const_along(c, axis, rank, channels) if channels else -1
            if i is None:
                return fixed(f"{node.op_type} with a constant that varies along the channels"), same
            if i >= 0:
                role = STAT if node.op_type in ("Div", "Pow") else (WEIGHT if node.op_type == "Mul" else BIAS)
                params[c] = ({i: OUT}, role)
        return Spec("merge" if len(dyn) > 1 else "identity", params), same

    def _reduce(self, node, axis, rank_in):
        axes = _attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.arrays.get(node.input[1])
            if axes is None:
                return fixed(f"{node.op_type} with computed axes"), [None]
        axes = list(range(rank_in)) if axes is None else [int(a) % rank_in for a in np.ravel(axes)]
        if axis in axes:
            return fixed(f"{node.op_type} over the channel axis"), [None]
        keep = _attr(node, "keepdims", 1)
        return Spec("identity"), [axis if keep else axis - sum(a < axis for a in axes)]

    def _reshape(self, node, dyn, axis, shape_out):
        src = self.shapes.get(dyn[0]) or []
        dst = shape_out
        if axis is None or None in src[1:] or None in dst[1:] or not dst:
            return fixed("Reshape of a tensor with unknown dimensions"), [None]
        c = src[axis]
        if len(dst) == 2 and axis == 1 and dst[1] == int(np.prod(src[1:])):
            return Spec("flatten" if len(src) > 2 else "identity", {}, {"channel_major": True},
                        resize=self._shape_fix(node, int(np.prod(src[1:])))), [1]
        if axis == len(src) - 1 and dst[-1] == c and np.prod(src[1:-1]) == np.prod(dst[1:-1]):
            return Spec("identity", resize=self._shape_fix(node, c)), [len(dst) - 1]
        squeezed_src = [d for i, d in enumerate(src[1:], 1) if d != 1 or i == axis]
        squeezed_dst = [d for d in dst[1:] if d != 1]
        if squeezed_src == squeezed_dst and src.count(c) == 1 and dst.count(c) == 1 and c != 1:
            return Spec("identity", resize=self._shape_fix(node, c)), [dst.index(c)]
        return fixed(f"Reshape {src} -> {dst} moves the channel axis"), [None]

    # ---- fix-ups the backend applies to node protos ----------------------------------------------
    def _shape_fix(self, node, old):
        """Rewrite an explicit ``old`` width in a Reshape's shape constant (a -1 or 0 needs nothing)."""
        shape_name = node.input[1]

        def fix(proto, w_, backend):
            shape = self.arrays.get(shape_name)
            if shape is None or old not in shape:
                return
            new = np.where(shape == old, w_(OUT), shape).astype(shape.dtype)
            proto.input[1] = backend.add_constant(f"{shape_name}__{proto.name or 'reshape'}", new)

        return fix

    def _split_fix(self, node):
        def fix(proto, w_, backend):
            sizes = np.array([w_(AxisRef("out", i)) for i in range(len(proto.output))], np.int64)
            if len(proto.input) > 1 and proto.input[1]:
                proto.input[1] = backend.add_constant(f"{proto.input[1]}__{proto.name or 'split'}", sizes)
            elif _attr(proto, "split") is not None:
                _set_attr(proto, "split", [int(s) for s in sizes])

        return fix


def _set_attr(proto, name, value):
    for a in proto.attribute:
        if a.name == name:
            proto.attribute.remove(a)
            break
    proto.attribute.append(onnx.helper.make_attribute(name, value))


def load_onnx(path_or_model) -> onnx.ModelProto:
    """An ``onnx.ModelProto`` from a path or a model, with a clear error for a bad file."""
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    path = os.fspath(path_or_model)
    if not os.path.exists(path):
        raise InvalidArgumentError(f"ONNX file {path!r} does not exist")
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - a bad file is bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(
            f"{path!r} is not a valid ONNX model ({first}); the file is corrupt, truncated or not ONNX: "
            "export it again"
        ) from None
    return model


def from_onnx_model(path_or_model) -> OnnxGraph:
    """Read an ONNX model (a path or an ``onnx.ModelProto``) into the standard channel graph."""
    return OnnxGraph(load_onnx(path_or_model))
