"""The standard channel graph: tensors with a channel axis, nodes of known kinds, parameter handles.

Nothing here knows which framework a model came from. A frontend describes each operation as a
:class:`Node` of a kind listed in :mod:`spa_keras.graph.rules`, with the parameters it owns and, for
each parameter axis that runs along channels, which tensor's channels it follows (:class:`AxisRef`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

# Parameter roles. A *writer* produces or scales a channel (a kernel's output axis, a bias, a BN
# gamma/beta/mean): zeroing it zeroes the channel. A *stat* is sliced with the channel but never zeroed
# (a BN variance). The role of an axis that reads a channel (a consumer's input axis) is told by the
# AxisRef's side, not by the parameter.
WEIGHT = "weight"  # kernels, embeddings, BN/LN gamma: scored by magnitude criteria
BIAS = "bias"  # biases, BN beta and moving mean: sliced and zeroed, not scored
STAT = "stat"  # variances: sliced, never zeroed, not scored


@dataclass(frozen=True)
class AxisRef:
    """Which tensor's channels one parameter axis runs along.

    ``side`` is ``"in"`` or ``"out"`` and ``index`` the position among the node's inputs or outputs.
    ``repeat`` > 1 means every channel of that tensor owns ``repeat`` consecutive entries of the axis
    (a separable conv's pointwise kernel after a depth multiplier). ``block`` means the axis holds one
    group's share of the channels only (a grouped conv's input axis): entry ``j`` stands for channel
    ``j`` of every group, which the grouped-conv rule couples. ``tile`` > 1 means the axis holds
    ``tile`` consecutive copies of the channels (the gates of an LSTM: ``[i | f | c | o]``).
    """

    side: str
    index: int = 0
    repeat: int = 1
    block: bool = False
    tile: int = 1


IN = AxisRef("in", 0)
OUT = AxisRef("out", 0)


@dataclass
class Param:
    """One parameter array. ``key`` identifies it across nodes (a shared layer's kernel has one key)."""

    key: Hashable
    name: str
    shape: tuple
    axes: dict = field(default_factory=dict)  # axis -> AxisRef
    role: str = WEIGHT
    tag: str = ""  # "norm_scale" for BN/LayerScale gammas (network-slimming criterion)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n


@dataclass
class TensorInfo:
    """A tensor of the graph. ``shape`` has no batch axis; ``channels`` is the channel axis' size
    (0 when the tensor has no channel axis the graph can reason about, e.g. integer token ids)."""

    id: int
    name: str
    shape: tuple
    channels: int
    channel_axis: int = -1

    @property
    def spatial(self) -> int:
        """Product of the non-channel, non-batch dimensions (1 for a vector)."""
        n = 1
        axis = self.channel_axis % len(self.shape) if self.shape else 0
        for i, d in enumerate(self.shape):
            if i != axis:
                n *= int(d) if d is not None else 1
        return n


@dataclass
class Node:
    """One call of an operation.

    ``kind`` names a channel rule in :mod:`spa_keras.graph.rules`; ``attrs`` holds what that rule needs
    (``groups``, ``multiplier``, ``reason`` for a node held fixed, ...). ``macs`` lists terms
    ``(constant, [AxisRef, ...])``: the node's multiply-accumulates are the sum over terms of the
    constant times the current width of each referenced tensor. ``layer`` names the layer for reports
    and ``ref`` is the frontend's own handle (opaque here).
    """

    name: str
    kind: str
    inputs: list
    outputs: list
    params: list = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    macs: list = field(default_factory=list)
    layer: str = ""
    ref: Any = None


class Graph:
    """Tensors and nodes in topological order, plus ties (tensors that must keep identical channels,
    e.g. the same inner tensor of a nested model called twice), count ties (tensors that must keep the
    same *number* of channels, e.g. the MLP width of every block of a model whose configuration has one
    width for all) and the model's inputs and outputs."""

    def __init__(self, name: str = "model"):
        self.name = name
        self.tensors: dict[int, TensorInfo] = {}
        self.nodes: list[Node] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.ties: list[tuple[int, int]] = []
        self.count_ties: list[list[int]] = []
        self.count_links: list[tuple[int, int, int, int]] = []

    def add_tensor(self, name: str, shape: tuple, channels: int, channel_axis: int = -1) -> int:
        tid = len(self.tensors)
        self.tensors[tid] = TensorInfo(tid, name, tuple(shape), int(channels), channel_axis)
        return tid

    def add_node(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def tie(self, a: int, b: int) -> None:
        self.ties.append((a, b))

    def link_counts(self, driver: int, follower: int, factor: int, multiple: int = 1) -> None:
        """``follower`` keeps one channel class for every ``factor`` channels ``driver`` keeps, in
        steps of ``multiple`` classes (a block whose head size is its hidden width divided by its heads:
        whole heads, or every head's size, go with the hidden width; rotary heads lose pairs)."""
        self.count_links.append((driver, follower, int(factor), int(multiple)))

    def tie_counts(self, tensors) -> None:
        """These tensors keep equal widths (which channels go may differ)."""
        tensors = list(tensors)
        if len(tensors) > 1:
            self.count_ties.append(tensors)

    def params(self):
        """Every distinct parameter (shared parameters once), in node order."""
        seen = set()
        for node in self.nodes:
            for p in node.params:
                if p.key not in seen:
                    seen.add(p.key)
                    yield p

    def __repr__(self):
        return f"Graph({self.name!r}, {len(self.nodes)} nodes, {len(self.tensors)} tensors)"
