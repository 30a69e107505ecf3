"""Registry entries of the ONNX ops that move, cut or regroup the channel axis without computing on it:
Slice, Flatten, Reshape (kept, merged, split into heads or a channel shuffle), Transpose,
Squeeze/Unsqueeze and Gather. They register in the one :data:`~.ops.REGISTRY` (``ops`` imports this
module), with the same ``fn(call) -> (Spec, out_axes)`` contract.
"""

from __future__ import annotations

import numpy as np

from ...graph import IN, OUT
from ..spec import Spec, fixed, reshape_move, reshape_rule
from .ops import OnnxCall, attr, register_op

# ---- slices ------------------------------------------------------------------------------------


@register_op("Slice")
def _slice(c: OnnxCall):
    """A Slice of the channel axis with constant bounds and step 1 carries a contiguous range of the
    input's channels on; the backend moves the bounds to the kept channels. Other slices keep it."""
    og, node = c.reader, c.node
    rank = c.rank_in
    starts, ends = _const_ints(og, node, 1), _const_ints(og, node, 2)
    axes = _const_ints(og, node, 3)
    if axes is None and len(node.input) > 3 and node.input[3]:
        return fixed("Slice with computed axes"), c.same
    axes = list(range(rank if starts is None else len(starts))) if axes is None else [a % rank for a in axes]
    if c.axis not in axes:
        return Spec("identity"), c.same
    if starts is None or ends is None:
        return fixed("Slice of the channel axis with computed bounds"), c.same
    steps = _const_ints(og, node, 4) or [1] * len(axes)
    i = axes.index(c.axis)
    if steps[i] != 1:
        return fixed("Slice of the channel axis with a step"), c.same
    n = c.shape(c.dyn[0])[c.axis]
    start, end = starts[i], ends[i]
    start = max(0, min(n, start + n if start < 0 else start))
    end = max(0, min(n, end + n if end < 0 else end))
    if end <= start:
        return fixed("an empty Slice of the channel axis"), c.same
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

    return Spec("slice", attrs={"start": start, "end": end}, resize=fix), c.same



# ---- shapes --------------------------------------------------------------------------------------


def _flat(c: OnnxCall, src, dst, resize=None):
    """A reshape of ``src`` to ``dst`` (batch included) by :func:`reshape_rule`, or held fixed."""
    rule = reshape_rule(src[1:], dst[1:], c.axis - 1)
    if rule is None:
        return fixed(f"{c.op} {src} -> {dst} moves the channel axis"), [None]
    kind, where = rule
    if kind == "identity":
        return Spec("identity", resize=resize and resize(where + 1, src[c.axis])), [where + 1]
    spec = Spec("flatten", {}, {"channel_major": where == "repeat"},
                resize=resize and resize(1, int(np.prod(src[1:]))))
    return spec, [1]


@register_op("Flatten")
def _flatten(c: OnnxCall):
    src, dst = c.shape(c.dyn[0]), c.shape_out
    if c.axis is None or c.attr("axis", 1) % max(c.rank_in, 1) != 1 or None in src[1:]:
        return fixed("Flatten that does not start after the batch axis, or of unknown dimensions"), [None]
    return _flat(c, src, dst)


@register_op("Reshape")
def _reshape(c: OnnxCall):
    """A Reshape whose channel axis survives (kept, merged with neighbouring axes, or split into parts
    of which one carries the channels on: whole attention heads, or channel ``j`` of every group of a
    channel shuffle): exact, with the shape constant rewritten."""
    node, og = c.node, c.reader
    src, dst = list(c.shape(c.dyn[0])), list(c.shape_out)
    if c.axis is None or not src or not dst:
        return fixed("Reshape of a tensor with unknown dimensions"), [None]
    if src[0] is None and dst[0] is None:
        src, dst = [1] + src[1:], [1] + dst[1:]
    if None in src or None in dst:
        return fixed("Reshape of a tensor with unknown dimensions"), [None]
    if src[c.axis] == 1:
        return fixed("Reshape of a tensor with one channel"), [None]
    shape = c.const(node.input[1])
    if shape is None:
        return fixed("Reshape with a computed shape that follows the channel axis"), [None]
    shape = np.ravel(shape)
    move = reshape_move(src, c.axis, dst)
    if move is None:
        return fixed(f"Reshape {src[1:]} -> {dst[1:]} mixes the channel axis with other axes"), [None]
    if move[0] == "keep":
        _, pos, outer, inner = move
        spec = Spec("identity") if outer == inner == 1 else Spec("regroup", attrs={"outer": outer, "inner": inner})
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
    if any(i != pos and i == c.axis for i in zero_at) or (pos in zero_at and pos != c.axis):
        return fixed("Reshape that copies the channel width with a 0 in its shape"), [None]
    spec.resize = _shape_entry_fix(node.input[1], pos)
    return spec, [pos]


def consumers(reader, name) -> list:
    """The nodes (protos) that read tensor ``name``."""
    table = getattr(reader, "_consumer_protos", None)
    if table is None:
        table = {}
        for n in reader.model.graph.node:
            for x in n.input:
                table.setdefault(x, []).append(n)
        reader._consumer_protos = table
    return table.get(name, [])


def _is_swap(node, i, j) -> bool:
    if node.op_type != "Transpose":
        return False
    perm = list(attr(node, "perm") or [])
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
                hit = int(attr(user, "axis", 0)) % rank == axis
            if hit:
                return True
            continue
        if op == "Transpose":
            perm = list(attr(user, "perm") or reversed(range(rank)))
            new = perm.index(axis)
        elif op in ("Unsqueeze", "Squeeze"):
            axes = attr(user, "axes")
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


def _const_ints(og, node, i):
    if len(node.input) <= i or not node.input[i]:
        return None
    v = og.arrays.get(node.input[i])
    return None if v is None else [int(x) for x in np.ravel(v)]




@register_op("Transpose")
def _transpose(c: OnnxCall):
    perm = list(c.attr("perm") or reversed(range(c.rank_in)))
    return Spec("identity"), [perm.index(c.axis)]


@register_op("Squeeze", "Unsqueeze")
def _squeeze(c: OnnxCall):
    node, rank = c.node, c.rank_in
    axes = c.attr("axes")
    if axes is None and len(node.input) > 1:
        axes = c.const(node.input[1])
    if axes is None:
        return fixed(f"{c.op} with computed axes"), c.same
    if c.op == "Squeeze":
        axes = [int(a) % rank for a in np.ravel(axes)]
        if c.axis in axes:
            return fixed("Squeeze of the channel axis"), c.same
        return Spec("identity"), [c.axis - sum(a < c.axis for a in axes)]
    rank_out = rank + len(np.ravel(axes))
    new = c.axis
    for a in sorted(int(a) % rank_out for a in np.ravel(axes)):
        if a <= new:
            new += 1
    return Spec("identity"), [new]


@register_op("Gather")
def _gather(c: OnnxCall):
    a = c.attr("axis", 0) % c.rank_in
    if a == c.axis:
        return fixed("Gather along the channel axis"), c.same
    idx = c.const(c.node.input[1])
    dropped = 1 if idx is not None and np.ndim(idx) == 0 else 0
    return Spec("identity"), [c.axis - dropped if a < c.axis else c.axis]
