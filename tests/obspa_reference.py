"""The OBSPA greedy search as it was before the blocked solver (``spa_keras.algorithms.obspa`` before
issue 13): dense TensorFlow OBS updates of every consumer's whole matrix at every step, driven by the
same greedy loop. Kept only to check that the new solver gives the same scores."""


import numpy as np
import tensorflow as tf

from spa_keras.algorithms.obs_solver import (  # unchanged by the new solver
    _greedy,
    _rows_by_class,
)


def remove_rows(w, hinv, rows):
    """Remove the rows ``rows`` with the OBS update: ``(W', H⁻¹', loss)``; the removed rows of
    ``W'`` are zero and ``H⁻¹'`` is the inverse Hessian of the rows that stay."""
    rows = tf.constant(np.asarray(rows, np.int64))
    hpp = tf.gather(tf.gather(hinv, rows), rows, axis=1)
    wp = tf.gather(w, rows)
    sol = tf.linalg.solve(hpp, wp)
    loss = tf.reduce_sum(wp * sol)
    col = tf.gather(hinv, rows, axis=1)
    w = w - col @ sol
    hinv = hinv - col @ tf.linalg.solve(hpp, tf.gather(hinv, rows))
    keep = tf.tensor_scatter_nd_update(tf.ones(w.shape[0], tf.float64), rows[:, None],
                                       tf.zeros(rows.shape[0], tf.float64))
    w = w * keep[:, None]
    hinv = hinv * keep[:, None] * keep[None, :]
    return w, hinv, loss


def _pp(hinv, rows):
    """``(H⁻¹)_PP`` for a batch of row sets ``rows`` (n, m) -> (n, m, m)."""
    return tf.gather(tf.gather(hinv, rows), rows, axis=2, batch_dims=1)


def class_losses(w, hinv, rows) -> tf.Tensor:
    """OBS loss of removing each row set of ``rows`` (n, m) alone: ``tr(W_Pᵀ ((H⁻¹)_PP)⁻¹ W_P)``."""
    wp = tf.gather(w, rows)  # (n, m, out)
    sol = tf.linalg.solve(_pp(hinv, rows), wp)
    return tf.reduce_sum(wp * sol, axis=[1, 2])


class _Part:
    """One consumer's share of a group during the greedy search. Removed rows are dropped from ``w``
    and ``hinv`` after every block, so each step costs ``O(rows left²)``."""

    def __init__(self, present, rows, w, hinv, pos):
        self.idx = np.array([pos[int(c)] for c in present])  # position of each class in the group
        self.rows = rows  # (classes, m) original row indices
        self.where = np.arange(int(w.shape[0]))  # original row -> current row (-1: removed)
        self.w, self.hinv = w, hinv

    def losses(self, alive):
        live = alive[self.idx]
        if not live.any():
            return self.idx[:0], np.zeros(0)
        cur = tf.constant(self.where[self.rows[live]])
        return self.idx[live], class_losses(self.w, self.hinv, cur).numpy()

    def remove(self, taken) -> float:
        hit = taken[self.idx]
        if not hit.any():
            return 0.0
        gone = self.where[self.rows[hit].ravel()]
        w, hinv, loss = remove_rows(self.w, self.hinv, gone)
        stay = np.ones(int(w.shape[0]), bool)
        stay[gone] = False
        keep = tf.constant(np.nonzero(stay)[0])
        self.w = tf.gather(w, keep)
        self.hinv = tf.gather(tf.gather(hinv, keep), keep, axis=1)
        new = np.cumsum(stay) - 1
        self.where = np.where(self.where >= 0, new[np.maximum(self.where, 0)], -1)
        self.where[self.rows[hit].ravel()] = -1
        return float(loss)


def group_scores(group, consumers, states, progress, blocks: int):
    """Greedy structured OBS over one group: a score per class of the group (cumulative relative
    loss at its removal) or None when some class has no OBS consumer."""
    classes = group.classes
    n = len(classes)
    pos = {int(c): i for i, c in enumerate(classes)}
    parts = []
    covered = np.zeros(n, bool)
    energy = 0.0
    for c in consumers:
        found = _rows_by_class(c.row_cls, classes)
        if found is None:
            continue
        present, rows = found
        w, hinv, h = states[c.key]
        w = tf.constant(np.asarray(w, np.float64))
        parts.append(_Part(present, rows, w, hinv, pos))
        covered[parts[-1].idx] = True
        energy += float(np.sum(w.numpy() * (h @ w.numpy())))
    if not parts or not covered.all():
        return None
    return _greedy(parts, n, blocks, progress) / max(energy, 1e-30)
