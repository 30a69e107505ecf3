"""OBSPA: structured Optimal Brain Surgeon at group level, with weight compensation.

For a consumer layer written as a matrix ``W`` (rows = input features, columns = outputs) that reads
features ``x``, the layer-wise error of a change ``δW`` is ``δWᵀ H δW`` with ``H = 2 Σ x xᵀ`` (the
factor 2 cancels and is left out). Removing the input rows ``P`` (every row that reads the channels
that go) at the least error costs

    loss(P) = tr(W_Pᵀ ((H⁻¹)_PP)⁻¹ W_P)          and moves the other rows by
    δW      = −(H⁻¹)_{:P} ((H⁻¹)_PP)⁻¹ W_P,

which is the least-squares re-fit of the layer's outputs from the features that stay. A channel class
of a group is read by every consumer of the group, so its loss is the sum over those consumers, and
the compensation is applied to each of them.

The consumers are what the frontend shows as a :class:`~spa_keras.frontends.base.LinearView` (Keras
``Dense``, 2-D ``EinsumDense`` and ``Conv1D/2D/3D``; ONNX ``MatMul``, ``Gemm`` and ``Conv``), with
their kernels in a canonical channels-last layout, so the same code re-fits Keras and ONNX models.
What a "row" is, per consumer:

- A dense layer (any input rank): one row per input channel (exact).
- A 2-D convolution with ``groups=1``: one row per (kernel offset, input channel), from the unfolded
  input patches (exact, the ``H`` of the im2col matrix), while ``kh*kw*C_in`` is at most ``max_dim``.
- Larger 2-D convolutions and every 1-D/3-D one: the *channel covariance* approximation
  ``H ≈ I_offsets ⊗ Σ_c`` with ``Σ_c`` the covariance of input channels over every position. Each
  kernel offset is then re-fitted on its own (a removed channel predicted from the kept channels at
  the same position); correlations across offsets are ignored.
- A wide dense layer after a channels-last ``Flatten``: the channel covariance over positions.

When the consumer has a bias, or its output goes straight into a batch normalisation, the features
get a constant 1 so that the mean a removed channel carried moves into the bias (or the BN's moving
mean). Selection is greedy per group: blocks of about 1/32 of the group are removed, each the block
of least summed loss given the blocks before it, and every class is scored by the group's cumulative
loss at its removal divided by the group consumers' output energy ``Σ tr(Wᵀ H W)``, so that scores
compare across groups. A group with a channel that no supported consumer reads (attention heads,
grouped convs) is scored by L2 magnitude instead.

``H`` comes from calibration samples, or, with no data, from synthetic inputs (:mod:`.sources`).
Accumulating it is a ``tf.function`` that runs on the GPU when there is one and sums across replicas
under a ``tf.distribute`` strategy; the solve runs as TensorFlow ops in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf


@dataclass
class Consumer:
    """A layer whose kernel reads channels of pruned groups and can be re-fitted by OBS."""

    view: object  # the frontend's LinearView (kernel, bias, geometry, layouts)
    row_cls: np.ndarray  # class of every row of the matrix (the constant row, if any, is fixed)
    mode: str  # "dense", "patches" or "channels"
    augmented: bool  # a constant-1 feature carries the bias
    bn_mean: object = None  # the following BatchNorm's moving-mean Param, which absorbs the bias change
    views: list = field(default_factory=list)  # every call of a shared kernel
    cin: int = 0  # "channels" mode: the channels one position of the input holds

    @property
    def node(self):
        return self.view.node

    @property
    def kernel(self):
        return self.view.kernel

    @property
    def bias(self):
        return self.view.bias

    @property
    def key(self):
        return self.view.kernel.key

    @property
    def dim(self) -> int:
        return len(self.row_cls)


def _following_bn(model, node, readers):
    """The moving mean of the batch normalisation that alone reads ``node``'s output, or None."""
    users = readers.get(node.outputs[0], [])
    bn = model.batchnorm(users[0]) if len(users) == 1 else None
    return None if bn is None else bn.mean


