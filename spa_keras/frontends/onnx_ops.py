"""Registry entries of the ONNX frontend for the patterns that torchvision's models export: reshapes
that keep, merge or split the channel axis (channel shuffle, attention heads, window partitions),
slices of the channel axis, products of two computed tensors (attention), and convolutions whose
input channels cannot be followed.

Each entry takes ``(og, node, dyn, axis)`` (the :class:`~spa_keras.frontends.onnx.OnnxGraph` being
built, the ``NodeProto``, its non-constant inputs and the channel axis of the first) and returns
``(Spec, output axes)``, or ``None`` to leave the node to the frontend's other handlers.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import IN, OUT
from .spec import Spec, fixed

HANDLERS: dict = {}


def register(*ops):
    def deco(fn):
        for op in ops:
            HANDLERS[op] = fn
        return fn

    return deco


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def consumers(og, name) -> list:
    """The nodes (protos) that read tensor ``name``."""
    table = getattr(og, "_consumer_protos", None)
    if table is None:
        table = {}
        for n in og.model.graph.node:
            for x in n.input:
                table.setdefault(x, []).append(n)
        og._consumer_protos = table
    return table.get(name, [])


def _cum(dims):
    out = [1]
    for d in dims:
        out.append(out[-1] * int(d))
    return out


def reshape_move(src, a, dst):
    """How a row-major reshape from ``src`` to ``dst`` (full shapes, known dims) moves axis ``a``.

    ``("keep", k, outer, inner)``: the channels land on output axis ``k``, merged with ``outer``
    elements of the axes before them and ``inner`` after them (``outer == inner == 1``: the axis is
    kept as it is). ``("split", ks, parts)``: the channel axis is split into output axes ``ks`` of sizes
    ``parts``. ``None``: the channels are mixed with other axes in another way.
    """
    cs, cd = _cum(src), _cum(dst)
    if cs[-1] != cd[-1]:
        return None
    lo, hi = cs[a], cs[a + 1]
    common = set(cs) & set(cd)
    b0 = max(x for x in common if x <= lo)
    b1 = min(x for x in common if x >= hi)
    seg_src = [i for i in range(len(src)) if src[i] != 1 and cs[i] >= b0 and cs[i + 1] <= b1]
    seg_dst = [j for j in range(len(dst)) if dst[j] != 1 and cd[j] >= b0 and cd[j + 1] <= b1]
    if len(seg_dst) == 1:
        return ("keep", seg_dst[0], lo // b0, b1 // hi)
    if seg_src == [a] and len(seg_dst) > 1 and seg_dst == list(range(seg_dst[0], seg_dst[-1] + 1)):
        return ("split", seg_dst, [int(dst[j]) for j in seg_dst])
    return None


def _is_swap(node, i, j) -> bool:
    if node.op_type != "Transpose":
        return False
    perm = list(_attr(node, "perm") or [])
    want = list(range(len(perm)))
    if max(i, j) >= len(perm):
        return False
    want[i], want[j] = want[j], want[i]
    return perm == want


def _selects(og, name, axis, depth=6) -> bool:
    """Whether axis ``axis`` of tensor ``name`` is taken apart (Gather, Split, Slice along it) after
    ops that only move axes (Unsqueeze, Squeeze, Transpose)."""
    if depth == 0:
        return False
    rank = len(og.shapes.get(name) or [])
    for user in consumers(og, name):
        op = user.op_type
        if op in ("Gather", "Split", "Slice"):
            if op == "Slice":
                axes = _const_ints(og, user, 3)
                hit = axes is None or axis in [a % rank for a in axes]
            else:
                hit = int(_attr(user, "axis", 0)) % rank == axis
            if hit:
                return True
            continue
        if op == "Transpose":
            perm = list(_attr(user, "perm") or reversed(range(rank)))
            new = perm.index(axis)
        elif op in ("Unsqueeze", "Squeeze"):
            axes = _attr(user, "axes")
            axes = _const_ints(og, user, 1) if axes is None else list(axes)
            if axes is None:
                continue
            if op == "Unsqueeze":
                out_rank = rank + len(axes)
                new = axis
                for a in sorted(a % out_rank for a in axes):
                    if a <= new:
                        new += 1
            else:
                axes = [a % rank for a in axes]
                if axis in axes:
                    continue
                new = axis - sum(a < axis for a in axes)
        else:
            continue
        if _selects(og, user.output[0], new, depth - 1):
            return True
    return False


def _shape_entry_fix(shape_name, position):
    """Write the tensor's new width at ``position`` of a Reshape's shape constant (each node its own
    copy of the constant); a -1 there needs nothing."""

    def fix(proto, w_, backend):
        shape = backend.array(shape_name)
        if shape[position] == -1:
            return
        new = shape.copy()
        new[position] = w_(OUT)
        if np.array_equal(new, shape):
            return
        proto.input[1] = backend.add_constant(f"{shape_name}__{proto.name or 'reshape'}", new.astype(shape.dtype))

    return fix


@register("Reshape")
def reshape(og, node, dyn, axis):
    """A Reshape whose channel axis survives (kept, merged with neighbouring axes, or split into
    parts of which one carries the channels on): exact, with the shape constant rewritten."""
    src = list(og.shapes.get(dyn[0]) or [])
    dst = list(og.shapes.get(node.output[0]) or [])
    if axis is None or not src or not dst:
        return None
    if src[0] is None and dst[0] is None:
        src, dst = [1] + src[1:], [1] + dst[1:]
    if None in src or None in dst:
        return fixed("Reshape of a tensor with unknown dimensions"), [None]
    if src[axis] == 1:
        return None
    shape = og.arrays.get(node.input[1])
    if shape is None:
        return fixed("Reshape with a computed shape that follows the channel axis"), [None]
    shape = np.ravel(shape)
    move = reshape_move(src, axis, dst)
    if move is None:
        return fixed(f"Reshape {src[1:]} -> {dst[1:]} mixes the channel axis with other axes"), [None]
    if move[0] == "keep":
        _, k, outer, inner = move
        pos = k
        if outer == inner == 1:
            spec = Spec("identity")
        else:
            spec = Spec("regroup", attrs={"outer": outer, "inner": inner})
    else:
        _, ks, parts = move
        keep = len(parts) - 2  # (heads, head size), (q|k|v, heads, head size): whole heads
        users = consumers(og, node.output[0])
        if len(parts) == 2 and len(users) == 1 and _is_swap(users[0], ks[0], ks[1]):
            keep = 1  # a channel shuffle: (groups, channels per group) swapped, channel j of every group goes
        elif len(parts) == 2 and _selects(og, node.output[0], ks[0]):
            keep = 1  # (q|k|v, features): the first part is taken apart, the features go on
        pos = ks[keep]
        spec = Spec("unfold", attrs={"parts": parts, "keep": keep})
    zero_at = [i for i, s in enumerate(shape) if s == 0]
    if any(i != pos and i == axis for i in zero_at) or (pos in zero_at and pos != axis):
        return fixed("Reshape that copies the channel width with a 0 in its shape"), [None]
    spec.resize = _shape_entry_fix(node.input[1], pos)
    return spec, [pos]


def _const_ints(og, node, i):
    if len(node.input) <= i or not node.input[i]:
        return None
    v = og.arrays.get(node.input[i])
    return None if v is None else [int(x) for x in np.ravel(v)]


@register("Slice")
def slice_(og, node, dyn, axis):
    """A Slice of the channel axis with constant bounds and step 1: the output carries a contiguous
    range of the input's channels; the backend moves the bounds to the kept channels."""
    rank = len(og.shapes.get(dyn[0]) or [])
    starts, ends = _const_ints(og, node, 1), _const_ints(og, node, 2)
    if axis is None or starts is None or ends is None:
        return None
    axes = _const_ints(og, node, 3)
    axes = list(range(len(starts))) if axes is None else [a % rank for a in axes]
    if axis not in axes:
        return Spec("identity"), [axis]
    steps = _const_ints(og, node, 4) or [1] * len(axes)
    i = axes.index(axis)
    if steps[i] != 1:
        return fixed("Slice of the channel axis with a step"), [axis]
    c = og.shapes[dyn[0]][axis]
    start, end = starts[i], ends[i]
    start = max(0, min(c, start + c if start < 0 else start))
    end = max(0, min(c, end + c if end < 0 else end))
    if end <= start:
        return fixed("an empty Slice of the channel axis"), [axis]
    names = (node.input[1], node.input[2])

    def fix(proto, w_, backend):
        kept = backend.kept(IN)
        new_start, new_end = int(kept[:start].sum()), int(kept[:end].sum())
        for slot, name, old, new in ((1, names[0], start, new_start), (2, names[1], end, new_end)):
            if old == new:
                continue
            value = backend.array(name).copy()
            value[i] = new
            proto.input[slot] = backend.add_constant(f"{name}__{proto.name or 'slice'}", value)

    return Spec("slice", attrs={"start": start, "end": end}, resize=fix), [axis]


