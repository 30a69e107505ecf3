"""The linear algebra of OBSPA (:mod:`.obspa`): a consumer's weights as the matrix its features multiply,
the damped inverse Hessian, the joint Optimal Brain Surgeon update, and the greedy search of a group's
channel classes on each consumer's own rows. NumPy and SciPy only: nothing here knows a model."""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import blas, lapack

# ---- the matrices -----------------------------------------------------------------------------------


def matrix(consumer, kernel: np.ndarray, bias) -> np.ndarray:
    """The consumer's weights (``kernel`` in the canonical layout ``(*kernel_size, c_in, c_out)``) as the
    ``(dim, columns)`` matrix its features multiply."""
    cout = kernel.shape[-1]
    if consumer.mode == "channels":
        cin = consumer.cin
        w = kernel.reshape(-1, cin, cout).transpose(1, 0, 2).reshape(cin, -1)
        ncol = w.shape[1]
    else:
        w = kernel.reshape(-1, cout)
        ncol = cout
    if consumer.augmented:
        b = np.zeros((1, ncol)) if (bias is None or consumer.mode == "channels") else bias.reshape(1, -1)
        w = np.concatenate([w, b], axis=0)
    return w.astype(np.float64)


def unmatrix(consumer, w: np.ndarray, kernel: np.ndarray, bias):
    """Canonical kernel and bias change back from a (compensated) matrix: ``(kernel, bias_delta)``."""
    cout = kernel.shape[-1]
    delta = None
    if consumer.augmented:
        w, last = w[:-1], w[-1]
        if consumer.mode == "channels":
            delta = last.reshape(-1, cout).sum(axis=0)
        else:
            delta = last - (0 if bias is None else bias.reshape(-1))
    if consumer.mode == "channels":
        cin = consumer.cin
        k = w.reshape(cin, -1, cout).transpose(1, 0, 2).reshape(kernel.shape)
    else:
        k = w.reshape(kernel.shape)
    return k.astype(kernel.dtype), delta


def inverse(h: np.ndarray, damp: float) -> np.ndarray:
    """``(H + λ I)⁻¹`` with ``λ = damp * mean(diag H)`` in float64, from its Cholesky factor (LAPACK's
    ``potrf`` and ``potri``: ``n³`` flops, 4x faster than solving against the identity at ``n = 2049``,
    measured); the damping grows tenfold until the factorisation succeeds (dead channels make ``H``
    singular)."""
    h = np.asarray(h, np.float64)
    scale = max(float(np.mean(np.diag(h))), 1e-12)
    for _ in range(12):
        damped = h + damp * scale * np.eye(len(h))
        chol, info = lapack.dpotrf(damped, lower=True, clean=False, overwrite_a=True)
        if info == 0 and np.isfinite(chol).all():
            inv, info = lapack.dpotri(chol, lower=True, overwrite_c=True)
            if info == 0:
                lower = np.tril(inv)
                return lower + np.tril(lower, -1).T
        damp = max(damp * 10, 1e-12)
    raise FloatingPointError("the Hessian could not be inverted (non-finite activations?)")


def compensate(w: np.ndarray, hinv: np.ndarray, rows) -> np.ndarray:
    """``W`` with ``rows`` removed and the rest re-fitted, the joint OBS update:
    ``W − (H⁻¹)_{:P} ((H⁻¹)_PP)⁻¹ W_P`` with the rows ``P`` then zero."""
    rows = np.asarray(rows, np.int64)
    if len(rows) == 0:
        return w
    w = w - hinv[:, rows] @ _spd_solve(hinv[np.ix_(rows, rows)], w[rows])
    w[rows] = 0
    return w


# ---- scoring ----------------------------------------------------------------------------------------


def _rows_by_class(row_cls: np.ndarray, classes: np.ndarray):
    """``(classes present, rows (n, m))`` when every class has the same number of rows, else None."""
    present = [c for c in classes if np.any(row_cls == c)]
    if not present:
        return None
    rows = [np.nonzero(row_cls == c)[0] for c in present]
    if len({len(r) for r in rows}) != 1:
        return None
    return np.asarray(present, np.int64), np.stack(rows)


def _spd_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a⁻¹ b`` for a symmetric positive definite ``a`` (a block of an inverse Hessian), by Cholesky
    (LAPACK's ``posv``, one call: the greedy search makes thousands of small ones); a block made singular
    by rounding falls back to a least-squares solve."""
    _, x, info = lapack.dposv(a, b, lower=True)
    return x if info == 0 else np.linalg.lstsq(a, b, rcond=None)[0]


_BLAS = []  # threadpoolctl's controller, found once (it scans the loaded libraries)


def _one_blas_thread():
    """BLAS limited to one thread (threadpoolctl, a dependency; a no-op if it is missing) while the greedy
    search runs: its blocks are mostly small, and OpenBLAS threads that spin between calls cost more than
    they give, badly so on a busy machine: ResNet50's search took 3x longer with every thread (and 2.5x
    on a quiet one, 15.3 against 6.2 s, when threadpoolctl was not installed), and giving two threads to
    only the updates of blocks over 512 rows made DenseNet121's slower, the small ones too (measured)."""
    import contextlib

    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS.append(ThreadpoolController())
        except ImportError:
            _BLAS.append(None)
    if _BLAS[0] is None:
        return contextlib.nullcontext()
    return _BLAS[0].limit(limits=1, user_api="blas")


