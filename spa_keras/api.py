"""The public face: ``prune``, ``plan``, ``apply``, ``inspect``."""

from __future__ import annotations

import difflib

from . import criteria as _criteria
from .backends.keras import apply_plan
from .errors import InvalidArgumentError
from .frontends.keras import KerasGraph, from_keras
from .graph import analyse
from .metrics import count_macs, count_params
from .plan import PruningPlan, select
from .report import Report


def _resolve_ignored(kg: KerasGraph, ignored_layers) -> set:
    if not ignored_layers:
        return set()
    names = {}
    for node in kg.graph.nodes:
        names.setdefault(node.layer, []).append(node.name)
        layer = node.ref[0] if node.ref else None
        if layer is not None:
            names.setdefault(id(layer), []).append(node.name)
    out = set()
    for item in ignored_layers:
        key = item if isinstance(item, str) else id(item)
        if key not in names:
            label = item if isinstance(item, str) else getattr(item, "name", repr(item))
            close = difflib.get_close_matches(str(label), [n for n in names if isinstance(n, str)], n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise InvalidArgumentError(
                f"ignored_layers names {label!r}, which is not a layer of model {kg.model.name!r}.{hint}"
            )
        out.update(names[key])
    return out


def plan(
    model,
    ratio: float = 0.5,
    criterion="l2",
    global_pruning: bool = False,
    ignored_layers=None,
    round_to: int = 1,
    max_ratio: float = 1.0,
    group_reduction: str = "mean",
    normalization="mean",
) -> PruningPlan:
    """Decide which channels to remove, without changing anything.

    Args:
        model: a Functional or Sequential ``keras.Model`` (nested models and shared layers included).
        ratio: fraction of each group's channels to remove (``0 <= ratio < 1``); with
            ``global_pruning`` the fraction of all prunable channels, ranked across groups.
        criterion: ``"l2"``, ``"l1"``, ``"random"`` or ``fn(analysis, weight, reduction=, normalization=)``.
        ignored_layers: layer names or layers whose output channels are all kept.
        round_to: kept widths are rounded up to a multiple of this.
        max_ratio: no group loses more than this fraction.
        group_reduction: how the scores of a channel's slices combine: ``mean``, ``sum``, ``max``.
        normalization: per-group normalisation of scores before global ranking.

    >>> import keras, spa_keras as spa
    >>> m = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    >>> p = spa.plan(m, ratio=0.5)
    >>> len(p.removed()) > 0
    True
    """
    kg = model if isinstance(model, KerasGraph) else from_keras(model)
    analysis = analyse(kg.graph, fixed_nodes=_resolve_ignored(kg, ignored_layers))
    score_fn = _criteria.get(criterion)
    scores = score_fn(analysis, kg.weight, reduction=group_reduction, normalization=normalization)
    result = select(analysis, scores, ratio, global_pruning, max_ratio, round_to)
    result.source = kg
    result.settings["criterion"] = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom")
    return result


def apply(plan_: PruningPlan):
    """Write a plan out: a new, smaller ``keras.Model``; the original is not changed."""
    kg = getattr(plan_, "source", None)
    if kg is None:
        raise InvalidArgumentError("this plan was not made by spa.plan from a Keras model; nothing to apply it to")
    return apply_plan(kg, plan_)


def prune(model, ratio: float = 0.5, criterion="l2", verbose: bool = False, **kwargs):
    """Remove channels for real: a new, smaller ``keras.Model`` with the same inputs and outputs.

    Takes every argument of :func:`plan`. With ``verbose=True`` prints the before/after table.

    >>> import keras, spa_keras as spa
    >>> m = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    >>> slim = spa.prune(m, ratio=0.5)
    >>> slim.count_params() < m.count_params()
    True
    """
    p = plan(model, ratio=ratio, criterion=criterion, **kwargs)
    slim = apply(p)
    if verbose:
        print(Report.from_plan(p).table())
    return slim


class Inspection:
    """What spa_keras sees in a model: groups, widths, MACs, parameters, what is held fixed."""

    def __init__(self, kg: KerasGraph):
        self.graph = kg.graph
        self.analysis = analyse(kg.graph)
        self.macs = count_macs(kg.graph)
        self.params = count_params(kg.graph)
        self.held_fixed = [
            dict(layer=n.layer, reason=n.attrs.get("reason", "")) for n in kg.graph.nodes if n.kind == "fixed"
        ]
        self.groups = self.analysis.groups

    def __str__(self):
        lines = [
            f"model {self.graph.name}: {len(self.graph.nodes)} ops, {self.macs:,} MACs, {self.params:,} parameters",
            f"{len(self.groups)} prunable groups ({sum(g.size for g in self.groups):,} channels):",
        ]
        for g in self.groups:
            lines.append(f"  {g.root:<40} {g.size:>6} channels across {len(g.nodes)} ops")
        if self.held_fixed:
            lines.append("held fixed:")
            for h in self.held_fixed:
                lines.append(f"  {h['layer']}: {h['reason']}")
        return "\n".join(lines)

    __repr__ = __str__


def inspect(model) -> Inspection:
    """Groups, widths, MACs, parameters and what is held fixed (and why), without pruning.

    >>> import keras, spa_keras as spa
    >>> print(spa.inspect(keras.applications.MobileNet(weights=None, input_shape=(64, 64, 3))))  # doctest: +ELLIPSIS
    model mobilenet_1.00_64: ...
    """
    return Inspection(model if isinstance(model, KerasGraph) else from_keras(model))
