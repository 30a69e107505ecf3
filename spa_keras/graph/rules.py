"""The catalogue of op kinds and each kind's channel rule.

A tensor's channels are described by a *layout*: an integer array with one *element id* per channel.
A producer (a conv, a dense layer) creates fresh ids; every other op says how its outputs' ids follow
from its inputs' ids and which ids must be removed together (``union``). Element id 0 is the FIXED
element: whatever is united with it can never be pruned. Two channels whose ids end up united form one
prunable unit; removing it removes every channel, kernel slice and statistic that carries one of its ids.

Each rule takes the node, its input layouts and a :class:`Context`, and returns the output layouts.
Adding a kind of coupling means adding one function to :data:`RULES`.
"""

from __future__ import annotations

import numpy as np

FIXED = 0


class Context:
    """What a rule may do: create fresh channels, unite channels, hold channels fixed."""

    def __init__(self):
        self.next_id = 1
        self.space_starts = [0]  # space 0 is the FIXED element alone
        self.space_nodes = ["<fixed>"]
        self._a: list = []
        self._b: list = []

    def fresh(self, n: int, node_name: str) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.space_starts.append(self.next_id)
        self.space_nodes.append(node_name)
        self.next_id += n
        return ids

    def union(self, a, b) -> None:
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        if a.size:
            a, b = np.broadcast_arrays(a, b)
            self._a.append(a.ravel())
            self._b.append(b.ravel())

    def fix(self, layout) -> None:
        self.union(layout, FIXED)

    def edges(self):
        if not self._a:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self._a), np.concatenate(self._b)


def fixed_layout(n: int) -> np.ndarray:
    return np.zeros(int(n), dtype=np.int64)


def _outs_like(node, graph, fill):
    return [fill(graph.tensors[t].channels) for t in node.outputs]


def rule_input(node, ins, ctx, graph):
    return _outs_like(node, graph, fixed_layout)


def rule_fixed(node, ins, ctx, graph):
    """Held fixed: its inputs keep every channel and its outputs are not prunable."""
    for lay in ins:
        ctx.fix(lay)
    return _outs_like(node, graph, fixed_layout)


def rule_linear(node, ins, ctx, graph):
    """A producer: fresh output channels (held with ``attrs["hold_output"]``: its width is not its own to
    change). With ``groups`` > 1, entry ``j`` of every input block and of every output block is one
    unit, so that all groups keep the same width."""
    out_t = graph.tensors[node.outputs[0]]
    out = ctx.fresh(out_t.channels, node.name)
    if node.attrs.get("hold_output"):
        ctx.fix(out)
    g = int(node.attrs.get("groups", 1))
    if g > 1:
        for lay in (ins[0], out):
            blocks = lay.reshape(g, -1)
            ctx.union(blocks[1:], blocks[0][None, :])
    rest = _outs_like(node, graph, fixed_layout)[1:]
    return [out] + rest


def rule_depthwise(node, ins, ctx, graph):
    """Depthwise: output channel ``c*m + j`` comes from input channel ``c`` (``m`` = multiplier)."""
    m = int(node.attrs.get("multiplier", 1))
    return [np.repeat(ins[0], m)]


def rule_identity(node, ins, ctx, graph):
    """Channel-wise ops (activations, BN, pooling, padding, dropout, a reshape that keeps the channel
    axis): every output carries the input's channels."""
    lay = ins[0]
    outs = []
    for t in node.outputs:
        if graph.tensors[t].channels == len(lay):
            outs.append(lay)
        else:
            ctx.fix(lay)
            outs.append(fixed_layout(graph.tensors[t].channels))
    return outs


def rule_merge(node, ins, ctx, graph):
    """Element-wise ops of several inputs (add, multiply, ...): the same channel of every input is one
    unit. An input broadcast along channels (width 1) does not take part."""
    n = graph.tensors[node.outputs[0]].channels
    full = [lay for lay in ins if len(lay) == n]
    if not full or any(len(lay) not in (1, n) for lay in ins):
        return rule_fixed(node, ins, ctx, graph)
    for lay in full[1:]:
        ctx.union(full[0], lay)
    return [full[0]]


