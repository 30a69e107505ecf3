"""Shared machinery of group criteria: gather per-slice values into classes, reduce, normalise."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import InvalidArgumentError
from ..graph import WEIGHT, Analysis

REDUCTIONS = ("mean", "sum", "max")
NORMALIZATIONS = (None, "mean", "max", "sum", "standardization", "lamp")


def param_uses(analysis: Analysis):
    """``(node, param)`` for every distinct parameter with channel axes (shared ones once)."""
    seen = set()
    for node in analysis.graph.nodes:
        for p in node.params:
            if p.key not in seen and p.axes:
                seen.add(p.key)
                yield node, p


def slice_scores(analysis: Analysis, arrays: Callable, fn: Callable, select=lambda p: p.role == WEIGHT):
    """Apply ``fn(arrays(p), p) -> {axis: vector}`` to every selected parameter (one value per entry of
    each channel axis it returns) and gather, per class, the sum, count and max of the values (the
    group's members)."""
    n = analysis.n_classes
    total, count, peak = np.zeros(n), np.zeros(n), np.full(n, -np.inf)
    for node, p in param_uses(analysis):
        if not select(p):
            continue
        values = fn(arrays(p), p)
        for axis, v in values.items():
            cls = analysis.class_of[analysis.axis_elements(node, p, axis)]
            np.add.at(total, cls, v)
            np.add.at(count, cls, 1)
            np.maximum.at(peak, cls, v)
    return total, count, peak


def per_axis_sum(a: np.ndarray, axes) -> dict:
    """``{axis: a summed over every other axis}``."""
    return {ax: a.sum(axis=tuple(i for i in range(a.ndim) if i != ax), dtype=np.float64) for ax in axes}


def per_axis_sum_squares(a: np.ndarray, axes) -> dict:
    """``per_axis_sum(a * a, axes)`` without the squared copy of ``a``, where each channel pair sums few
    values (``a`` float32 or float64).

    A convolution kernel is reduced over its window by one ``einsum``; the ``(in, out)`` table left
    is summed per axis by two matrix-vector products. ResNet50's kernels take about half the time of
    the squared copy's float64 sums. The sums are in ``a``'s precision (a float32 kernel's scores
    differ from float64 sums by about 1e-6, relative); an axis summed over many values per channel pair
    (an embedding's vocabulary) takes the float64 path."""
    axes = sorted(axes)
    if not axes or a.size > 64 * int(np.prod([a.shape[ax] for ax in axes])):
        return per_axis_sum(np.square(a), axes)
    letters = "abcdefghijklmnopqrstuvwxyz"[: a.ndim]
    table = np.einsum(f"{letters},{letters}->{''.join(letters[ax] for ax in axes)}", a, a)
    if table.ndim == 2:
        sums = (table @ np.ones(table.shape[1], table.dtype), np.ones(table.shape[0], table.dtype) @ table)
    else:
        sums = per_axis_sum(table, range(table.ndim)).values()
    return {ax: np.asarray(v, np.float64) for ax, v in zip(axes, sums)}


def reduce_scores(total, count, peak, reduction: str) -> np.ndarray:
    """One score per class from its slices' values; NaN where no slice was scored."""
    if reduction not in REDUCTIONS:
        raise InvalidArgumentError(f"group reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "sum":
        out = total.copy()
    elif reduction == "max":
        out = peak.copy()
    else:
        out = np.divide(total, np.maximum(count, 1))
    out[count == 0] = np.nan
    return out


def normalize(scores: np.ndarray, analysis: Analysis, normalization) -> np.ndarray:
    """Normalise scores within each group, so that groups of different scale compare globally.

    ``lamp``: LAMP (layer-adaptive magnitude) — each score divided by the sum of the scores not smaller
    than it in its group, so the least important channel of every group is compared fairly.
    """
    if normalization not in NORMALIZATIONS:
        raise InvalidArgumentError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if normalization is None:
        return scores
    out = scores.copy()
    for g in analysis.groups:
        s = scores[g.classes]
        ok = np.isfinite(s)
        if not ok.any():
            continue
        v = s[ok]
        if normalization == "standardization":
            r = (v - v.mean()) / (v.std() + 1e-12)
        elif normalization == "lamp":
            order = np.argsort(v, kind="stable")
            tail = np.cumsum(v[order][::-1])[::-1]
            r = np.empty_like(v)
            r[order] = v[order] / (tail + 1e-12)
        else:
            d = {"mean": v.mean, "max": v.max, "sum": v.sum}[normalization]()
            r = v / (d + 1e-12)
        s = s.copy()
        s[ok] = r
        out[g.classes] = s
    return out


def finish(analysis, total_count_peak, reduction, normalization):
    return normalize(reduce_scores(*total_count_peak, reduction), analysis, normalization)