class _Part:
    """One consumer's share of a group during the greedy search, reduced to the group's own rows.

    Only the rows ``P`` that read the group's classes can be removed while the group is searched, and the
    rest of the consumer's rows stay. The OBS quantities of removals inside ``P`` need no more than ``W_P``
    and the ``P×P`` block of the *full* inverse Hessian (by the Schur complement, ``(H⁻¹)_PP`` already
    accounts for every row that stays), and removing a set ``S ⊂ P`` updates them in place:

        W_P ← W_P − (H⁻¹)_{PS} ((H⁻¹)_SS)⁻¹ W_S,     (H⁻¹)_PP ← (H⁻¹)_PP − (H⁻¹)_{PS} ((H⁻¹)_SS)⁻¹ (H⁻¹)_{SP}

    which is the dense update restricted to ``P`` (exactly what the full-matrix search computed for those
    rows), at ``O(|P|² |S|)`` instead of ``O(d² |S|)`` per block of classes, in NumPy float64. The update
    leaves the rows and columns of ``S`` at zero, so they stay in place (set to exactly zero) until a
    quarter of the rows are gone, and only then are the arrays compacted: a copy of ``(H⁻¹)_PP`` costs
    about as much as its update, and most blocks would otherwise pay both."""

    def __init__(self, present, rows, w, hinv, pos):
        self.idx = np.array([pos[int(c)] for c in present])  # position of each class in the group
        used = np.unique(rows)
        self.w = np.asarray(w, np.float64)[used]
        self.hinv = np.ascontiguousarray(np.asarray(hinv, np.float64)[np.ix_(used, used)])
        self.rows = np.searchsorted(used, rows)  # (classes, m): rows of each class in the block
        self.where = np.arange(len(used))  # block row -> current row (-1: removed)

    def losses(self, alive):
        """The OBS loss of removing each live class alone: ``tr(W_Pᵀ ((H⁻¹)_PP)⁻¹ W_P)``."""
        live = alive[self.idx]
        if not live.any():
            return self.idx[:0], np.zeros(0)
        cur = self.where[self.rows[live]]  # (n, m)
        wp = self.w[cur]  # (n, m, out)
        if cur.shape[1] == 1:
            return self.idx[live], np.sum(wp[:, 0] ** 2, axis=1) / self.hinv[cur[:, 0], cur[:, 0]]
        hpp = self.hinv[cur[:, :, None], cur[:, None, :]]  # (n, m, m)
        return self.idx[live], np.sum(wp * np.linalg.solve(hpp, wp), axis=(1, 2))

    def remove(self, taken) -> float:
        """Remove the rows of the classes marked in ``taken`` (a mask over the group) jointly from ``W_P``
        and ``(H⁻¹)_PP``; the loss it costs."""
        hit = taken[self.idx]
        if not hit.any():
            return 0.0
        gone = self.where[self.rows[hit].ravel()]
        wp, rows = self.w[gone], self.hinv[gone]  # (H⁻¹)_{S:} = (H⁻¹)_{:S}ᵀ: a row gather is contiguous
        out = wp.shape[1]
        sol = _spd_solve(rows[:, gone], np.concatenate([wp, rows], axis=1))
        loss = float(np.sum(wp * sol[:, :out]))
        self.w -= rows.T @ sol[:, :out]
        # H⁻¹ −= (H⁻¹)_{:S} sol in place, with no |P|² temporary: BLAS writes into the transpose (Fortran
        # order) of the C-ordered matrix, which is the same symmetric matrix (and returns a copy otherwise)
        self.hinv = blas.dgemm(-1.0, np.ascontiguousarray(sol[:, out:]), rows, beta=1.0, c=self.hinv.T,
                               trans_a=True, overwrite_c=True).T
        self.w[gone] = 0.0
        self.hinv[gone] = 0.0
        self.hinv[:, gone] = 0.0
        self.where[self.rows[hit].ravel()] = -1
        live = self.where[self.where >= 0]  # the current rows not yet removed
        if len(live) <= 3 * len(self.w) // 4:  # compact: drop the removed rows and columns
            stay = np.zeros(len(self.w), bool)
            stay[live] = True
            self.w, self.hinv = self.w[stay], np.ascontiguousarray(self.hinv[np.ix_(stay, stay)])
            new = np.cumsum(stay) - 1
            self.where = np.where(self.where >= 0, new[np.maximum(self.where, 0)], -1)
        return loss


