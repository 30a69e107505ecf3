"""ONNX -> Keras: a Functional model built from Keras' own layers and ``keras.ops``, so that it
saves and loads as ``.keras`` (no Lambda, no custom objects), exports as a SavedModel, and prunes like
any Keras model.

Layouts: ONNX is NCHW, Keras convolutions are NHWC. Every converted tensor remembers whether it holds
its ONNX tensor as is (``native``) or with the channel axis moved last (``nhwc``). Convolutions, batch
norms and pooling want ``nhwc``; shape-minded ops (Reshape, Transpose, Gather, Flatten) want ``native``;
a ``Permute`` goes in only where the two meet. Element-wise ops work in either layout (constants are
transposed to match). The converted model takes and returns tensors in the ONNX model's own layout
unless ``channels_last_inputs`` is set, so its outputs match onnxruntime's directly.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UnsupportedModelError
from ..frontends.onnx import attr, inferred_graph

NHWC, NATIVE = "nhwc", "native"


#: ONNX op type -> ``fn(converter, node)`` (the conversions live in :mod:`.onnx_keras_ops`)
CONVERTERS: dict = {}


def converts(*ops):
    """Register ``fn(converter, node)`` as the conversion of these ONNX op types."""

    def deco(fn):
        for op in ops:
            CONVERTERS[op] = fn
        return fn

    return deco


class _Converter:
    def __init__(self, model: onnx.ModelProto, channels_last_inputs: bool):
        import keras

        self.k = keras
        self.L = keras.layers
        g, self.shapes = inferred_graph(model)
        self.consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.t = {}  # onnx name -> (keras tensor, layout)
        self.inputs = []
        for vi in g.input:
            if vi.name in self.consts:
                continue
            shape = self.shapes[vi.name]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            if channels_last_inputs and len(shape) == 4:
                x = keras.Input(batch_shape=(None, shape[2], shape[3], shape[1]), dtype=str(dtype), name=_safe(vi.name))
                self.t[vi.name] = (x, NHWC)
            else:
                x = keras.Input(batch_shape=(None,) + tuple(shape[1:]), dtype=str(dtype), name=_safe(vi.name))
                self.t[vi.name] = (x, NATIVE)
            self.inputs.append(x)
        self.names = set()
        self.consumers = {}
        for node in g.node:
            for x in node.input:
                self.consumers.setdefault(x, []).append(node)
        self.skip = set()
        for node in g.node:
            if node.output[0] not in self.skip:
                self.convert(node)
        self.outputs = [self.native(o.name) for o in g.output]
        self.name = g.name or "onnx_model"

    # ---- layouts ---------------------------------------------------------------------------------
    def rank(self, name):
        return len(self.shapes.get(name) or self.t[name][0].shape)

    def nhwc(self, name):
        x, layout = self.t[name]
        if layout == NHWC or len(x.shape) != 4:
            return x
        return self.L.Permute((2, 3, 1))(x)

    def native(self, name):
        x, layout = self.t[name]
        if layout == NATIVE or len(x.shape) != 4:
            return x
        return self.L.Permute((3, 1, 2))(x)

    def set(self, name, x, layout):
        self.t[name] = (x, layout)

    def layer_name(self, node):
        base = _safe(node.name or node.output[0]) or node.op_type
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def const(self, name):
        if name not in self.consts:
            raise UnsupportedModelError(f"{name!r} must be a constant for this op")
        return self.consts[name]

    # ---- ops ---------------------------------------------------------------------------------------
    def convert(self, node):
        op = node.op_type
        fn = CONVERTERS.get(op)
        if op == "Constant":
            self.consts[node.output[0]] = numpy_helper.to_array(attr(node, "value"))
            return
        if all(x in self.consts for x in node.input if x) and op not in ("Shape",):
            self.fold(node)
            return
        if fn is None:
            if op in ELEMENTWISE:
                return self.elementwise(node)
            raise UnsupportedModelError(
                f"ONNX op {op} (node {node.name or node.output[0]!r}) has no Keras conversion yet; prune the "
                "ONNX model directly with spa.prune(path) or convert it with another tool"
            )
        fn(self, node)

    def fold(self, node):
        """Constant-fold a node whose inputs are all constants (shape arithmetic)."""
        import onnx.reference

        vals = {x: self.consts[x] for x in node.input if x}
        graph = onnx.helper.make_graph(
            [node], "fold",
            [onnx.helper.make_tensor_value_info(x, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for x, v in vals.items()],
            [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
        )
        ref = onnx.reference.ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]))
        for o, v in zip(node.output, ref.run(None, vals)):
            self.consts[o] = np.asarray(v)

    def unary(self, node, fn):
        x, layout = self.t[node.input[0]]
        self.set(node.output[0], fn(x, self.layer_name(node)), layout)

    def operand(self, name, layout, rank=None):
        """``name`` as a Keras tensor or a constant, in ``layout``."""
        if name in self.consts:
            c = self.consts[name]
            if layout == NHWC and rank == 4:
                c = c.reshape((1,) * (4 - c.ndim) + c.shape).transpose(0, 2, 3, 1) if c.ndim else c
            return c
        return self.nhwc(name) if layout == NHWC else self.native(name)

    def elementwise(self, node):
        dyn = [x for x in node.input if x and x not in self.consts]
        layouts = {self.t[x][1] for x in dyn if len(self.t[x][0].shape) == 4}
        rank = max(self.rank(x) for x in dyn)
        layout = NHWC if layouts == {NHWC} else NATIVE
        args = [self.operand(x, layout, rank) for x in node.input if x]
        fn = ELEMENTWISE[node.op_type]
        self.set(node.output[0], fn(self.k.ops, *args), layout if rank == 4 else NATIVE)

    def axes_of(self, node, index=1):
        axes = attr(node, "axes")
        if axes is None and len(node.input) > index and node.input[index]:
            axes = self.const(node.input[index])
        return None if axes is None else [int(a) for a in np.ravel(axes)]

ELEMENTWISE = {
    "Add": lambda o, a, b: o.add(a, b),
    "Sub": lambda o, a, b: o.subtract(a, b),
    "Mul": lambda o, a, b: o.multiply(a, b),
    "Div": lambda o, a, b: o.divide(a, b),
    "Pow": lambda o, a, b: o.power(a, b),
    "Max": lambda o, *a: _fold(o.maximum, a),
    "Min": lambda o, *a: _fold(o.minimum, a),
    "Sum": lambda o, *a: _fold(o.add, a),
    "Sigmoid": lambda o, a: o.sigmoid(a),
    "Tanh": lambda o, a: o.tanh(a),
    "Erf": lambda o, a: o.erf(a),
    "Sqrt": lambda o, a: o.sqrt(a),
    "Exp": lambda o, a: o.exp(a),
    "Log": lambda o, a: o.log(a),
    "Neg": lambda o, a: o.negative(a),
    "Abs": lambda o, a: o.abs(a),
    "Reciprocal": lambda o, a: o.reciprocal(a) if hasattr(o, "reciprocal") else o.divide(1.0, a),
    "Softplus": lambda o, a: o.softplus(a),
    "Elu": lambda o, a: o.elu(a),
    "Selu": lambda o, a: o.selu(a),
}


def _fold(fn, args):
    out = args[0]
    for a in args[1:]:
        out = fn(out, a)
    return out


def _safe(name: str) -> str:
    out = "".join(c if c.isalnum() or c in "_-" else "_" for c in name).strip("_")
    return out if out and not out[0].isdigit() else f"t_{out}"


def onnx_to_keras(model: onnx.ModelProto, channels_last_inputs: bool = False):
    """Build the Keras model of an ONNX model (see the module docstring)."""
    import keras

    c = _Converter(model, channels_last_inputs)
    outputs = c.outputs[0] if len(c.outputs) == 1 else c.outputs
    inputs = c.inputs[0] if len(c.inputs) == 1 else c.inputs
    return keras.Model(inputs, outputs, name=_safe(c.name))


from . import onnx_keras_ops as _onnx_keras_ops  # noqa: F401 - registers the conversions
