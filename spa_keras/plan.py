"""A :class:`PruningPlan`: for each group, the channel classes to remove; and how plans are chosen.

Computing a plan changes nothing; a backend applies it. Selection is local (the same ``ratio`` in every
group) or global (one ranking of normalised scores across groups), with ``max_ratio`` per group,
``round_to`` on the kept width, and never a layer emptied: every producer keeps at least one channel.
A MACs or parameter target is met by :func:`search`. A plan is data: which classes go, the settings that
chose them, the graph it is for, and, when an algorithm re-fitted the weights that stay, their new
values as arrays. Nothing outside this module writes its fields.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .criteria.base import normalize
from .errors import InvalidArgumentError
from .graph import BIAS, WEIGHT, Analysis


class PruningPlan:
    """Which channel classes go. ``removed_classes`` is a boolean array over the analysis' classes.

    ``settings``: how it was chosen (and, for a target, where it landed). ``source``: the frontend's
    graph of the model it is for. ``compensation``: ``{parameter key: array}``, new full-width values
    of parameters an algorithm re-fitted (OBSPA's consumers, the reconstruction's first phase); they
    are written before the removed channels are sliced out.

    >>> # plan = spa.plan(model, ratio=0.5); plan.removed()["conv1"]  -> indices of conv1's filters
    """

    def __init__(self, analysis: Analysis, removed_classes: np.ndarray, settings: dict | None = None,
                 source=None, compensation: dict | None = None):
        self.analysis = analysis
        self.graph = analysis.graph
        self.removed_classes = np.array(removed_classes, bool)
        self.removed_classes[analysis.fixed_class] = False
        self.settings = dict(settings or {})
        self.source = source
        self.compensation = dict(compensation) if compensation else {}
        self._element_removed = self.removed_classes[analysis.class_of]

    @classmethod
    def empty(cls, analysis: Analysis, source=None) -> "PruningPlan":
        """The plan that removes nothing (a full-width copy of the model)."""
        return cls(analysis, np.zeros(analysis.n_classes, bool), source=source)

    # ---- the only writers of a plan's fields -----------------------------------------------------
    def record(self, **settings) -> "PruningPlan":
        """Add to ``settings`` (how the plan was made, where it landed)."""
        self.settings.update(settings)
        return self

    def attach(self, source) -> "PruningPlan":
        """Say which model (its frontend graph) the plan is for."""
        self.source = source
        return self

    def compensate(self, arrays: dict) -> "PruningPlan":
        """Set the re-fitted values ``{parameter key: full-width array}`` written before slicing."""
        self.compensation = dict(arrays)
        return self

    def value(self, param, value: np.ndarray) -> np.ndarray:
        """A parameter's value as the plan writes it before slicing: its compensation, if any."""
        return self.compensation.get(param.key, value)

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

    def writer_mask(self, node, param) -> np.ndarray | None:
        """Where ``param`` writes a removed channel (a kernel's output slices, a bias, a BN's
        gamma/beta/mean; never a variance or a reading axis), as a boolean array of its shape; None
        when it writes none."""
        if param.role not in (WEIGHT, BIAS):
            return None
        mask = None
        for axis, ref in param.axes.items():
            if ref.side != "out":
                continue
            hit = self._element_removed[self.analysis.axis_elements(node, param, axis)]
            if hit.any():
                mask = np.zeros(param.shape, bool) if mask is None else mask
                index = [slice(None)] * len(param.shape)
                index[axis] = hit
                mask[tuple(index)] = True
        return mask

    def zeroed(self, node, param, value: np.ndarray) -> np.ndarray:
        """``value`` (compensated first) with the removed channels zeroed where ``param`` writes them:
        what the zero-channel oracle's full-width copy holds."""
        value = self.value(param, value)
        mask = self.writer_mask(node, param)
        return value if mask is None else np.where(mask, np.zeros((), value.dtype), value)

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