def _flattened_channels(graph, node, cls, producer) -> int:
    """The channel count of the tensor a Flatten turned into ``node``'s input (0 if it was not a
    channels-last Flatten whose rows repeat the channels at every position)."""
    prev = producer.get(node.inputs[0])
    if prev is None or prev.kind != "flatten" or prev.attrs.get("channel_major"):
        return 0
    c = graph.tensors[prev.inputs[0]].channels
    if c <= 0 or len(cls) % c or not np.array_equal(cls, np.tile(cls[:c], len(cls) // c)):
        return 0
    return c


def find_consumers(model, analysis, max_dim: int) -> list:
    """Every OBS-compensable consumer of a prunable channel: the layers the frontend shows as a
    :class:`~spa_keras.frontends.base.LinearView` (dense layers, convolutions with ``groups == 1``) whose
    input axis reads at least one prunable class. ``model`` is the frontend's graph object."""
    graph = analysis.graph
    readers: dict = {}
    producer: dict = {}
    for node in graph.nodes:
        for t in node.inputs:
            readers.setdefault(t, []).append(node)
        for t in node.outputs:
            producer[t] = node
    found: dict = {}
    for node in graph.nodes:
        view = model.linear(node)
        if view is None:
            continue
        kernel = view.kernel
        if kernel.key in found:
            found[kernel.key].views.append(view)
            continue
        in_axis = next(a for a, r in kernel.axes.items() if r.side == "in")
        ref = kernel.axes[in_axis]
        if ref.repeat != 1 or ref.block or ref.tile != 1 or ref.index != 0:
            continue
        cls = analysis.class_of[analysis.axis_elements(node, kernel, in_axis)]
        if np.all(cls == analysis.fixed_class):
            continue
        cin = 0
        if view.kind == "dense" and len(cls) <= max_dim:
            mode, rows = "dense", cls
        elif view.kind == "dense":  # a wide Dense after Flatten: the channel covariance over positions
            cin = _flattened_channels(graph, node, cls, producer)
            if not cin:
                continue
            mode, rows = "channels", cls[:cin]
        else:
            offsets = int(np.prod(view.kernel_size))
            exact = len(view.kernel_size) == 2 and offsets * len(cls) <= max_dim
            mode, rows = ("patches", np.tile(cls, offsets)) if exact else ("channels", cls)
            cin = len(cls)
        bn_mean = None if view.bias is not None else _following_bn(model, node, readers)
        augmented = view.bias is not None or bn_mean is not None
        if augmented:
            rows = np.concatenate([rows, [analysis.fixed_class]])
        found[kernel.key] = Consumer(view, np.asarray(rows, np.int64), mode, augmented, bn_mean, [view], cin)
    return list(found.values())


# ---- features and Hessians --------------------------------------------------------------------------


def features(consumer: Consumer, view, x):
    """The rows the consumer's matrix multiplies, one line per output position: ``(n, dim)``; ``view``
    is the call (of a possibly shared kernel) that read ``x``."""
    x = tf.cast(x, tf.float64)  # float64 products: an exactly rank-deficient H stays positive semi-definite
    if view.channels_first:
        x = tf.transpose(x, [0] + list(range(2, len(x.shape))) + [1])
    if consumer.mode == "patches":
        (kh, kw), (sh, sw), (dh, dw) = view.kernel_size, view.strides, view.dilation
        padding = view.padding
        if not isinstance(padding, str):
            x = tf.pad(x, [[0, 0], list(padding[0]), list(padding[1]), [0, 0]])
            padding = "valid"
        x = tf.image.extract_patches(x, [1, kh, kw, 1], [1, sh, sw, 1], [1, dh, dw, 1], padding.upper())
    f = tf.reshape(x, (-1, consumer.cin if consumer.mode == "channels" else x.shape[-1]))
    if consumer.augmented:
        f = tf.concat([f, tf.ones_like(f[:, :1])], axis=1)
    return f


def hessian_step(model, consumers):
    """``step(x) -> [Σ xxᵀ per consumer]`` over one batch (traceable when the model's runner is)."""
    keep = {v.source for c in consumers for v in c.views}

    def step(x):
        values = model.run(x, keep=keep)
        out = []
        for c in consumers:
            total = 0.0
            for v in c.views:
                f = features(c, v, values[v.source])
                total = total + tf.matmul(f, f, transpose_a=True)
            out.append(total)
        return out

    return step


def accumulate_hessians(model, consumers, inputs, batch_size: int, strategy=None, progress=None) -> dict:
    """``{kernel key: Σ x xᵀ}`` (float64 NumPy) over ``inputs`` (arrays, one per model input), in batches.

    Each batch runs as one ``tf.function`` when the model's runner is traceable (a Keras model; an ONNX
    model runs in onnxruntime, eagerly); under ``strategy`` the batch is split across replicas and the
    per-replica sums are reduced with ``ReduceOp.SUM``.
    """
    step = hessian_step(model, consumers)
    data = tf.data.Dataset.from_tensor_slices(tuple(inputs)).batch(batch_size)
    if not model.traceable:
        fn = step
        data = data.as_numpy_iterator()
    elif strategy is None:
        fn = tf.function(step, reduce_retracing=True)
    else:
        data = strategy.experimental_distribute_dataset(data)

        def replicated(x):
            per = strategy.run(step, args=(x,))
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, p, axis=None) for p in per]

        fn = tf.function(replicated, reduce_retracing=True)
    sums = [np.zeros((c.dim, c.dim)) for c in consumers]
    for x in data:
        for i, h in enumerate(fn(list(x) if isinstance(x, tuple) else x)):
            sums[i] += np.asarray(h, np.float64)
        if progress is not None:
            progress.update(1)
    return {c.key: s for c, s in zip(consumers, sums)}


