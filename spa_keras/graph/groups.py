"""Group discovery (DepGraph): which channels of which parameters must be removed together.

:func:`analyse` runs every node's channel rule in topological order, unites what shared parameters,
ties, ignored layers and the model's outputs demand, and splits the channels into *classes* (one
prunable unit each: a channel of a residual stream is one class across every block it passes) and the
classes into *groups* (classes that share producers; the unit of a local pruning ratio).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ir import Graph, Node
from .rules import FIXED, RULES, Context


class GraphError(ValueError):
    """The graph is inconsistent (a frontend described an op wrongly)."""


def connected_labels(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A label per element ``0..n-1`` such that elements joined by the edges ``(a[i], b[i])`` share it.

    Minimum-label propagation with pointer jumping; every step is a vectorised NumPy operation.
    """
    label = np.arange(n, dtype=np.int64)
    if a.size == 0:
        return label
    while True:
        m = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        np.minimum.at(new, label, new)
        new = new[new[new]]
        if np.array_equal(new, label):
            return label
        label = new


def axis_elements(layouts, node: Node, param, axis: int) -> np.ndarray:
    """Element id of every entry along ``param``'s channel ``axis``, read from the layouts."""
    ref = param.axes[axis]
    tensors = node.inputs if ref.side == "in" else node.outputs
    lay = layouts[tensors[ref.index]]
    if ref.repeat > 1:
        lay = np.repeat(lay, ref.repeat)
    if ref.tile > 1:
        lay = np.tile(lay, ref.tile)
    if ref.block:
        lay = lay[: param.shape[axis]]
    if len(lay) == 0:  # a tensor whose channels could not be read (unknown width or axis): held
        return np.zeros(param.shape[axis], np.int64)
    if len(lay) != param.shape[axis]:
        raise GraphError(
            f"{node.name}: parameter {param.name} has {param.shape[axis]} entries on axis {axis} "
            f"but the tensor it follows has {len(lay)} channels"
        )
    return lay


@dataclass
class Group:
    """Classes of channels that share producers. ``classes`` are indices into the analysis' class
    table; ``spaces`` are the producers' output spaces it spans (each must keep a channel)."""

    id: int
    classes: np.ndarray
    spaces: np.ndarray
    root: str
    nodes: list = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(len(self.classes))

    def __repr__(self):
        return f"Group({self.id}, root={self.root!r}, channels={self.size}, nodes={len(self.nodes)})"


