"""Channel importance at group level.

A criterion maps an :class:`~spa_keras.graph.Analysis` and the weights to one score per channel
class (higher = more important). A class is one prunable unit: the same channel in every conv, BN and
consumer it passes through, so a score is a *group* score, reduced over every parameter slice the
class owns (``reduction``) and, for comparisons across groups, normalised within its group
(``normalization``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import InvalidArgumentError
from ..graph import WEIGHT, Analysis

REDUCTIONS = ("mean", "sum", "max")
NORMALIZATIONS = (None, "mean", "max", "sum", "standardization")


def slice_scores(analysis: Analysis, weight: Callable, fn: Callable, roles=(WEIGHT,)):
    """Apply ``fn(w, axes) -> {axis: vector}`` to every scored parameter (one value per entry of each
    channel axis) and gather, per class, the sum, count and max of the values (the group's members)."""
    n = analysis.n_classes
    total = np.zeros(n)
    count = np.zeros(n)
    peak = np.full(n, -np.inf)
    for node, p in _param_uses(analysis):
        if p.role not in roles or not p.axes:
            continue
        values = fn(np.asarray(weight(p.key), dtype=np.float32), tuple(p.axes))
        for axis, v in values.items():
            cls = analysis.class_of[analysis.axis_elements(node, p, axis)]
            np.add.at(total, cls, v)
            np.add.at(count, cls, 1)
            np.maximum.at(peak, cls, v)
    return total, count, peak


def _param_uses(analysis):
    seen = set()
    for node in analysis.graph.nodes:
        for p in node.params:
            if p.key not in seen:
                seen.add(p.key)
                yield node, p


def reduce_scores(total, count, peak, reduction: str) -> np.ndarray:
    if reduction == "sum":
        return total
    if reduction == "max":
        return np.where(np.isfinite(peak), peak, 0.0)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def normalize(scores: np.ndarray, analysis: Analysis, normalization) -> np.ndarray:
    """Normalise scores within each group, so that groups of different scale compare globally."""
    if normalization is None:
        return scores
    out = scores.copy()
    for g in analysis.groups:
        s = scores[g.classes]
        if normalization == "mean":
            d = s.mean()
        elif normalization == "max":
            d = s.max()
        elif normalization == "sum":
            d = s.sum()
        elif normalization == "standardization":
            out[g.classes] = (s - s.mean()) / (s.std() + 1e-12)
            continue
        else:
            raise InvalidArgumentError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        out[g.classes] = s / (d + 1e-12)
    return out


def magnitude(analysis: Analysis, weight: Callable, p: int = 2, reduction: str = "mean", normalization="mean"):
    """Group magnitude importance: for every weight slice a channel owns (output filters, BN scale,
    consumer input slices), ``sum |w|^p`` over the slice; reduced over the group's slices.

    >>> # scores = magnitude(analysis, kg.weight, p=1)   # group L1
    """
    if reduction not in REDUCTIONS:
        raise InvalidArgumentError(f"group reduction must be one of {REDUCTIONS}, got {reduction!r}")

    def fn(w, axes):
        a = np.abs(w) if p == 1 else np.abs(w) ** p
        return {ax: a.sum(axis=tuple(i for i in range(w.ndim) if i != ax), dtype=np.float64) for ax in axes}

    scores = reduce_scores(*slice_scores(analysis, weight, fn), reduction)
    return normalize(scores, analysis, normalization)


def random_scores(analysis: Analysis, weight: Callable, seed: int = 0, **_):
    """Random importance (a baseline)."""
    return np.random.default_rng(seed).random(analysis.n_classes)


CRITERIA = {
    "l1": lambda a, w, **kw: magnitude(a, w, p=1, **kw),
    "l2": lambda a, w, **kw: magnitude(a, w, p=2, **kw),
    "random": random_scores,
}


def get(criterion) -> Callable:
    """A criterion by name (``"l1"``, ``"l2"``, ``"random"``) or a callable
    ``fn(analysis, weight, reduction=..., normalization=...) -> scores``."""
    if callable(criterion):
        return criterion
    try:
        return CRITERIA[str(criterion).lower()]
    except KeyError:
        raise InvalidArgumentError(
            f"unknown criterion {criterion!r}: choose one of {sorted(CRITERIA)} or pass a callable"
        ) from None