def select(analysis: Analysis, scores: np.ndarray, ratio: float, **options) -> PruningPlan:
    """Choose the classes to remove from per-class ``scores`` (lower = less important; NaN = keep).

    Local: each group loses ``floor(ratio * size)`` classes. Global: the ``ratio`` of all prunable
    classes with the lowest scores, wherever they are, then the per-group limits. ``group_ratios``
    (group id -> ratio) prunes those groups locally at their own ratio, in either mode. The values are
    those :class:`~spa_keras.config.PruningConfig` validated: ``global_pruning``, ``max_ratio``,
    ``round_to`` (defaults: the options') and ``group_ratios``.
    """
    from .config import BY_NAME

    options = {k: options.get(k, BY_NAME[k].default) for k in ("global_pruning", "max_ratio", "round_to")} | {
        "group_ratios": options.get("group_ratios")}
    global_pruning, max_ratio, round_to = options["global_pruning"], options["max_ratio"], options["round_to"]
    group_ratios = {int(k): float(v) for k, v in (options["group_ratios"] or {}).items()}
    scores = np.asarray(scores, np.float64)
    if scores.shape != (analysis.n_classes,):
        raise InvalidArgumentError(
            f"the criterion returned {scores.shape} scores, expected one per channel class ({analysis.n_classes})"
        )
    removed = np.zeros(analysis.n_classes, bool)
    index = GroupIndex(analysis)
    scorable = np.isfinite(scores)
    ties = [ts for ts in analysis.tie_sets if not any(g in group_ratios for g in ts)]
    in_tie = {g for ts in ties for g in ts}
    if global_pruning:
        wanted = _global_counts(analysis, scores, scorable, ratio, ties, in_tie, group_ratios)
    counts = {}
    for g in analysis.groups:
        n = g.size
        if g.id in group_ratios:
            want = int(math.floor(group_ratios[g.id] * n + 1e-9))
        elif global_pruning:
            want = int(wanted[g.id])
        else:
            want = int(math.floor(ratio * n + 1e-9))
        counts[g.id] = _n_remove(n, want, max_ratio, int(round_to))
    for ts in analysis.tie_sets:  # groups tied by count lose the same number (the fewest any asks for)
        k = min(counts[g] for g in ts)
        counts.update({g: k for g in ts})
    for driver, follower, factor, multiple in analysis.links:  # one follower class per `factor` the driver keeps
        n_d, n_f = analysis.groups[driver].size, analysis.groups[follower].size
        kept = max(multiple, min(n_f, (n_d - counts[driver]) // factor // multiple * multiple))
        counts[follower] = n_f - kept
        counts[driver] = max(counts[driver], n_d - kept * factor)
    for g in analysis.groups:
        candidates = g.classes[scorable[g.classes]]
        order = candidates[np.argsort(scores[candidates], kind="stable")]
        removed[index.limit(g.id, order, counts[g.id])] = True
    settings = dict(ratio=ratio, global_pruning=global_pruning, max_ratio=max_ratio, round_to=int(round_to))
    return PruningPlan(analysis, removed, settings)


def _global_counts(analysis, scores, scorable, ratio, ties, in_tie, group_ratios) -> np.ndarray:
    """How many classes each group loses under one global ranking of the ``ratio`` of all prunable
    classes. A set of groups tied by count enters the ranking as units (its k-th least important class
    of every group together, scored by their mean) weighing as many classes as it has groups."""
    items, weight, owner = [], [], []
    for g in analysis.groups:
        if g.id in group_ratios or g.id in in_tie:
            continue
        cls = g.classes[scorable[g.classes]]
        items.append(scores[cls])
        weight.append(np.ones(len(cls)))
        owner.append(np.full(len(cls), g.id))
    for t, ts in enumerate(ties):
        per = [np.sort(scores[analysis.groups[g].classes][scorable[analysis.groups[g].classes]]) for g in ts]
        n = min(len(p) for p in per)
        items.append(np.mean([p[:n] for p in per], axis=0))
        weight.append(np.full(n, float(len(ts))))
        owner.append(np.full(n, -1 - t))
    wanted = np.zeros(len(analysis.groups), np.int64)
    if not items:
        return wanted
    items, weight, owner = np.concatenate(items), np.concatenate(weight), np.concatenate(owner)
    order = np.argsort(items, kind="stable")
    total = math.floor(ratio * weight.sum() + 1e-9)
    take = order[np.cumsum(weight[order]) <= total]
    single = owner[take][owner[take] >= 0]
    wanted += np.bincount(single, minlength=len(analysis.groups))
    for t, ts in enumerate(ties):
        k = int(np.sum(owner[take] == -1 - t))
        for g in ts:
            wanted[g] = k
    return wanted


# ---- targets -------------------------------------------------------------------------------------


def resolve_target(name, value, base) -> float:
    """A target given as a fraction of ``base`` (``0.5``) or an absolute count (validated as a positive
    number by :class:`~spa_keras.config.PruningConfig`), as an absolute count."""
    target = value * base if value <= 1 else value
    if target > base:
        raise InvalidArgumentError(f"{name}={value!r} is more than the model has ({base:,})")
    return target


def search(analysis, scores, measure, target, **options) -> PruningPlan:
    """The plan that lands closest to ``target``: bisection on the ratio (the measure falls as the ratio
    grows), then, where one ratio step moves many groups at once (a DenseNet's 32-channel groups), the
    classes between the two bracketing plans are added one by one, least important first."""
    lo, hi = 0.0, 0.999
    above = below = best = None
    for _ in range(40):
        mid = (lo + hi) / 2
        p = select(analysis, scores, ratio=mid, **options)
        value = measure(p)
        if best is None or abs(value - target) < abs(best[1] - target):
            best = (p, value)
        if abs(value - target) <= 1e-4 * target:
            break
        if value > target:
            lo, above = mid, p
        else:
            hi, below = mid, p
    one_by_one = options.get("round_to", 1) == 1 and not analysis.tie_sets  # adding single classes breaks ties
    if abs(best[1] - target) > 1e-3 * target and above is not None and below is not None and one_by_one:
        extra = np.nonzero(below.removed_classes & ~above.removed_classes)[0]
        extra = extra[np.argsort(normalize(scores, analysis, "mean")[extra], kind="stable")]
        k_lo, k_hi = 0, len(extra)
        while k_lo < k_hi:
            k = (k_lo + k_hi) // 2
            removed = above.removed_classes.copy()
            removed[extra[:k]] = True
            p = PruningPlan(analysis, removed, above.settings)
            value = measure(p)
            if abs(value - target) < abs(best[1] - target):
                best = (p, value)
            k_lo, k_hi = (k + 1, k_hi) if value > target else (k_lo, k)
    if abs(best[1] - target) > 0.01 * target and above is not None and one_by_one:
        best = fill(analysis, scores, measure, target, above, best, options.get("max_ratio", 1.0))
    p, value = best
    if abs(value - target) > 0.01 * target:
        warnings.warn(
            f"the target ({target:,.0f}) could not be reached within 1%: the closest plan has {value:,.0f} "
            "(the groups are too coarse, or max_ratio/ignored_layers hold too much)"
        )
    return p


def fill(analysis, scores, measure, target, above, best, max_ratio, tries: int = 400):
    """Last resort when single units are coarse (an attention head): starting from the plan just above
    the target, add the least important classes one at a time while the result stays above
    ``target - 1%``, keeping every producer non-empty and every group within ``max_ratio``."""
    removed = above.removed_classes.copy()
    norm = normalize(scores, analysis, "mean")
    candidates = np.nonzero(~removed & np.isfinite(norm))[0]
    candidates = candidates[candidates != analysis.fixed_class]
    candidates = candidates[np.argsort(norm[candidates], kind="stable")][:tries]
    sizes = np.array([g.size for g in analysis.groups])
    for c in candidates:
        trial = removed.copy()
        trial[c] = True
        lost = np.bincount(analysis.space_of[trial[analysis.class_of]], minlength=len(analysis.space_sizes))
        g = analysis.group_of_class[c]
        if np.any(lost[1:] >= analysis.space_sizes[1:]) or trial[analysis.groups[g].classes].sum() > max_ratio * sizes[g]:
            continue
        p = PruningPlan(analysis, trial, above.settings)
        value = measure(p)
        if value < target * 0.99:
            continue
        removed = trial
        if abs(value - target) < abs(best[1] - target):
            best = (p, value)
        if abs(value - target) <= 0.01 * target:
            break
    return best