# ---- the matrices -----------------------------------------------------------------------------------


def matrix(consumer: Consumer, kernel: np.ndarray, bias) -> np.ndarray:
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


def unmatrix(consumer: Consumer, w: np.ndarray, kernel: np.ndarray, bias):
    """Canonical kernel and bias change back from a (compensated) matrix: ``(kernel, bias_delta)``."""
    cout = kernel.shape[-1]
    delta = None
    if consumer.augmented:
        w, last = w[:-1], w[-1]
        if consumer.mode == "channels":
            delta = last.reshape(-1, cout).sum(axis=0)
        else:
            delta = last - (0 if bias is None else bias)
    if consumer.mode == "channels":
        cin = consumer.cin
        k = w.reshape(cin, -1, cout).transpose(1, 0, 2).reshape(kernel.shape)
    else:
        k = w.reshape(kernel.shape)
    return k.astype(kernel.dtype), delta


def inverse(h: np.ndarray, damp: float) -> tf.Tensor:
    """``(H + λ I)⁻¹`` with ``λ = damp * mean(diag H)``; the damping grows tenfold until the Cholesky
    factorisation succeeds (dead channels make ``H`` singular)."""
    h = tf.constant(h, tf.float64)
    eye = tf.eye(h.shape[0], dtype=tf.float64)
    scale = tf.maximum(tf.reduce_mean(tf.linalg.diag_part(h)), 1e-12)
    for _ in range(12):
        chol = tf.linalg.cholesky(h + damp * scale * eye)
        if bool(tf.reduce_all(tf.math.is_finite(chol))):
            return tf.linalg.cholesky_solve(chol, eye)
        damp = max(damp * 10, 1e-12)
    raise FloatingPointError("the Hessian could not be inverted (non-finite activations?)")


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


def compensate(w: np.ndarray, hinv, rows) -> np.ndarray:
    """``W`` with ``rows`` removed and the rest re-fitted (the joint OBS update)."""
    if len(rows) == 0:
        return w
    w2, _, _ = remove_rows(tf.constant(w, tf.float64), hinv, rows)
    return w2.numpy()


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
    """``a⁻¹ b`` for a symmetric positive definite ``a`` (a block of an inverse Hessian); a block made
    singular by rounding falls back to a least-squares solve."""
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


_BLAS = []  # threadpoolctl's controller, found once (it scans the loaded libraries)


