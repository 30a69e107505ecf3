"""Score extrapolation (Schmidt et al., "Effective Data Pruning through Score Extrapolation", arXiv
2506.09010): from the scores of a small scored subset (the *seeds*) to every sample, through their
embeddings — by k nearest neighbours, or by a graph convolutional network over a kNN graph."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError
from .neighbors import EXACT_LIMIT, nearest_neighbors
from .sources import as_labels


def _check_k(k, name="k"):
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _as_embeddings(e, what):
    e = np.asarray(e, dtype=np.float32)
    if e.ndim != 2:
        raise InvalidArgumentError(f"{what} must be an (n, d) array of embeddings, got shape {e.shape}")
    if not np.all(np.isfinite(e)):
        raise InvalidArgumentError(f"{what} holds NaN or Inf: the model's features are not finite")
    return e


def knn_extrapolate(seed_embeddings, seed_scores, embeddings, k: int = 10, *, seed_labels=None, labels=None,
                    temperature: float = 1.0, exact_limit: int = EXACT_LIMIT) -> np.ndarray:
    """Each sample's score as the distance-weighted mean of its ``k`` nearest seeds' scores::

        ŝ(x) = Σ_{i ∈ N_k(x)} w_i s_i / Σ_i w_i,   w_i = exp(−d(x, x_i) / τ)

    with ``d`` the Euclidean distance between embeddings (the paper's ``exp(−d)`` at ``τ = 1``). With
    ``labels`` and ``seed_labels``, neighbours are searched among the seeds of the sample's own class
    (a sample's importance depends on its label: a shirt among T-shirts is hard, a T-shirt there is not).

    Args:
        seed_embeddings: ``(m, d)`` embeddings of the scored samples.
        seed_scores: ``(m,)`` their scores.
        embeddings: ``(n, d)`` embeddings of the samples to score.
        k: neighbours (``k = 1`` returns the nearest seed's score).
        seed_labels, labels: class ids of seeds and samples, to search within each class.
        temperature: ``τ``; larger averages more evenly over the ``k``.

    Raises:
        InvalidArgumentError: fewer than ``k`` seeds (in a class, when searching by class).

    >>> import numpy as np
    >>> from spa_keras import data_pruning as dp
    >>> seeds = np.array([[0.0], [10.0]])
    >>> dp.knn_extrapolate(seeds, np.array([1.0, 5.0]), np.array([[1.0], [9.0]]), k=1)
    array([1., 5.])
    """
    k = _check_k(k)
    se = _as_embeddings(seed_embeddings, "seed_embeddings")
    qe = _as_embeddings(embeddings, "embeddings")
    ss = np.asarray(seed_scores, dtype=np.float64)
    if len(ss) != len(se):
        raise InvalidArgumentError(f"{len(ss)} seed scores for {len(se)} seed embeddings")
    if not temperature > 0:
        raise InvalidArgumentError(f"temperature must be positive, got {temperature!r}")
    if (labels is None) != (seed_labels is None):
        raise InvalidArgumentError("give both labels and seed_labels (to search within classes), or neither")
    out = np.empty(len(qe), np.float64)
    if labels is None:
        groups = [(None, np.arange(len(qe)), np.arange(len(se)))]
    else:
        labels = as_labels(labels, len(qe), "labels")
        seed_labels = as_labels(seed_labels, len(se), "seed_labels")
        groups = [(c, np.flatnonzero(labels == c), np.flatnonzero(seed_labels == c)) for c in np.unique(labels)]
    for c, qi, si in groups:
        if len(si) < k:
            where = "" if c is None else f" of class {c}"
            raise InvalidArgumentError(
                f"the subset has {len(si)} scored samples{where}, fewer than k={k}: score a larger subset "
                f"or use a smaller k")
        d, nb = nearest_neighbors(se[si], qe[qi], k, exact_limit=exact_limit)
        w = np.exp(-(d - d[:, :1]).astype(np.float64) / temperature)  # shifted by the nearest: same ratios
        out[qi] = (w * ss[si][nb]).sum(axis=1) / w.sum(axis=1)
    return out


def knn_graph(embeddings, k: int = 10, *, labels=None, exact_limit: int = EXACT_LIMIT):
    """The row-normalised adjacency ``D⁻¹(A + I)`` of the directed kNN graph of ``embeddings`` (each node
    reads itself and its ``k`` nearest others, within its class when ``labels`` are given), as a
    ``tf.sparse.SparseTensor`` ``(n, n)`` with ``n · (k + 1)`` entries."""
    import tensorflow as tf

    k = _check_k(k)
    e = _as_embeddings(embeddings, "embeddings")
    n = len(e)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    rows, cols = [], []
    for g in groups:
        kk = min(k + 1, len(g))
        _, nb = nearest_neighbors(e[g], e[g], kk, exact_limit=exact_limit)
        nb = g[nb]
        # the nearest others (a duplicate may come before the node itself; the node goes in once either way)
        nb = np.take_along_axis(nb, np.argsort(nb == g[:, None], axis=1, kind="stable"), 1)[:, : kk - 1]
        rows.append(np.repeat(g, kk))
        cols.append(np.concatenate([g[:, None], nb], axis=1).ravel())
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    deg = np.bincount(rows, minlength=n).astype(np.float32)
    vals = 1.0 / deg[rows]
    order = np.lexsort((cols, rows))
    idx = np.stack([rows[order], cols[order]], axis=1)
    return tf.sparse.SparseTensor(idx, vals[order].astype(np.float32), (n, n))


def _gcn_layers(hidden, dropout, seed):
    import keras

    dense = [keras.layers.Dense(h, activation=None, kernel_initializer=keras.initializers.GlorotUniform(seed + i))
             for i, h in enumerate(hidden)]
    dense.append(keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed + len(hidden))))
    return dense, keras.layers.Dropout(dropout, seed=seed)


def gcn_extrapolate(embeddings, seed_index, seed_scores, k: int = 10, *, labels=None, num_classes=None,
                    same_label: bool = True, hidden=(64, 32), epochs: int = 100, learning_rate: float = 0.01,
                    dropout: float = 0.5, validation: float = 0.1, seed: int = 0,
                    exact_limit: int = EXACT_LIMIT) -> np.ndarray:
    """Scores of every sample from a graph convolutional network trained on the seeds' scores.

    The graph is the directed kNN graph of the embeddings with self-loops, row-normalised
    (``Â = D⁻¹(A + I)``, :func:`knn_graph`); node features are ``[one-hot label ‖ standardised
    embedding]``. Each layer is ``H ← relu(Â H W)`` (Kipf & Welling's GCN with mean aggregation), the last
    one linear, trained full-batch with Adam on the mean squared error of the seeds' standardised scores
    (a ``validation`` fraction of the seeds is held out to keep the best of every fifth epoch). The first
    propagation ``Â X`` is computed once (``Â (X W) = (Â X) W``). Written with Keras
    layers and ``tf.sparse``; seeds keep their own scores.

    Args:
        embeddings: ``(n, d)`` embeddings of every sample.
        seed_index: ``(m,)`` indices of the scored samples.
        seed_scores: ``(m,)`` their scores.
        k: neighbours per node in the graph.
        labels: ``(n,)`` class ids (one-hot features; without them the features are the embeddings alone).
        same_label: link only samples of the same class (with ``labels``).
        hidden: widths of the hidden graph convolutions.

    >>> import numpy as np
    >>> from spa_keras import data_pruning as dp
    >>> emb = np.random.default_rng(0).normal(size=(60, 4)).astype("float32")
    >>> s = dp.gcn_extrapolate(emb, np.arange(30), emb[:30, 0], k=5, epochs=20)
    >>> s.shape, bool(np.all(s[:30] == emb[:30, 0]))
    ((60,), True)
    """
    import tensorflow as tf
    import keras

    e = _as_embeddings(embeddings, "embeddings")
    n = len(e)
    seed_index = np.asarray(seed_index, dtype=np.int64)
    ss = np.asarray(seed_scores, dtype=np.float64)
    if len(ss) != len(seed_index) or len(seed_index) == 0:
        raise InvalidArgumentError(f"{len(ss)} seed scores for {len(seed_index)} seed indices (need at least one)")
    if seed_index.min() < 0 or seed_index.max() >= n:
        raise InvalidArgumentError(f"seed_index must lie in [0, {n}) (rows of embeddings)")
    if n <= k:
        raise InvalidArgumentError(f"{n} samples are too few for a graph with k={k} neighbours")
    if labels is not None:
        labels = as_labels(labels, n, "labels")
    adjacency = knn_graph(e, k, labels=labels if same_label and labels is not None else None, exact_limit=exact_limit)
    feats = (e - e.mean(0)) / (e.std(0) + 1e-6)
    if labels is not None:
        c = int(num_classes or labels.max() + 1)
        feats = np.concatenate([np.eye(c, dtype=np.float32)[labels], feats], axis=1)
    # the first layer's propagation does not depend on its weights: Â (X W) = (Â X) W, computed once
    feats = tf.sparse.sparse_dense_matmul(adjacency, tf.constant(feats.astype(np.float32)))
    mean, std = ss.mean(), ss.std() + 1e-12
    target = np.zeros(n, np.float32)
    target[seed_index] = (ss - mean) / std
    rng = np.random.default_rng(seed)
    perm = rng.permutation(seed_index)
    n_val = int(round(validation * len(perm))) if len(perm) >= 10 else 0
    train_idx, val_idx = tf.constant(perm[n_val:]), tf.constant(perm[:n_val])
    target = tf.constant(target)

    keras.utils.set_random_seed(seed)
    dense, drop = _gcn_layers(tuple(hidden), dropout, seed)

    def forward(training):
        h = feats
        for i, layer in enumerate(dense):
            h = layer(h) if i == 0 else tf.sparse.sparse_dense_matmul(adjacency, layer(h))
            if i < len(dense) - 1:
                h = drop(tf.nn.relu(h), training=training)
        return h[:, 0]

    forward(False)  # build
    weights = [w for layer in dense for w in layer.trainable_weights]
    opt = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = forward(True)
            loss = tf.reduce_mean((tf.gather(out, train_idx) - tf.gather(target, train_idx)) ** 2)
        opt.apply_gradients(zip(tape.gradient(loss, weights), weights))
        return loss

    @tf.function
    def val_loss():
        out = forward(False)
        return tf.reduce_mean((tf.gather(out, val_idx) - tf.gather(target, val_idx)) ** 2)

    best, best_weights = np.inf, None
    for epoch in range(int(epochs)):
        step()
        if n_val and (epoch % 5 == 4 or epoch == epochs - 1):
            v = float(val_loss())
            if v < best:
                best, best_weights = v, [w.numpy() for w in weights]
    if best_weights is not None:
        for w, b in zip(weights, best_weights):
            w.assign(b)
    out = forward(False).numpy().astype(np.float64) * std + mean
    out[seed_index] = ss
    return out