class Analysis:
    """The channel structure of a graph: layouts, classes, groups. Computing it changes nothing."""

    def __init__(self, graph: Graph, layouts, ctx: Context, label: np.ndarray):
        self.graph = graph
        self.layouts: dict[int, np.ndarray] = layouts
        self.n_elements = ctx.next_id
        starts = np.asarray(ctx.space_starts + [ctx.next_id])
        self.space_nodes = ctx.space_nodes
        self.space_sizes = np.diff(starts)
        self.space_of = np.repeat(np.arange(len(self.space_sizes)), self.space_sizes)
        # classes: one per distinct label that is not FIXED
        fixed_label = label[FIXED]
        uniq, inverse = np.unique(label, return_inverse=True)
        self.class_of = inverse.astype(np.int64)  # element -> class index
        self.n_classes = len(uniq)
        self.fixed_class = int(np.searchsorted(uniq, fixed_label))
        self._build_groups()
        self._build_tie_sets()

    # ---- element / class helpers -------------------------------------------------------------
    def axis_elements(self, node: Node, param, axis: int) -> np.ndarray:
        """Element id of every entry along a parameter's channel axis."""
        return axis_elements(self.layouts, node, param, axis)

    def prunable_classes(self) -> np.ndarray:
        c = np.arange(self.n_classes)
        return c[c != self.fixed_class]

    def _build_groups(self):
        cls = self.class_of
        n_spaces = len(self.space_sizes)
        # connect spaces whose elements share a class
        rep_space = np.full(self.n_classes, -1, np.int64)
        rep_space[cls[::-1]] = self.space_of[::-1]  # first space of each class
        nonfixed = cls != self.fixed_class
        space_label = connected_labels(n_spaces, self.space_of[nonfixed], rep_space[cls[nonfixed]])
        self.groups: list[Group] = []
        self.group_of_class = np.full(self.n_classes, -1, np.int64)
        class_space_label = space_label[rep_space]
        prunable = np.ones(self.n_classes, bool)
        prunable[self.fixed_class] = False
        labels = np.unique(class_space_label[prunable])
        order = np.argsort(class_space_label, kind="stable")
        sorted_labels = class_space_label[order]
        for gid, lab in enumerate(labels):
            lo, hi = np.searchsorted(sorted_labels, [lab, lab + 1])
            members = order[lo:hi]
            members = members[prunable[members]]
            spaces = np.nonzero(space_label == lab)[0]
            root = self.space_nodes[int(spaces[0])]
            self.groups.append(Group(len(self.groups), members, spaces, root))
            self.group_of_class[members] = len(self.groups) - 1
        # nodes touching each group, for reports
        for node in self.graph.nodes:
            seen = set()
            for t in node.outputs:
                lay = self.layouts.get(t)
                if lay is None or not len(lay):
                    continue
                for g in np.unique(self.group_of_class[cls[lay]]):
                    if g >= 0 and g not in seen:
                        seen.add(int(g))
                        self.groups[int(g)].nodes.append(node.name)

    def _build_tie_sets(self):
        """``tie_sets``: for each count tie of the graph, the ids of the groups that must lose equally many
        classes. ``untied``: the count ties that cannot be kept by equal counts (a tensor held while another
        is not, or tensors that are not each one whole group of one size): :func:`analyse` holds them."""
        self.tie_sets, self.untied = [], []
        for tensors in self.graph.count_ties:
            gids, held, bad = [], False, False
            for t in tensors:
                cls = np.unique(self.class_of[self.layouts[t]])
                cls = cls[cls != self.fixed_class]
                g = np.unique(self.group_of_class[cls])
                if not len(cls):
                    held = True
                elif len(g) == 1 and self.groups[int(g[0])].size == len(cls):
                    gids.append(int(g[0]))
                else:
                    bad = True
            gids = list(dict.fromkeys(gids))
            if bad or (held and gids) or len({self.groups[g].size for g in gids}) > 1:
                self.untied.append(tensors)
            elif len(gids) > 1:
                self.tie_sets.append(gids)
        self.links = []  # (driver group, follower group, factor, multiple)
        for driver, follower, factor, multiple in self.graph.count_links:
            d, f = self._group_of(driver), self._group_of(follower)
            if d is not None and f is not None:
                self.links.append((d, f, factor, multiple))
            elif d is not None or f is not None:
                self.untied.append([driver, follower])  # one of them is held: hold both

    def _group_of(self, tensor):
        """The one group holding every prunable class of ``tensor`` (None when it has none)."""
        cls = np.unique(self.class_of[self.layouts[tensor]])
        cls = cls[cls != self.fixed_class]
        g = np.unique(self.group_of_class[cls])
        return int(g[0]) if len(g) == 1 else None

    def summary(self) -> str:
        lines = [f"{len(self.groups)} groups, {self.n_classes - 1} prunable channel classes"]
        for g in self.groups:
            lines.append(f"  {g.root}: {g.size} channels, {len(g.nodes)} ops")
        return "\n".join(lines)


def analyse(graph: Graph, fixed_nodes=(), held=()) -> Analysis:
    """Run the channel rules over ``graph`` and discover its groups.

    ``fixed_nodes``: names of nodes whose output channels must all be kept (ignored layers). ``held``:
    tensors whose channels are all kept (count ties that equal counts cannot honour).
    """
    ctx = Context()
    layouts: dict[int, np.ndarray] = {}
    fixed_nodes = set(fixed_nodes)
    for t in graph.inputs:
        layouts[t] = np.zeros(graph.tensors[t].channels, np.int64)
    for node in graph.nodes:
        rule = RULES.get(node.kind)
        if rule is None:
            raise GraphError(f"{node.name}: unknown op kind {node.kind!r}")
        ins = [layouts[t] for t in node.inputs]
        outs = rule(node, ins, ctx, graph)
        for t, lay in zip(node.outputs, outs):
            layouts[t] = lay
            if node.name in fixed_nodes:
                ctx.fix(lay)
    for a, b in graph.ties:
        if len(layouts[a]) != len(layouts[b]):
            raise GraphError(f"tied tensors {graph.tensors[a].name} and {graph.tensors[b].name} differ in width")
        ctx.union(layouts[a], layouts[b])
    for t in list(graph.outputs) + list(held):
        ctx.fix(layouts[t])
    # a parameter used by several nodes (a shared layer) unites what each use reads and writes
    first: dict = {}
    for node in graph.nodes:
        for p in node.params:
            for axis in p.axes:
                lay = axis_elements(layouts, node, p, axis)
                k = (p.key, axis)
                if k in first:
                    ctx.union(first[k], lay)
                else:
                    first[k] = lay
    a, b = ctx.edges()
    label = connected_labels(ctx.next_id, a, b)
    result = Analysis(graph, layouts, ctx, label)
    if result.untied:
        return analyse(graph, fixed_nodes, list(held) + [t for ts in result.untied for t in ts])
    return result
