"""Which samples to keep, given their scores."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError
from .sources import as_labels

STRATEGIES = ("top", "bottom", "random", "ccs")


def _count(keep, n):
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)) or not 0 < keep <= 1:
        raise InvalidArgumentError(f"keep must be the fraction of samples to keep, in (0, 1], got {keep!r}")
    return max(1, int(round(float(keep) * n)))


def _per_class_counts(sizes, total):
    """Counts proportional to ``sizes`` that add up to ``total`` exactly (largest remainders)."""
    exact = sizes * (total / sizes.sum())
    counts = np.floor(exact).astype(np.int64)
    counts = np.minimum(counts, sizes)
    short = total - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    for i in order:
        if short == 0:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
            short -= 1
    return counts


def _ccs(scores, m, beta, strata, rng):
    """Coverage-centric selection of ``m`` positions of ``scores`` (see :func:`select`)."""
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    drop = min(int(np.floor(beta * n)), n - m)  # never drop so many that m cannot be met
    pool = np.sort(order[drop:])
    s = scores[pool]
    lo, hi = s.min(), s.max()
    bins = np.zeros(len(pool), np.int64) if hi == lo else np.minimum(
        ((s - lo) / (hi - lo) * strata).astype(np.int64), strata - 1)
    members = [rng.permutation(pool[bins == b]) for b in range(strata)]
    members = [g for g in members if len(g)]
    chosen, budget = [], m
    # CCS's budget allocation: the smallest strata first, each an equal share of what is left
    for i, g in enumerate(sorted(members, key=len)):
        take = min(len(g), budget // (len(members) - i))
        chosen.append(g[:take])
        budget -= take
    chosen = np.concatenate(chosen)
    if budget > 0:  # cannot happen with the allocation above; kept as a guard for the exact count
        rest = np.setdiff1d(pool, chosen)
        chosen = np.concatenate([chosen, rng.permutation(rest)[:budget]])
    return chosen


def select(scores, keep: float, y=None, strategy: str = "top", class_balanced: bool = False, *,
           beta: float = 0.1, strata: int = 50, seed: int = 0) -> np.ndarray:
    """Indices of the samples to keep, shuffled.

    Strategies:

    - ``"top"``: the highest scores (the most important: every score here is "higher = keep").
    - ``"bottom"``: the lowest.
    - ``"random"``: uniformly at random (the baseline every strategy must be judged against).
    - ``"ccs"``: coverage-centric coreset selection (Zheng et al., "Coverage-centric Coreset Selection
      for High Pruning Rates", ICLR 2023, arXiv 2210.15809): drop the hardest ``beta`` fraction (the
      highest scores; noisy or ambiguous samples), cut the rest's score range into ``strata`` equal-width
      strata and fill the budget from them evenly — the smallest stratum first, each taking an equal
      share of what is left, at random within a stratum. It keeps easy, medium and hard samples, which
      helps at high pruning rates where "top" keeps only hard ones. ``beta`` shrinks when dropping that
      many would leave fewer than the budget.

    Args:
        scores: ``(n,)`` scores.
        keep: the fraction to keep, in (0, 1]; ``round(keep · n)`` samples are kept (at least one).
        y: ``(n,)`` labels; needed for ``class_balanced``.
        class_balanced: keep the same fraction of every class (counts rounded by largest remainders so
            that they add up to the total exactly).
        beta, strata: CCS's hard-cut fraction and number of strata.
        seed: for ties, ``"random"``, ``"ccs"`` and the shuffle.

    >>> import numpy as np
    >>> from spa_keras import data_pruning as dp
    >>> s = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    >>> sorted(dp.select(s, keep=0.5).tolist())
    [0, 2, 4]
    >>> sorted(dp.select(s, keep=0.5, y=[0, 0, 0, 1, 1, 1], class_balanced=True).tolist())  # 0.9 and 0.8, then 0.7
    [0, 2, 4]
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise InvalidArgumentError(f"scores must be a non-empty (n,) array, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise InvalidArgumentError(f"scores hold {int(np.isnan(scores).sum())} NaN values")
    if strategy not in STRATEGIES:
        raise InvalidArgumentError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not 0 <= beta < 1:
        raise InvalidArgumentError(f"beta must be in [0, 1), got {beta!r}")
    if not isinstance(strata, (int, np.integer)) or strata < 1:
        raise InvalidArgumentError(f"strata must be a positive integer, got {strata!r}")
    n = len(scores)
    total = _count(keep, n)
    rng = np.random.default_rng(seed)
    if class_balanced:
        if y is None:
            raise InvalidArgumentError("class_balanced=True needs the labels y")
        y = as_labels(y, n)
        classes = np.unique(y)
        groups = [np.flatnonzero(y == c) for c in classes]
        counts = _per_class_counts(np.array([len(g) for g in groups]), total)
    else:
        groups, counts = [np.arange(n)], [total]
    kept = []
    for g, m in zip(groups, counts):
        if m == 0:
            continue
        perm = rng.permutation(g)  # ties broken at random
        s = scores[perm]
        if strategy == "top":
            kept.append(perm[np.argsort(-s, kind="stable")[:m]])
        elif strategy == "bottom":
            kept.append(perm[np.argsort(s, kind="stable")[:m]])
        elif strategy == "random":
            kept.append(perm[:m])
        else:
            kept.append(g[_ccs(scores[g], m, beta, strata, rng)])
    return rng.permutation(np.concatenate(kept)).astype(np.int64)