def rule_concat(node, ins, ctx, graph):
    """Concatenation along channels: the output is the inputs' layouts one after another, so removing
    channel ``c`` of input ``k`` removes channel ``offset_k + c`` of the output."""
    out = np.concatenate(ins) if ins else fixed_layout(0)
    if len(out) != graph.tensors[node.outputs[0]].channels:
        return rule_fixed(node, ins, ctx, graph)
    return [out]


def rule_flatten(node, ins, ctx, graph):
    """Flatten. Channels-last (Keras): feature ``p*C + c`` is channel ``c`` at position ``p``, so the
    layout repeats once per position (the ``H*W`` blocks that a following dense layer reads).
    Channels-first (``attrs["channel_major"]``, ONNX/PyTorch): feature ``c*P + p``, each channel's
    ``P`` features side by side."""
    lay = ins[0]
    n = graph.tensors[node.outputs[0]].channels
    if len(lay) == 0 or n % len(lay):
        return rule_fixed(node, ins, ctx, graph)
    if node.attrs.get("channel_major"):
        return [np.repeat(lay, n // len(lay))]
    return [np.tile(lay, n // len(lay))]


def rule_split(node, ins, ctx, graph):
    """Split along channels: output ``k`` carries the next ``width_k`` channels of the input."""
    lay = ins[0]
    widths = [graph.tensors[t].channels for t in node.outputs]
    if sum(widths) != len(lay):
        return rule_fixed(node, ins, ctx, graph)
    return list(np.split(lay, np.cumsum(widths)[:-1]))


def rule_recurrent(node, ins, ctx, graph):
    """A recurrent layer: fresh units (its last output, a hidden tensor), carried by every real output
    (sequence, hidden and cell states). With ``attrs["concat"]`` (a Bidirectional layer in concat
    mode) both directions share the units and the first output is the two directions side by side."""
    units = ctx.fresh(int(node.attrs["units"]), node.name)
    outs = []
    for i, t in enumerate(node.outputs[:-1]):
        lay = np.tile(units, 2) if (i == 0 and node.attrs.get("concat")) else units
        if len(lay) != graph.tensors[t].channels:
            ctx.fix(units)
            lay = fixed_layout(graph.tensors[t].channels)
        outs.append(lay)
    return outs + [units]


def rule_attention(node, ins, ctx, graph):
    """Multi-head attention. Its last three outputs are hidden tensors with a fresh channel per head,
    per key dimension and per value dimension (each a unit of its own: a head goes whole, a key
    dimension goes from every head). The result carries the query's channels when the layer's output
    width follows the query (``attrs["tied"]``); other real outputs (attention scores) are fixed."""
    real, hidden = node.outputs[:-3], node.outputs[-3:]
    out_t = graph.tensors[real[0]]
    q = ins[int(node.attrs.get("query", 0))]
    out = q if node.attrs.get("tied") and len(q) == out_t.channels else ctx.fresh(out_t.channels, node.name)
    rest = [fixed_layout(graph.tensors[t].channels) for t in real[1:]]
    parts = [ctx.fresh(graph.tensors[t].channels, graph.tensors[t].name) for t in hidden]
    return [out] + rest + parts


def rule_regroup(node, ins, ctx, graph):
    """A reshape that merges the channel axis with ``attrs["outer"]`` elements of the axes before it
    and ``attrs["inner"]`` after it (row-major): output channel ``(q*C + c)*inner + p`` carries input
    channel ``c`` (heads merged back into features, the last reshape of a channel shuffle)."""
    lay = ins[0]
    outer, inner = int(node.attrs.get("outer", 1)), int(node.attrs.get("inner", 1))
    out = np.tile(np.repeat(lay, inner), outer)
    if len(out) != graph.tensors[node.outputs[0]].channels:
        return rule_fixed(node, ins, ctx, graph)
    return [out]


def rule_unfold(node, ins, ctx, graph):
    """A reshape that splits the channel axis into ``attrs["parts"]`` (row-major) and keeps part
    ``attrs["keep"]`` as the channel axis: the input channels that share an index along that part are
    one unit. Splitting features into (heads, head size) and keeping the heads removes whole heads;
    splitting into (groups, channels per group) and keeping the second (a channel shuffle) removes
    channel ``j`` of every group at once, so that the groups stay equal."""
    lay = ins[0]
    parts = [int(p) for p in node.attrs["parts"]]
    keep = int(node.attrs["keep"])
    if int(np.prod(parts)) != len(lay) or parts[keep] != graph.tensors[node.outputs[0]].channels:
        return rule_fixed(node, ins, ctx, graph)
    grid = np.moveaxis(lay.reshape(parts), keep, 0).reshape(parts[keep], -1)
    ctx.union(grid[:, 1:], grid[:, :1])
    return [grid[:, 0].copy()]


def rule_slice(node, ins, ctx, graph):
    """A slice of the channel axis (step 1): the output carries input channels ``attrs["start"]`` to
    ``attrs["end"]``. Its first channel is held, so that pruning never empties the slice."""
    lay = ins[0]
    out = lay[int(node.attrs["start"]) : int(node.attrs["end"])]
    if len(out) != graph.tensors[node.outputs[0]].channels or not len(out):
        return rule_fixed(node, ins, ctx, graph)
    ctx.fix(out[:1])
    return [out]


def rule_pick(node, ins, ctx, graph):
    """The output carries the channels of input ``attrs["input"]`` (the rows of a matrix product);
    every other input is held."""
    k = int(node.attrs.get("input", 0))
    for i, lay in enumerate(ins):
        if i != k:
            ctx.fix(lay)
    return rule_identity(node, [ins[k]], ctx, graph)


def rule_transformer(node, ins, ctx, graph):
    """A transformer block (attention and MLP around a residual stream), described whole.

    The stream passes through (the output carries the input's channels) unless ``attrs["stream"]`` is
    ``"hold"``. The last four outputs are hidden tensors: query heads, key/value heads, the head size
    (held unless ``attrs["head_dim"]``: then one class a dimension, in every head and projection at
    once) and the MLP units (fresh unless ``attrs["mlp"]`` is False). ``attrs["heads"]``: ``"mha"`` (a head's query, key and value go
    together), ``"gqa"`` (``groups`` query heads share a key/value head: the unit is a query head's
    slot within its group, taken from every group at once, so groups stay equal; key/value heads are
    held) or ``"hold"``."""
    x = ins[0]
    real, (heads_t, kv_t, hd_t, mlp_t) = node.outputs[:-4], node.outputs[-4:]
    width = lambda t: graph.tensors[t].channels  # noqa: E731
    if node.attrs.get("stream") == "hold":
        ctx.fix(x)
        out = fixed_layout(len(x))
    else:
        out = x
    mode = node.attrs.get("heads", "hold")
    if mode == "mha":
        heads = ctx.fresh(width(heads_t), graph.tensors[heads_t].name)
        kv = heads
    elif mode == "gqa":
        m = int(node.attrs["groups"])
        heads = np.tile(ctx.fresh(m, graph.tensors[heads_t].name), width(kv_t))
        kv = fixed_layout(width(kv_t))
    else:
        heads, kv = fixed_layout(width(heads_t)), fixed_layout(width(kv_t))
    mlp = ctx.fresh(width(mlp_t), graph.tensors[mlp_t].name) if node.attrs.get("mlp", True) else \
        fixed_layout(width(mlp_t))
    rest = [fixed_layout(width(t)) for t in real[1:]]
    hd = ctx.fresh(width(hd_t), graph.tensors[hd_t].name) if node.attrs.get("head_dim") else fixed_layout(width(hd_t))
    return [out] + rest + [heads, kv, hd, mlp]


RULES = {
    "transformer": rule_transformer,
    "shape": rule_input,  # reads only its input's shape (ONNX Shape): couples nothing
    "split": rule_split,
    "recurrent": rule_recurrent,
    "attention": rule_attention,
    "input": rule_input,
    "fixed": rule_fixed,
    "linear": rule_linear,
    "depthwise": rule_depthwise,
    "identity": rule_identity,
    "merge": rule_merge,
    "concat": rule_concat,
    "flatten": rule_flatten,
    "regroup": rule_regroup,
    "unfold": rule_unfold,
    "slice": rule_slice,
    "pick": rule_pick,
}