_ENERGY: dict = {}  # id(H) -> (weak reference to H, fingerprint of W, energy): a consumer is in many groups


def _energy(w: np.ndarray, h: np.ndarray) -> float:
    """``tr(Wᵀ H W)``: the consumer's output energy on the samples (remembered while ``h`` lives)."""
    import weakref

    key, mark = id(h), (w.shape, float(w.sum()), float(w[0].sum()))
    hit = _ENERGY.get(key)
    if hit is not None and hit[0]() is h and hit[1] == mark:
        return hit[2]
    value = float(np.einsum("ij,ij->", w, h @ w))
    for k in [k for k, v in _ENERGY.items() if v[0]() is None]:
        del _ENERGY[k]
    try:
        _ENERGY[key] = (weakref.ref(h), mark, value)
    except TypeError:  # not weakly referenceable: not remembered
        pass
    return value


def _covering(classes: np.ndarray, consumers):
    """``[(consumer, classes present, rows (n, m))]`` for the consumers that read ``classes`` with the same
    number of rows per class, or None when some class is read by none of them."""
    found, covered = [], np.zeros(len(classes), bool)
    pos = {int(c): i for i, c in enumerate(classes)}
    for c in consumers:
        hit = _rows_by_class(c.row_cls, classes)
        if hit is not None:
            found.append((c,) + hit)
            covered[[pos[int(k)] for k in hit[0]]] = True
    return found if found and covered.all() else None


def group_scores(group, consumers, states, progress, blocks: int):
    """Greedy structured OBS over one group: a score per class of the group (cumulative relative
    loss at its removal) or None when some class has no OBS consumer. ``states``: ``{consumer key:
    (W, H⁻¹, H)}``. Each consumer takes part through its rows that read the group (:class:`_Part`);
    blocks of about ``n / blocks`` classes go at each step, those of least summed loss given the blocks
    removed before them."""
    classes = group.classes
    found = _covering(classes, consumers)
    if found is None:
        return None
    pos = {int(c): i for i, c in enumerate(classes)}
    parts, energy = [], 0.0
    for c, present, rows in found:
        w, hinv, h = states[c.key]
        w = np.asarray(w, np.float64)
        parts.append(_Part(present, rows, w, hinv, pos))
        energy += _energy(w, h)
    with _one_blas_thread():
        return _greedy(parts, len(classes), blocks, progress) / max(energy, 1e-30)


def direct_scores(group, consumers, states, bias_only: bool):
    """Scores with no re-fit of the rows that stay. ``bias_only=False`` (activation-weighted magnitude,
    Wanda-sp style): a class's loss is what its rows carried, ``tr(W_Pᵀ H_PP W_P)``; ``True`` (FLAP
    style): what they carried beyond their mean, ``tr(W_Pᵀ (H_PP − h_P h_Pᵀ / n) W_P)``, the mean going
    into the bias. Relative to the consumers' output energy, like :func:`group_scores`; None when some
    class has no consumer."""
    classes = group.classes
    found = _covering(classes, consumers)
    if found is None:
        return None
    pos = {int(c): i for i, c in enumerate(classes)}
    loss, energy = np.zeros(len(classes)), 0.0
    for c, present, rows in found:
        w, _, h = states[c.key]
        energy += _energy(w, h)
        for k, r in zip(present, rows):
            hpp = h[np.ix_(r, r)]
            if bias_only and c.augmented:
                hb = h[r, -1]
                hpp = hpp - np.outer(hb, hb) / max(h[-1, -1], 1e-30)
            loss[pos[int(k)]] += float(np.sum(w[r] * (hpp @ w[r])))
    return loss / max(energy, 1e-30)


def _greedy(parts, n: int, blocks: int, progress) -> np.ndarray:
    """The cumulative loss at each class' removal, removing blocks of least summed loss."""
    alive = np.ones(n, bool)
    scores = np.full(n, np.nan)
    block = max(1, int(math.ceil(n / blocks)))
    cumulative = 0.0
    while alive.sum() > 1:
        total = np.zeros(n)
        for part in parts:
            idx, loss = part.losses(alive)
            total[idx] += loss
        cand = np.nonzero(alive)[0]
        take = cand[np.argsort(total[cand], kind="stable")[: min(block, len(cand) - 1)]]
        taken = np.zeros(n, bool)
        taken[take] = True
        before = cumulative
        for part in parts:
            cumulative += part.remove(taken)
        step = max(cumulative - before, 0.0)
        scores[take] = before + step * (np.arange(1, len(take) + 1) / len(take))
        alive[take] = False
        if progress is not None:
            progress.update(len(take))
    scores[alive] = cumulative * 1.01 + 1e-12 + (scores[~alive].max(initial=0.0) if (~alive).any() else 0.0)
    return scores
