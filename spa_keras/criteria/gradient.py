"""Criteria that need data: first-order Taylor, second-order (OBD, Fisher diagonal), SNIP.

They read ``gradient(key)`` (the mean gradient of the loss over the data) or ``fisher(key)`` (the mean
squared gradient, an estimate of the Hessian's diagonal) that the frontend computes; they never run
the model themselves.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError
from ..graph import WEIGHT
from .base import finish, per_axis_sum, slice_scores


def _require(context, name, criterion):
    if context.get(name) is None:
        raise InvalidArgumentError(
            f"criterion {criterion!r} needs data: pass data=... (inputs, or (inputs, targets)) to spa.plan/prune"
        )
    return context[name]


def _pairs(weight, other):
    return lambda p: (np.asarray(weight(p.key), np.float64), np.asarray(other(p.key), np.float64))


def taylor(analysis, weight, reduction: str = "mean", normalization="mean", **context):
    """First-order Taylor: the loss change from removing a slice, ``|sum(w * dL/dw)|`` over the slice."""
    grad = _require(context, "gradient", "taylor")

    def fn(wg, param):
        w, g = wg
        prod = w * g
        return {ax: np.abs(v) for ax, v in per_axis_sum(prod, param.axes).items()}

    stats = slice_scores(analysis, _pairs(weight, grad), fn, select=lambda p: p.role == WEIGHT)
    return finish(analysis, stats, reduction, normalization)


taylor.needs = ("gradient",)


def hessian(analysis, weight, reduction: str = "mean", normalization="mean", **context):
    """Second-order (Optimal Brain Damage): ``0.5 * sum(w^2 * H_diag)`` over the slice, with the Hessian
    diagonal estimated by the empirical Fisher (mean squared gradient over the data)."""
    fisher = _require(context, "fisher", "hessian")

    def fn(wf, param):
        w, f = wf
        return per_axis_sum(0.5 * w * w * f, param.axes)

    stats = slice_scores(analysis, _pairs(weight, fisher), fn, select=lambda p: p.role == WEIGHT)
    return finish(analysis, stats, reduction, normalization)


hessian.needs = ("fisher",)


def snip(analysis, weight, reduction: str = "sum", normalization="sum", **context):
    """SNIP connection sensitivity for pruning at initialisation: ``sum |w * dL/dw|`` over the slice,
    normalised to sum to one per group."""
    grad = _require(context, "gradient", "snip")

    def fn(wg, param):
        w, g = wg
        return per_axis_sum(np.abs(w * g), param.axes)

    stats = slice_scores(analysis, _pairs(weight, grad), fn, select=lambda p: p.role == WEIGHT)
    return finish(analysis, stats, reduction, normalization)


snip.needs = ("gradient",)
