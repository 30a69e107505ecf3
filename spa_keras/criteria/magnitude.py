"""Criteria that read the weights alone: group L1/L2, BN scale, LAMP, FPGM, random."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError
from ..graph import WEIGHT
from .base import finish, per_axis_sum, per_axis_sum_squares, slice_scores


def _weights(weight):
    return lambda p: np.asarray(weight(p.key), dtype=np.float32)


def magnitude(analysis, weight, p: int = 2, reduction: str = "mean", normalization="mean", **_):
    """Group magnitude: for every weight slice a channel owns (a producer's filter, a BN scale, each
    consumer's input slice), ``sum |w|^p`` over the slice; reduced over the group's slices."""

    def fn(w, param):
        if p == 2:
            return per_axis_sum_squares(w, param.axes)
        return per_axis_sum(np.abs(w) if p == 1 else np.abs(w) ** p, param.axes)

    return finish(analysis, slice_scores(analysis, _weights(weight), fn), reduction, normalization)


def l1(analysis, weight, **kw):
    """Group L1 magnitude (``sum |w|`` per slice)."""
    return magnitude(analysis, weight, p=1, **kw)


def l2(analysis, weight, **kw):
    """Group L2 magnitude (``sum w^2`` per slice), Torch-Pruning's default."""
    return magnitude(analysis, weight, p=2, **kw)


def lamp(analysis, weight, reduction: str = "mean", normalization="lamp", **_):
    """LAMP: group L2 magnitude normalised within each group by the sum of the scores above it."""
    return magnitude(analysis, weight, p=2, reduction=reduction, normalization=normalization or "lamp")


def bn_scale(analysis, weight, reduction: str = "mean", normalization="mean", **_):
    """Network slimming: ``|gamma|`` of the BatchNorm (or LayerScale) layers on the channel. Channels
    with no such scale cannot be scored and are kept."""

    def fn(w, param):
        return {ax: np.abs(w).astype(np.float64) for ax in param.axes}

    stats = slice_scores(analysis, _weights(weight), fn, select=lambda p: p.tag == "norm_scale")
    if not stats[1].any():
        raise InvalidArgumentError(
            f"criterion 'bn_scale' ranks channels by their BatchNorm (or LayerScale) scale, and model "
            f"{analysis.graph.name!r} has no such scale on any prunable channel: choose another criterion "
            "(l2, lamp, fpgm)"
        )
    return finish(analysis, stats, reduction, normalization)


def fpgm(analysis, weight, reduction: str = "mean", normalization="mean", **_):
    """FPGM (filter pruning via geometric median): a filter close to the others' geometric median is
    replaceable by them. Score of output channel ``i`` of a producer = ``sum_j ||f_i - f_j||_2``; only
    the axes that write a channel (kernel outputs) are scored."""

    def fn(w, param):
        out = {}
        for ax, ref in param.axes.items():
            if ref.side != "out" or w.ndim < 2:
                continue
            f = np.moveaxis(w, ax, 0).reshape(w.shape[ax], -1).astype(np.float64)
            sq = (f * f).sum(1)
            d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)
            out[ax] = np.sqrt(d2).sum(1)
        return out

    stats = slice_scores(analysis, _weights(weight), fn, select=lambda p: p.role == WEIGHT)
    return finish(analysis, stats, reduction, normalization)


def random_scores(analysis, weight, seed: int = 0, **_):
    """Random importance (a baseline)."""
    return np.random.default_rng(seed).random(analysis.n_classes)
