"""Rewrites of an exported ONNX graph before it is read (each on a copy; the input model is not
changed): static shape arithmetic folded into constants, and small initializers that the exporters
merged by value given back to each node."""

from __future__ import annotations

import copy

import numpy as np
import onnx

from .ops import attr as _attr

FOLDABLE = {
    "Shape", "Size", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Cast", "Add", "Sub", "Mul",
    "Div", "Mod", "Neg", "Abs", "Floor", "Ceil", "Sqrt", "Equal", "Less", "Greater", "Where", "Not", "And", "Or",
    "Min", "Max", "Range", "ConstantOfShape", "Expand", "ReduceProd", "Identity", "Pow", "Reciprocal",
    "Transpose", "Tile", "Flatten", "ReduceSum", "ReduceMax", "ReduceMin", "Sign", "Clip", "GreaterOrEqual",
    "LessOrEqual", "Xor", "Trilu", "CumSum", "Round", "Softmax", "Exp", "Log",
}  # fmt: skip
FOLD_LIMIT = 64  # elements: shape vectors and scalars, never weights


def _eval_node(node, feeds, opset):
    import onnx.reference

    graph = onnx.helper.make_graph(
        [node], "fold",
        [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in feeds.items()],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
    )
    ref = onnx.reference.ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=opset))
    return [np.asarray(v) for v in ref.run(None, feeds)]


def fold_static_shapes(model: onnx.ModelProto, shapes: dict) -> onnx.ModelProto:
    """Replace shape arithmetic by constants where every shape is static: ``Shape`` of a tensor whose
    dimensions are all known, and the small computations that depend on it (the TorchScript exporter
    computes a Reshape's target from ``Shape`` even when it is fixed). A Reshape's target then reads
    as a constant that the backend can rewrite. The input model is not changed."""
    from onnx import numpy_helper

    small = {i.name: i for i in model.graph.initializer if int(np.prod(i.dims, dtype=np.int64)) <= FOLD_LIMIT}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    opset = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    values, folded = {}, set()

    def value(x):
        if x in values:
            return values[x]
        if x in small:
            return numpy_helper.to_array(small[x])
        if x in consts and _attr(consts[x], "value") is not None:
            return numpy_helper.to_array(_attr(consts[x], "value"))
        return None

    for node in model.graph.node:
        if node.op_type == "Shape":
            dims = shapes.get(node.input[0])
            if dims is None or None in dims or _attr(node, "start") is not None or _attr(node, "end") is not None:
                continue
            values[node.output[0]] = np.array(dims, np.int64)
            folded.add(node.output[0])
            continue
        if node.op_type not in FOLDABLE or len(node.output) != 1:
            continue
        feeds = {x: value(x) for x in node.input if x}
        if any(v is None for v in feeds.values()):
            continue
        try:
            (out,) = _eval_node(node, feeds, opset)
        except Exception:  # noqa: BLE001 - folding is an optimisation: leave the node as it is
            continue
        if out.size > FOLD_LIMIT:
            continue
        values[node.output[0]] = out
        folded.add(node.output[0])
    if not folded:
        return model
    model = copy_model(model)
    keep = [n for n in model.graph.node if not (set(n.output) & folded)]
    used = {x for n in keep for x in n.input} | {o.name for o in model.graph.output}
    keep = [n for n in keep if n.op_type != "Constant" or n.output[0] in used]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    for name in sorted(folded & used):
        model.graph.initializer.append(numpy_helper.from_array(values[name], name))
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    return model


def copy_model(model):
    return copy.deepcopy(model)


UNTIE_LIMIT = 65536  # elements: vectors (biases, norm scales), not weight matrices


def untie_small_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node its own copy of a small float initializer that several nodes read.

    PyTorch's exporters merge initializers with equal values: in a model built with ``weights=None``
    every zero bias, every BatchNorm's ones and zeros and every LayerNorm scale become one tensor, read
    by unrelated layers. Read as shared parameters, they would tie those layers' channels together
    (still exact, but pruning the same channels everywhere). Vectors are untied; large tensors (a real
    tied weight) stay shared. The input model is not changed."""
    from onnx import numpy_helper

    small = {i.name: i for i in model.graph.initializer
             if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
             and 1 < int(np.prod(i.dims, dtype=np.int64)) <= UNTIE_LIMIT}
    users: dict = {}
    for k, node in enumerate(model.graph.node):
        for x in set(node.input):
            if x in small:
                users.setdefault(x, []).append(k)
    shared = {x: ks for x, ks in users.items() if len(ks) > 1}
    if not shared:
        return model
    model = copy_model(model)
    names = {i.name for i in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    for x, ks in shared.items():
        value = numpy_helper.to_array(small[x])
        for j, k in enumerate(ks[1:], start=1):
            name = f"{x}__{j}"
            while name in names:
                name += "_"
            names.add(name)
            model.graph.initializer.append(numpy_helper.from_array(value, name))
            node = model.graph.node[k]
            for i, inp in enumerate(node.input):
                if inp == x:
                    node.input[i] = name
    return model


def runtime_shapes(model: onnx.ModelProto, shapes: dict, graph) -> dict:
    """The real shapes of the tensors that shape inference leaves unknown, from one onnxruntime run at
    the declared input shapes, when every input dimension is declared (the graph is then static and
    any unknown is a gap of inference, not a dynamic size). ``{}`` when nothing is missing or the
    model cannot be run."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            return {}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(graph.value_info) + list(graph.output)}
    missing = [o for n in model.graph.node for o in n.output
               if o and (shapes.get(o) is None or None in shapes[o]) and types.get(o)]
    if not missing:
        return {}
    try:
        import onnxruntime as ort

        from .runtime import session as ort_session

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort_session(model, options, [onnx.helper.make_tensor_value_info(o, types[o], None) for o in missing])
        rng = np.random.default_rng(0)
        feeds = {}
        for vi in inputs:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating) \
                else np.zeros(shape, dtype)
        names = [o.name for o in session.get_outputs()]
        values = session.run(missing, feeds) if set(missing) <= set(names) else []
    except Exception:  # noqa: BLE001 - a gap of inference stays a gap
        return {}
    return {name: list(np.shape(v)) for name, v in zip(missing, values)}


def fill_shapes(shapes: dict, known: dict) -> dict:
    """``shapes`` with the unknown ones taken from ``known`` (same rank or no shape at all)."""
    for name, dims in known.items():
        have = shapes.get(name)
        if have is None or (len(have) == len(dims) and None in have):
            shapes[name] = list(dims)
    return shapes
