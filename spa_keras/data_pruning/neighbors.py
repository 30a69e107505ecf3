"""Nearest neighbours with faiss (``pip install faiss-cpu``): exact search (``IndexFlatL2``, BLAS) up to
``exact_limit`` indexed points, an HNSW graph above it; queries go a chunk at a time, so that a million
queries never need more than a chunk's distance matrix."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError, require
from .sources import CHUNK

#: above this many indexed points the search is approximate (HNSW, 32 links, efSearch ≥ 128)
EXACT_LIMIT = 200_000


def _faiss():
    return require("faiss", "faiss-cpu", why="nearest-neighbour search in spa_keras.data_pruning")


def nearest_neighbors(points, queries, k: int, *, exact_limit: int = EXACT_LIMIT, chunk: int = CHUNK):
    """The ``k`` nearest of ``points`` (``m × d``) to each of ``queries`` (``n × d``), by Euclidean distance.

    Returns ``(distances, indices)``, both ``n × k``, nearest first. Distances are recomputed exactly for
    the neighbours found (so that identical queries get identical answers, whatever the index's
    arithmetic did).

    >>> import numpy as np
    >>> from spa_keras.data_pruning import nearest_neighbors
    >>> d, i = nearest_neighbors(np.array([[0.0], [1.0], [5.0]]), np.array([[0.9], [4.0]]), k=2)
    >>> i.tolist(), d.astype(float).round(2).tolist()
    ([[1, 0], [2, 1]], [[0.1, 0.9], [1.0, 3.0]])
    """
    faiss = _faiss()
    points = np.ascontiguousarray(points, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if points.ndim != 2 or queries.ndim != 2 or points.shape[1] != queries.shape[1]:
        raise InvalidArgumentError(f"nearest_neighbors: points {points.shape} and queries {queries.shape} must be "
                                   "(m, d) and (n, d) arrays of the same d")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(points):
        raise InvalidArgumentError(f"k={k!r}: need 1 <= k <= {len(points)} (the number of points to search)")
    d = points.shape[1]
    if len(points) <= exact_limit:
        index = faiss.IndexFlatL2(d)
    else:
        index = faiss.IndexHNSWFlat(d, 32)
        index.hnsw.efSearch = max(128, 2 * k)
    index.add(points)
    dist = np.empty((len(queries), k), np.float32)
    idx = np.empty((len(queries), k), np.int64)
    for i in range(0, len(queries), chunk):
        q = queries[i:i + chunk]
        _, ii = index.search(q, k)
        ii = np.where(ii < 0, ii[:, :1], ii)  # HNSW may return fewer than k: repeat the nearest
        dd = np.empty(ii.shape, np.float32)
        step = max(1, 2 ** 22 // (k * d))  # 16 MB of gathered points at a time
        for j in range(0, len(q), step):
            dd[j:j + step] = np.sqrt(((points[ii[j:j + step]] - q[j:j + step, None, :]) ** 2).sum(-1))
        order = np.lexsort((ii, dd), axis=1)  # by distance, then index
        dist[i:i + chunk] = np.take_along_axis(dd, order, 1)
        idx[i:i + chunk] = np.take_along_axis(ii, order, 1)
    return dist, idx
