"""Data as users have it (NumPy arrays, ``(x, y)`` tuples, ``tf.data.Dataset``, generators) as batches."""

from __future__ import annotations

import numpy as np

from .errors import InvalidArgumentError


def _split(item):
    if isinstance(item, dict):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) in (1, 2, 3):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def _rebatch(x, y, batch_size):
    n = len(keras_tree_first(x))
    for i in range(0, n, batch_size):
        xs = _map(x, lambda a: a[i : i + batch_size])
        yield xs, (None if y is None else y[i : i + batch_size])


def _map(x, fn):
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(fn(v) for v in x)
    return fn(x)


def keras_tree_first(x):
    if isinstance(x, dict):
        return next(iter(x.values()))
    if isinstance(x, (list, tuple)):
        return x[0]
    return x


def iterate_batches(data, batch_size: int = 32, max_samples: int | None = None):
    """Yield ``(x, y)`` NumPy batches (``y`` is None for unlabeled data) from ``data``:

    - a NumPy array (inputs), or a tuple ``(inputs, targets)`` of arrays: cut into ``batch_size``;
    - a ``tf.data.Dataset`` or any iterable of batches ``x`` or ``(x, y)``: taken as they come.

    Stops after ``max_samples`` samples.
    """
    if data is None:
        raise InvalidArgumentError("no data given")
    if isinstance(data, np.ndarray) or (
        isinstance(data, tuple) and len(data) == 2 and all(isinstance(a, np.ndarray) for a in data)
    ):
        x, y = (data, None) if isinstance(data, np.ndarray) else data
        batches = _rebatch(x, y, batch_size)
    else:
        try:
            it = iter(data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data)
        except TypeError:
            raise InvalidArgumentError(
                f"data of type {type(data).__name__} is not supported: pass a NumPy array, an (x, y) tuple, "
                "a tf.data.Dataset or an iterable of batches"
            ) from None
        batches = (_split(item) for item in it)
    seen = 0
    for x, y in batches:
        x = _map(x, np.asarray)
        n = len(keras_tree_first(x))
        if max_samples is not None and seen + n > max_samples:
            k = max_samples - seen
            x, y = _map(x, lambda a: a[:k]), (None if y is None else np.asarray(y)[:k])
            n = k
        if n <= 0:
            break
        yield x, (None if y is None else np.asarray(y))
        seen += n
        if max_samples is not None and seen >= max_samples:
            break
