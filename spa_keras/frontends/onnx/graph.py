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
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from ...errors import InvalidArgumentError, ModelFileError, UnsupportedModelError
from ...graph import STAT, Graph, Node, Param
from ..base import ModelView
from ..spec import Spec, check_finite
from . import view
from .ops import NCHW_OPS, SHAPE_OPS, OnnxCall, attr, describe
from .preprocess import fill_shapes, fold_static_shapes, runtime_shapes, untie_small_initializers

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


SKELETON_LIMIT = 4096  # elements: initializers larger than this are weights, not shapes


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its weights: every initializer larger than :data:`SKELETON_LIMIT` elements
    becomes a graph input of the same type and shape. Shape inference and the checker read only
    small constants (shapes, axes), and run on this in a fraction of the time a 500 MB model takes."""
    g = model.graph
    big = [i for i in g.initializer if int(np.prod(i.dims, dtype=np.int64)) > SKELETON_LIMIT]
    if not big:
        return model
    names = {i.name for i in big}
    declared = {vi.name for vi in g.input}
    inputs = list(g.input) + [onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
                              for i in big if i.name not in declared]
    graph = onnx.helper.make_graph(list(g.node), g.name, inputs, list(g.output),
                                   [i for i in g.initializer if i.name not in names], value_info=list(g.value_info))
    out = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    out.functions.extend(model.functions)
    return out


def inferred_graph(model: onnx.ModelProto):
    """The graph after ONNX shape inference, and ``{tensor name: [dims]}`` (None for unknown dims).
    Inference runs on the model's :func:`skeleton`; the graph returned holds the model's own inputs
    and initializers."""
    bare = skeleton(model)
    try:
        g = shape_inference.infer_shapes(bare).graph
    except Exception as e:  # noqa: BLE001
        raise UnsupportedModelError(f"ONNX shape inference failed on model {model.graph.name!r}: {e}") from e
    if bare is not model:  # the inferred nodes, outputs and value_info, the model's inputs and weights (no copy)
        g = SimpleNamespace(name=g.name, node=g.node, output=g.output, value_info=g.value_info,
                            input=model.graph.input, initializer=model.graph.initializer)
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return g, shapes


class OnnxGraph(ModelView):
    """An ONNX model read as a standard channel graph.

    Attributes: ``model`` (the input ``ModelProto``, never changed); ``graph`` (each node's ``ref`` is
    its index in ``model.graph.node``); ``arrays`` (parameter name -> NumPy array); ``specs`` (node name
    -> :class:`Spec`); ``protos`` (node name -> NodeProto).
    """

    kind = "ONNX"

    def __init__(self, model: onnx.ModelProto):
        model = untie_small_initializers(_without_constant_identities(model))
        g, self.shapes = inferred_graph(model)
        seen = runtime_shapes(model, self.shapes, g)  # what inference could not work out, from one run
        fill_shapes(self.shapes, seen)
        for _ in range(8):  # folding a shape can make the next ones static: until nothing changes
            folded = fold_static_shapes(model, self.shapes)
            if folded is model:
                break
            model = folded
            g, self.shapes = inferred_graph(model)
            fill_shapes(self.shapes, seen)
        self.model = model
        self.value_info = {vi.name: vi for vi in list(g.value_info) + list(g.output)}
        self._runner = None
        self.arrays = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for node in g.node:
            if node.op_type == "Constant" and attr(node, "value") is not None:
                self.arrays[node.output[0]] = numpy_helper.to_array(attr(node, "value"))
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
                check_finite(self.arrays[p.key], f"ONNX node {node.name!r} ({self.protos[node.name].op_type})",
                             f"initializer {p.key!r}", "Export the model again from weights that are finite")

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

    # ---- the frontend interface (spa_keras.frontends.base.ModelView): the view module
    input_specs = view.input_specs
    linear = view.linear
    batchnorm = view.batchnorm
    run = view.run

    def weight(self, key) -> np.ndarray:
        return self.arrays[key]

    # ---- nodes ---------------------------------------------------------------------------------------
    def _add(self, node, index):
        dyn = [x for x in node.input if x and x not in self.arrays]
        if any(x not in self.tid for x in dyn):
            raise UnsupportedModelError(f"ONNX node {node.name or node.op_type} reads a tensor no node writes: {dyn}")
        in_axis = self.axis.get(dyn[0]) if dyn else None
        if dyn and all(self.tid[x] is not None and self.graph.tensors[self.tid[x]].channels == 0 for x in dyn) \
                and node.op_type not in NCHW_OPS | {"Gemm", "MatMul"}:
            spec, out_axes = Spec("shape"), [None] * len(node.output)
        elif not dyn or node.op_type in SHAPE_OPS:
            spec, out_axes = Spec("shape"), [None] * len(node.output)
        else:
            spec, out_axes = describe(OnnxCall(self, node, dyn, in_axis))
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