@register("MatMul")
def matmul(og, node, dyn, axis):
    """The product of two computed tensors (attention scores, attention times values): the channel
    axis is a batch axis of both (attention heads), the rows of the first or the columns of the
    second; anything else is held. Its MACs are counted."""
    if len(dyn) != 2:
        return None
    a, b = dyn
    sa, sb, so = (og.shapes.get(x) or [] for x in (a, b, node.output[0]))
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


@register("Conv")
def conv(og, node, dyn, axis):
    """A grouped or depthwise convolution whose input channels are not followed (a token tensor
    reshaped into an image in a way the frontend cannot read, as conv-attention hybrids' position
    encodings do) is held: its group count follows those channels."""
    t = og.tid.get(dyn[0])
    grouped = int(_attr(node, "group", 1) or 1) > 1
    if grouped and (axis != 1 or t is None or og.graph.tensors[t].channels == 0):
        return fixed("grouped Conv whose input channels cannot be followed"), [1]
    return None


# ---- static shape arithmetic -----------------------------------------------------------------------

FOLDABLE = {
    "Shape", "Size", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Cast", "Add", "Sub", "Mul",
    "Div", "Mod", "Neg", "Abs", "Floor", "Ceil", "Sqrt", "Equal", "Less", "Greater", "Where", "Not", "And", "Or",
    "Min", "Max", "Range", "ConstantOfShape", "Expand", "ReduceProd", "Identity", "Pow", "Reciprocal",
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
    import copy

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
