"""Training data as the data-pruning functions see it: ``n`` samples in a fixed order, integer labels, a
way to train on all of them or a subset, and a way to run a model over all of them or a subset in order,
a chunk at a time (so that a million samples never sit in memory as one model output).

Two kinds: NumPy arrays ``x, y`` (or ``x`` alone where no labels are needed), and a ``tf.data.Dataset``
of ``(x, y)`` batches in a fixed order (no reshuffling between iterations; it is shuffled here for training).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError

#: samples per chunk of the in-order passes (model outputs, embeddings, neighbour searches)
CHUNK = 65536


def as_labels(y, n=None, what="y") -> np.ndarray:
    """``y`` as int64 class ids ``(n,)``: integer labels, ``(n, 1)`` labels, or one-hot ``(n, C)``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2:
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise InvalidArgumentError(f"{what}: expected labels of shape (n,), (n, 1) or one-hot (n, C), got {y.shape}")
    if n is not None and len(y) != n:
        raise InvalidArgumentError(f"{what} has {len(y)} labels but x has {n} samples: give one label per sample")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise InvalidArgumentError(f"{what}: labels must be integer class ids (or one-hot rows), got non-integer "
                                       "values")
    elif y.dtype.kind not in "iub":
        raise InvalidArgumentError(f"{what}: labels must be integer class ids, got an array of {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise InvalidArgumentError(f"{what}: labels must be class ids 0, 1, …; found {int(y.min())}")
    return y


def _is_dataset(x) -> bool:
    return type(x).__module__.startswith("tensorflow") and hasattr(x, "element_spec")


class ArrayData:
    """NumPy inputs ``x`` (an array, or a list/dict of arrays for multi-input models) and labels ``y``."""

    def __init__(self, x, y=None):
        first = x[next(iter(x))] if isinstance(x, dict) else (x[0] if isinstance(x, (list, tuple)) else x)
        if not hasattr(first, "shape") or not hasattr(first, "__len__"):
            raise InvalidArgumentError(f"x must be a NumPy array (or a tf.data.Dataset of (x, y) batches), got "
                                       f"{type(x).__name__}")
        self.x = x
        self.n = len(first)
        if self.n == 0:
            raise InvalidArgumentError("x holds no samples")
        self.y = None if y is None else as_labels(y, self.n)

    def _take(self, idx):
        if isinstance(self.x, dict):
            return {k: v[idx] for k, v in self.x.items()}
        if isinstance(self.x, (list, tuple)):
            return [v[idx] for v in self.x]
        return self.x[idx]

    def fit_kwargs(self, indices, batch_size, seed):
        """Keyword arguments of ``model.fit`` that train on ``indices`` (all samples when None)."""
        if indices is None:
            return dict(x=self.x, y=self.y, batch_size=batch_size, shuffle=True)
        return dict(x=self._take(indices), y=self.y[indices], batch_size=batch_size, shuffle=True)

    def chunks(self, indices=None, chunk=CHUNK):
        """``(start, x_chunk)`` in order over ``indices`` (all samples when None)."""
        total = self.n if indices is None else len(indices)
        for i in range(0, total, chunk):
            sl = slice(i, min(i + chunk, total))
            yield i, self._take(sl if indices is None else indices[sl])


class DatasetData:
    """A ``tf.data.Dataset`` of ``(x, y)`` batches, read in its own (fixed) order."""

    def __init__(self, ds, y=None):
        import tensorflow as tf

        if y is not None:
            raise InvalidArgumentError("x is a tf.data.Dataset: its labels come from its (x, y) batches; pass y=None")
        if ds.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise InvalidArgumentError("the dataset is infinite (.repeat()?): give a dataset of known length, each "
                                       "sample once, in a fixed order")
        spec = ds.element_spec
        if not isinstance(spec, tuple) or len(spec) < 2:
            raise InvalidArgumentError("the dataset must yield (x, y) batches: data pruning needs the labels")
        self.ds = ds.map(lambda *e: (e[0], e[1])).unbatch()
        ys = [np.asarray(b) for b in ds.map(lambda *e: e[1]).as_numpy_iterator()]
        if not ys:
            raise InvalidArgumentError("the dataset holds no samples")
        self.y = as_labels(np.concatenate(ys), what="the dataset's labels")
        self.n = len(self.y)
        self.x = None

    def _subset(self, indices):
        import tensorflow as tf

        if indices is None:
            return self.ds
        mask = np.zeros(self.n, bool)
        mask[indices] = True
        mask = tf.constant(mask)
        return self.ds.enumerate().filter(lambda i, xy: tf.gather(mask, i)).map(lambda i, xy: xy)

    def fit_kwargs(self, indices, batch_size, seed):
        import tensorflow as tf

        count = self.n if indices is None else len(indices)
        ds = self._subset(indices).apply(tf.data.experimental.assert_cardinality(count))  # Keras knows the steps
        ds = ds.shuffle(min(count, 16384), seed=seed, reshuffle_each_iteration=True)
        return dict(x=ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), shuffle=False)

    def chunks(self, indices=None, chunk=CHUNK):
        """``(start, x_chunk)`` in order; the order of ``indices`` must be increasing."""
        if indices is not None and np.any(np.diff(indices) <= 0):
            order = np.argsort(indices)
            raise InvalidArgumentError(f"internal: dataset subsets are read in order (got {indices[order[:3]]}…)")
        start = 0
        for xb in self._subset(indices).map(lambda x, y: x).batch(chunk).as_numpy_iterator():
            yield start, xb
            start += len(xb)


def as_data(x, y=None, need_labels=True):
    """:class:`ArrayData` or :class:`DatasetData`; checks that labels are there and match ``x``."""
    data = DatasetData(x, y) if _is_dataset(x) else ArrayData(x, y)
    if need_labels and data.y is None:
        raise InvalidArgumentError("labels are needed: pass y (one label per sample of x)")
    return data
