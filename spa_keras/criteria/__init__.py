"""Channel importance at group level.

A criterion maps an :class:`~spa_keras.graph.Analysis` and the weights to one score per channel
class (higher = more important; NaN = cannot be scored, so kept). A class is one prunable unit: the
same channel in every conv, BN and consumer it passes through, so a score is a *group* score, reduced
over every parameter slice the class owns (``reduction``) and, for comparisons across groups,
normalised within its group (``normalization``).

Every criterion is called as ``fn(analysis, weight, reduction=..., normalization=..., **context)``
where ``weight(key)`` returns a parameter as a NumPy array and ``context`` holds what the criterion
declared it needs in its ``needs`` attribute: ``gradient(key)`` (mean gradient of the loss over the
data) and ``fisher(key)`` (mean squared gradient), computed by the frontend.
"""

from __future__ import annotations

from typing import Callable


from ..errors import InvalidArgumentError
from .base import NORMALIZATIONS, REDUCTIONS, normalize, reduce_scores, slice_scores
from .gradient import hessian, snip, taylor
from .magnitude import bn_scale, fpgm, l1, l2, lamp, random_scores

CRITERIA: dict = {
    "l1": l1,
    "l2": l2,
    "bn_scale": bn_scale,
    "lamp": lamp,
    "fpgm": fpgm,
    "random": random_scores,
    "taylor": taylor,
    "hessian": hessian,
    "snip": snip,
}


def get(criterion) -> Callable:
    """A criterion by name or a callable (see the module docstring for the signature)."""
    if callable(criterion):
        return criterion
    try:
        return CRITERIA[str(criterion).lower()]
    except KeyError:
        raise InvalidArgumentError(
            f"unknown criterion {criterion!r}: choose one of {sorted(CRITERIA)} or pass a callable"
        ) from None


def needs(criterion) -> set:
    """What a criterion needs beyond the weights (``{"gradient"}``, ``{"fisher"}``)."""
    return set(getattr(get(criterion), "needs", ()))


__all__ = [
    "CRITERIA", "get", "needs", "normalize", "reduce_scores", "slice_scores", "REDUCTIONS", "NORMALIZATIONS",
    "l1", "l2", "bn_scale", "lamp", "fpgm", "random_scores", "taylor", "hessian", "snip",
]
