"""A :class:`PruningPlan`: for each group, the channel classes to remove.

Computing a plan changes nothing; a backend applies it. Selection is local (the same ``ratio`` in every
group) or global (one ranking of normalised scores across groups), with ``max_ratio`` per group,
``round_to`` on the kept width, and never a layer emptied: every producer keeps at least one channel.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InvalidArgumentError
from .graph import Analysis


class PruningPlan:
    """Which channel classes go. ``removed_classes`` is a boolean array over the analysis' classes.

    >>> # plan = spa.plan(model, ratio=0.5); plan.removed()["conv1"]  -> indices of conv1's filters
    """

    def __init__(self, analysis: Analysis, removed_classes: np.ndarray, settings: dict | None = None):
        self.analysis = analysis
        self.graph = analysis.graph
        self.removed_classes = np.array(removed_classes, bool)
        self.removed_classes[analysis.fixed_class] = False
        self.settings = dict(settings or {})
        self.compensation = None  # OBSPA: transform(node, param, value) re-fitting the weights that stay
        self.builder = None  # the reconstruction: builder(graph, plan) -> slim model
        self._element_removed = self.removed_classes[analysis.class_of]

    # ---- per tensor / per parameter --------------------------------------------------------------
    def keep_mask(self, layout: np.ndarray) -> np.ndarray:
        return ~self._element_removed[layout]

    def width(self, tensor_id: int) -> int:
        """Channels of a tensor after pruning."""
        lay = self.analysis.layouts[tensor_id]
        return int(len(lay) - self._element_removed[lay].sum())

    def widths(self) -> dict:
        return {t: self.width(t) for t in self.analysis.layouts}

    def keep_indices(self, node, param) -> dict:
        """``{axis: kept indices}`` for every channel axis of ``param`` that loses entries."""
        out = {}
        for axis in param.axes:
            mask = self.keep_mask(self.analysis.axis_elements(node, param, axis))
            if not mask.all():
                out[axis] = np.nonzero(mask)[0]
        return out

    def param_shape(self, node, param) -> tuple:
        shape = list(param.shape)
        for axis, idx in self.keep_indices(node, param).items():
            shape[axis] = len(idx)
        return tuple(shape)

    # ---- reports ---------------------------------------------------------------------------------
    def removed(self) -> dict:
        """``{layer name: removed output channel indices}`` for every layer that loses channels; a
        layer's internal units (attention heads, key/value widths, recurrent units) are listed as
        ``"layer:heads"`` and so on."""
        out = {}
        for node in self.graph.nodes:
            if node.layer in out or not node.outputs:
                continue
            for i, t in enumerate(node.outputs):
                name = self.graph.tensors[t].name
                if i and not name.startswith(node.name + ":"):
                    continue  # a real second output (a state, attention scores)
                idx = np.nonzero(self._element_removed[self.analysis.layouts[t]])[0]
                if len(idx):
                    out[node.layer if i == 0 else node.layer + name[len(node.name):]] = idx
        return out

    @property
    def n_removed(self) -> int:
        """Number of channel classes removed."""
        return int(self.removed_classes.sum())

    def __repr__(self):
        return (
            f"PruningPlan({self.graph.name!r}: {self.n_removed} of {self.analysis.n_classes - 1} channel "
            f"classes removed in {len(self.removed())} layers)"
        )


def _check_fraction(name, value, upper_open=True):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v >= 1 if upper_open else v > 1):
        raise InvalidArgumentError(f"{name} must be in [0, {'1)' if upper_open else '1]'}, got {value!r}")
    return v


class GroupIndex:
    """Per group, its elements' classes and spaces: :meth:`limit` picks removals that leave every
    producer a channel (used by selection and by ``callbacks.strip``)."""

    def __init__(self, analysis: Analysis):
        a = analysis
        eg = a.group_of_class[a.class_of]
        order = np.argsort(eg, kind="stable")
        bounds = np.searchsorted(eg[order], np.arange(len(a.groups) + 1))
        self.elements = [order[bounds[i] : bounds[i + 1]] for i in range(len(a.groups))]
        self.analysis = a

    def limit(self, gid: int, ordered_classes: np.ndarray, n_remove: int) -> np.ndarray:
        """The first ``n_remove`` classes of ``ordered_classes`` that leave every space a channel."""
        if n_remove <= 0:
            return ordered_classes[:0]
        a = self.analysis
        elems = self.elements[gid]
        spaces = a.space_of[elems]
        chosen = ordered_classes[:n_remove]
        is_chosen = np.zeros(a.n_classes, bool)
        is_chosen[chosen] = True
        lost = np.bincount(spaces[is_chosen[a.class_of[elems]]], minlength=len(a.space_sizes))
        if np.all(lost < a.space_sizes):
            return chosen
        # rare (spaces of unequal width coupled through a concat): greedy, class by class
        left = a.space_sizes.copy()
        picked = []
        by_class = {}
        for e, s in zip(elems, spaces):
            by_class.setdefault(int(a.class_of[e]), []).append(s)
        for c in ordered_classes:
            sp = np.bincount(by_class[int(c)], minlength=len(left))
            if np.all(left - sp >= 1):
                left -= sp
                picked.append(c)
                if len(picked) == n_remove:
                    break
        return np.asarray(picked, np.int64)


def _n_remove(n: int, wanted: int, max_ratio: float, round_to: int) -> int:
    wanted = min(wanted, int(math.floor(max_ratio * n + 1e-9)), n - 1)
    if wanted <= 0:
        return 0
    keep = n - wanted
    if round_to > 1:
        keep = int(math.ceil(keep / round_to) * round_to)
    return max(0, n - keep)


def select(
    analysis: Analysis,
    scores: np.ndarray,
    ratio: float = 0.5,
    global_pruning: bool = False,
    max_ratio: float = 1.0,
    round_to: int = 1,
    group_ratios: dict | None = None,
) -> PruningPlan:
    """Choose the classes to remove from per-class ``scores`` (lower = less important; NaN = keep).

    Local: each group loses ``floor(ratio * size)`` classes. Global: the ``ratio`` of all prunable
    classes with the lowest scores, wherever they are, then the per-group limits. ``group_ratios``
    (group id -> ratio) prunes those groups locally at their own ratio, in either mode.
    """
    ratio = _check_fraction("ratio", ratio)
    max_ratio = _check_fraction("max_ratio", max_ratio, upper_open=False)
    if int(round_to) != round_to or round_to < 1:
        raise InvalidArgumentError(f"round_to must be a positive integer, got {round_to!r}")
    group_ratios = {int(k): _check_fraction("ratio_per_layer value", v) for k, v in (group_ratios or {}).items()}
    scores = np.asarray(scores, np.float64)
    if scores.shape != (analysis.n_classes,):
        raise InvalidArgumentError(
            f"the criterion returned {scores.shape} scores, expected one per channel class ({analysis.n_classes})"
        )
    removed = np.zeros(analysis.n_classes, bool)
    index = GroupIndex(analysis)
    scorable = np.isfinite(scores)
    if global_pruning:
        pool = [g.classes[scorable[g.classes]] for g in analysis.groups if g.id not in group_ratios]
        pool = np.concatenate(pool) if pool else np.zeros(0, np.int64)
        k = int(math.floor(ratio * len(pool)))
        chosen = pool[np.argsort(scores[pool], kind="stable")[:k]]
        wanted = np.bincount(analysis.group_of_class[chosen], minlength=len(analysis.groups))
    for g in analysis.groups:
        n = g.size
        if g.id in group_ratios:
            want = int(math.floor(group_ratios[g.id] * n + 1e-9))
        elif global_pruning:
            want = int(wanted[g.id])
        else:
            want = int(math.floor(ratio * n + 1e-9))
        k = _n_remove(n, want, max_ratio, int(round_to))
        candidates = g.classes[scorable[g.classes]]
        order = candidates[np.argsort(scores[candidates], kind="stable")]
        removed[index.limit(g.id, order, k)] = True
    settings = dict(ratio=ratio, global_pruning=global_pruning, max_ratio=max_ratio, round_to=int(round_to))
    return PruningPlan(analysis, removed, settings)