def _one_blas_thread():
    """BLAS limited to one thread while the greedy search runs (its blocks are small; OpenBLAS threads
    that spin between calls cost more than they give, badly so on a busy machine); a no-op without
    threadpoolctl."""
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
    rows), at ``O(|P|² |S|)`` instead of ``O(d² |S|)`` per block of classes, in NumPy float64; the rows of
    ``S`` are dropped after each block."""

    def __init__(self, present, rows, w, hinv, pos):
        self.idx = np.array([pos[int(c)] for c in present])  # position of each class in the group
        used = np.unique(rows)
        self.w = np.asarray(w, np.float64)[used]
        self.hinv = np.asarray(hinv, np.float64)[np.ix_(used, used)]
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
        """Remove the rows of the classes marked in ``taken`` (a mask over the group) jointly, and drop
        them from ``W_P`` and ``(H⁻¹)_PP``; the loss it costs."""
        hit = taken[self.idx]
        if not hit.any():
            return 0.0
        gone = self.where[self.rows[hit].ravel()]
        stay = np.ones(len(self.w), bool)
        stay[gone] = False
        wp, col = self.w[gone], self.hinv[np.ix_(stay, gone)]
        out = wp.shape[1]
        sol = _spd_solve(self.hinv[np.ix_(gone, gone)], np.concatenate([wp, col.T], axis=1))
        loss = float(np.sum(wp * sol[:, :out]))
        self.w = self.w[stay] - col @ sol[:, :out]
        self.hinv = self.hinv[np.ix_(stay, stay)] - col @ sol[:, out:]
        new = np.cumsum(stay) - 1
        self.where = np.where(self.where >= 0, new[np.maximum(self.where, 0)], -1)
        self.where[self.rows[hit].ravel()] = -1
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


def group_scores(group, consumers, states, progress, blocks: int):
    """Greedy structured OBS over one group: a score per class of the group (cumulative relative
    loss at its removal) or None when some class has no OBS consumer. Each consumer takes part through
    its rows that read the group (:class:`_Part`); blocks of about ``n / blocks`` classes go at each
    step, those of least summed loss given the blocks removed before them."""
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
        w = np.asarray(w, np.float64)
        parts.append(_Part(present, rows, w, hinv, pos))
        covered[parts[-1].idx] = True
        energy += _energy(w, h)
    if not parts or not covered.all():
        return None
    with _one_blas_thread():
        return _greedy(parts, n, blocks, progress) / max(energy, 1e-30)


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


# ---- the algorithm ----------------------------------------------------------------------------------


class OBSPA:
    """OBSPA on one model (the frontend's graph object, Keras or ONNX): Hessians once, then scores for
    selection and compensation for a plan.

    >>> # o = OBSPA(model, analysis, inputs); plan = select(analysis, o.scores(fallback), 0.5)
    >>> # plan.compensate(o.compensation(plan)); slim = spa.apply(plan)
    """

    def __init__(self, model, analysis, inputs, verbose: bool = False, **options):
        """``options``: OBSPA's ``algorithm_options`` (``spa_keras.algorithms.OPTIONS["obspa"]`` has
        them with their defaults): ``damp``, ``batch_size``, ``strategy``, ``max_dim``, ``blocks``."""
        from . import check, progress

        o = check("obspa", options)
        self.model, self.analysis, self.verbose = model, analysis, verbose
        self.damp, self.blocks = o["damp"], o["blocks"]
        self.consumers = find_consumers(model, analysis, o["max_dim"])
        n = len(inputs[0])
        with progress(int(math.ceil(n / o["batch_size"])), "OBSPA Hessians", "batch", verbose) as bar:
            self.hessians = accumulate_hessians(model, self.consumers, inputs, o["batch_size"], o["strategy"], bar)
        self._hinv = {}

    def hinv(self, key):
        if key not in self._hinv:
            self._hinv[key] = inverse(self.hessians[key], self.damp)
        return self._hinv[key]

    def _kernel(self, c):
        return c.view.canonical(self.model.weight(c.key))

    def _bias(self, c):
        return None if c.bias is None else self.model.weight(c.bias.key)

    def _matrix(self, c):
        return matrix(c, self._kernel(c), self._bias(c))

    def scores(self, fallback: np.ndarray) -> np.ndarray:
        """A score per class: the group's relative OBS loss at the class' removal (greedy); groups
        that OBS cannot score take ``fallback``'s scores (normalised by their group mean)."""
        from . import progress

        a = self.analysis
        out = np.full(a.n_classes, np.nan)
        by_class = {}
        for c in self.consumers:
            for cls in np.unique(c.row_cls):
                by_class.setdefault(int(cls), []).append(c)
        with progress(sum(g.size for g in a.groups), "OBSPA scores", "ch", self.verbose) as bar:
            for g in a.groups:
                users = {id(c): c for cls in g.classes for c in by_class.get(int(cls), [])}
                states = {}
                for c in users.values():
                    w = tf.constant(self._matrix(c), tf.float64)
                    states[c.key] = (w, self.hinv(c.key), self.hessians[c.key])
                s = group_scores(g, list(users.values()), states, bar, self.blocks) if users else None
                if s is None:
                    f = np.asarray(fallback, np.float64)[g.classes]
                    s = f / (np.nanmean(f) + 1e-12) if np.isfinite(f).any() else f
                    bar.update(g.size)
                out[g.classes] = s
        return out

    def compensation(self, plan) -> dict:
        """``{parameter key: full-width array}``: the consumers' kernels (and biases, or following
        BatchNorm means) re-fitted for the plan's removals (:meth:`PruningPlan.compensate` takes it)."""
        new = {}
        removed = plan.removed_classes
        for c in self.consumers:
            rows = np.nonzero(removed[c.row_cls])[0]
            if not len(rows):
                continue
            kernel, bias = self._kernel(c), self._bias(c)
            w = compensate(matrix(c, kernel, bias), self.hinv(c.key), rows)
            k, delta = unmatrix(c, w, kernel, bias)
            new[c.key] = c.view.native(k)
            if delta is not None:
                if c.bias is not None:
                    new[c.bias.key] = (bias + delta).astype(bias.dtype)
                elif c.bn_mean is not None:
                    mean = self.model.weight(c.bn_mean.key)
                    new[c.bn_mean.key] = (mean - delta).astype(mean.dtype)
        return new

    def layer_error(self, plan, compensated: bool = True) -> dict:
        """``{layer: relative output error on the Hessian's inputs}`` of each consumer after the plan's
        removals, with or without compensation: ``δWᵀ H δW / Wᵀ H W``."""
        out = {}
        for c in self.consumers:
            rows = np.nonzero(plan.removed_classes[c.row_cls])[0]
            w = self._matrix(c)
            if compensated:
                w2 = compensate(w, self.hinv(c.key), rows)
            else:
                w2 = w.copy()
                w2[rows] = 0
            d, h = w2 - w, self.hessians[c.key]
            out[c.node.layer] = float(np.sum(d * (h @ d)) / max(np.sum(w * (h @ w)), 1e-30))
        return out
