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

"Exact" is of the rows taken: by default (``rows_per_dim=64``) a consumer whose feature-map positions
give more than ``64 · dim`` rows takes a random, reweighted subset of them (:func:`hessian_step`).

When the consumer has a bias, or its output goes straight into a batch normalisation, the features
get a constant 1 so that the mean a removed channel carried moves into the bias (or the BN's moving
mean). Selection is greedy per group: blocks of about 1/32 of the group are removed, each the block
of least summed loss given the blocks before it, and every class is scored by the group's cumulative
loss at its removal divided by the group consumers' output energy ``Σ tr(Wᵀ H W)``, so that scores
compare across groups. A group with a channel that no supported consumer reads (attention heads,
grouped convs) is scored by L2 magnitude instead.

``H`` comes from calibration samples, or, with no data, from synthetic inputs (:mod:`.sources`).
Accumulating it is a ``tf.function`` that runs on the GPU when there is one and sums across replicas
under a ``tf.distribute`` strategy; the solves run on the host in float64 (LAPACK and BLAS, through SciPy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from ..data import array_batches, steady
from ..errors import InvalidArgumentError
from .obs_solver import (
    compensate,
    direct_scores,
    group_scores,
    inverse,
    matrix,
    unmatrix,
)

#: how the weights that stay change: the Optimal Brain Surgeon update, only the bias (FLAP), or not at all
UPDATES = ("obs", "bias", "none")


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
    def width(self) -> int:
        """Features per row of the input (the constant 1 not counted)."""
        return self.cin if self.mode == "channels" else self.dim - int(self.augmented)

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


def _row_classes(analysis, node, view):
    """The class each input feature of ``view`` reads (flattened over ``row_axes``), or None when the
    features cannot be read one class at a time."""
    kernel = view.kernel
    if view.row_axes is None:
        axis = next(a for a, r in kernel.axes.items() if r.side == "in")
        ref = kernel.axes[axis]
        if ref.repeat != 1 or ref.block or ref.tile != 1 or ref.index != 0:
            return None
        return analysis.class_of[analysis.axis_elements(node, kernel, axis)]
    fixed = analysis.fixed_class
    grids = np.meshgrid(*[analysis.class_of[analysis.axis_elements(node, kernel, a)] for a in view.row_axes],
                        indexing="ij")
    prunable = [g for g in grids if np.any(g != fixed)]
    if len(prunable) > 1:
        return None  # two prunable axes in one feature (heads and head size both): not one class per row
    return (prunable[0] if prunable else grids[0]).reshape(-1)


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
    for node, view in ((n, v) for n in graph.nodes for v in model.linears(n)):
        kernel = view.kernel
        if kernel.key in found:
            found[kernel.key].views.append(view)
            continue
        cls = _row_classes(analysis, node, view)
        if cls is None or np.all(cls == analysis.fixed_class):
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


def _channels_last(view, x):
    x = tf.cast(x, tf.float32)
    if view.channels_first:
        x = tf.transpose(x, [0] + list(range(2, len(x.shape))) + [1])
    return x


def _padded(view, x):
    """``x`` padded as the convolution pads it, so that its patches start at ``stride · position``."""
    (kh, kw), (sh, sw), (dh, dw) = view.kernel_size, view.strides, view.dilation
    padding = view.padding
    if isinstance(padding, str):
        if padding.lower() == "valid":
            return x
        pads = []
        for axis, k, s, d in ((1, kh, sh, dh), (2, kw, sw, dw)):
            size = x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]
            total = (-(-size // s) - 1) * s + (k - 1) * d + 1 - size  # TensorFlow's "same"
            total = max(total, 0) if isinstance(total, int) else tf.maximum(total, 0)
            pads.append([total // 2, total - total // 2])
    else:
        pads = [list(padding[0]), list(padding[1])]
    return tf.pad(x, [[0, 0], pads[0], pads[1], [0, 0]])


def _augment(consumer, f):
    return tf.pad(f, [[0, 0], [0, 1]], constant_values=1.0) if consumer.augmented else f


def features(consumer: Consumer, view, x):
    """The rows the consumer's matrix multiplies, one line per output position: ``(n, dim)``; ``view``
    is the call (of a possibly shared kernel) that read ``x``."""
    x = _channels_last(view, x)
    if consumer.mode == "patches":
        (kh, kw), (sh, sw), (dh, dw) = view.kernel_size, view.strides, view.dilation
        x = tf.image.extract_patches(_padded(view, x), [1, kh, kw, 1], [1, sh, sw, 1], [1, dh, dw, 1], "VALID")
    return _augment(consumer, tf.reshape(x, (-1, consumer.width)))


def sampled_features(consumer: Consumer, view, x, cap: int, seed):
    """``(rows, probability)``: every row of :func:`features` kept with probability ``min(1, cap / rows)``
    (drawn from the stateless ``seed``). Only the rows kept are built: a convolution's patches are
    gathered at the sampled positions, not unfolded everywhere first. Few ops, as this is traced once
    per consumer: a patch is one gather from the flattened feature map, at its first element's offset
    plus the kernel's fixed offsets."""
    x = _channels_last(view, x)
    patches = consumer.mode == "patches"
    if patches:
        (kh, kw), (sh, sw), (dh, dw) = view.kernel_size, view.strides, view.dilation
        x = _padded(view, x)
        if kh == kw == 1:  # a pointwise convolution's rows are the feature map's (strided) positions
            x, patches = x[:, ::sh, ::sw], False
    if not patches:
        x = tf.reshape(x, (-1, consumer.width))
        n = tf.shape(x, out_type=tf.int64)[0]
    else:
        dynamic = tf.shape(x, out_type=tf.int64)
        h, w = (x.shape[i] if x.shape[i] is not None else dynamic[i] for i in (1, 2))
        oh, ow = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
        n = dynamic[0] * oh * ow
    p = tf.minimum(tf.constant(1.0, tf.float64), float(cap) / tf.maximum(tf.cast(n, tf.float64), 1.0))
    at = tf.where(tf.random.stateless_uniform((n,), seed, dtype=tf.float64) < p)[:, 0]
    if not patches:
        return _augment(consumer, tf.gather(x, at)), p
    b, i, j = at // (oh * ow), (at % (oh * ow)) // ow, at % ow
    first = (b * h + i * sh) * w + j * sw  # the flat position of each patch's first element
    if isinstance(w, int):  # the kernel's offsets from its first element, in extract_patches' order
        offsets = (np.arange(kh)[:, None] * dh * w + np.arange(kw)[None, :] * dw).reshape(-1)
    else:
        row, col = tf.range(kh, dtype=tf.int64)[:, None] * dh * w, tf.range(kw, dtype=tf.int64)[None, :] * dw
        offsets = tf.reshape(row + col, (-1,))
    flat = tf.reshape(x, (-1, consumer.width // (kh * kw)))  # one position's channels per line
    return _augment(consumer, tf.reshape(tf.gather(flat, first[:, None] + offsets), (-1, consumer.width))), p


def gram(f, many_rows: bool = True, block: int = 256):
    """``fᵀ f`` for ``f`` of shape ``(rows, dim)``, computing only the blocks on and above the diagonal (the
    product is symmetric): with ``k`` column blocks of at least ``block`` columns, ``k(k+1)/2`` of the ``k²``
    products, up to 37.5% fewer multiply-adds at ``k = 4``; the blocks below are the transposes. Measured
    1.4–1.6x faster for 576–1152 columns and four rows per column; with fewer rows than columns
    (``many_rows=False``: a dense layer's one row per sample) assembling the blocks costs more than it saves."""
    dim = f.shape[-1]
    k = 1 if dim is None or not many_rows else min(4, dim // block)
    if k < 2:
        return tf.matmul(f, f, transpose_a=True)
    parts = tf.split(f, [dim * (i + 1) // k - dim * i // k for i in range(k)], axis=1)
    upper = {(i, j): tf.matmul(parts[i], parts[j], transpose_a=True) for i in range(k) for j in range(i, k)}
    return tf.concat([tf.concat([upper[i, j] if j >= i else tf.transpose(upper[j, i]) for j in range(k)], axis=1)
                      for i in range(k)], axis=0)


def hessian_step(model, consumers, caps=None):
    """``step(x, seed) -> [Σ xxᵀ per consumer]`` over one batch (traceable when the model's runner is).
    With a ``padding_mask`` input, the padded positions of a sequence never enter a Hessian.

    ``caps`` (one per consumer, ``None`` for no cap) bounds the rows a consumer takes from the batch: where
    a call has more, each row is kept with probability ``cap / rows`` (drawn from the stateless ``seed``,
    an int32 pair) and the product is divided by that probability, so the sum stays an unbiased estimate.
    Only the positions of feature maps are sampled, where neighbours repeat each other; the tokens of a
    sequence (``per_token`` calls) all count.

    The products are float32 (three times faster than float64 on a CPU, measured), each batch's sum
    then float64: a batch's rounding is about ``√rows · 6e-8`` of its entries, far under the damping
    (``damp``, 1e-2 of the mean diagonal by default), which also keeps a rank-deficient sum invertible."""
    keep = {v.source for c in consumers for v in c.views}
    mask_at = next((i for i, s in enumerate(model.input_specs()) if s.name == "padding_mask"), None)
    caps = caps or [None] * len(consumers)

    def step(x, seed=(0, 0)):
        values = model.run(x, keep=keep)
        mask = None if mask_at is None else tf.reshape(tf.cast(x[mask_at], tf.float32), (-1, 1))
        seed = tf.cast(seed, tf.int32) * [1, 7919]  # each call's own stream: seed + (0, 131 i + j)
        out = []
        for i, (c, cap) in enumerate(zip(consumers, caps)):
            total = 0.0
            for j, v in enumerate(c.views):
                scale = 1.0
                if cap is not None and not v.per_token:
                    f, scale = sampled_features(c, v, values[v.source], cap, seed + [0, 131 * i + j])
                else:
                    f = features(c, v, values[v.source])
                if mask is not None and v.per_token:
                    f = f * mask
                many = c.mode != "dense" or v.per_token  # feature-map positions or tokens, not one per sample
                total = total + tf.cast(gram(f, many), tf.float64) / scale
            out.append(total)
        return out

    return step


def row_caps(consumers, rows_per_dim, n_samples: int, batch_size: int, replicas: int = 1) -> list:
    """Each consumer's cap on the rows one replica's batch gives its Hessian: ``rows_per_dim · dim`` over
    the whole calibration set, shared evenly by the batches (``None``: every row)."""
    if rows_per_dim is None:
        return [None] * len(consumers)
    batches = max(1, math.ceil(n_samples / batch_size)) * max(1, replicas)
    return [max(1, math.ceil(rows_per_dim * c.dim / batches)) for c in consumers]


def accumulate_hessians(model, consumers, inputs, batch_size: int, strategy=None, progress=None,
                        rows_per_dim=None) -> dict:
    """``{kernel key: Σ x xᵀ}`` (float64 NumPy) over ``inputs`` (arrays, one per model input), in batches.

    Each batch runs as one ``tf.function`` when the model's runner is traceable (a Keras model; an ONNX
    model runs in onnxruntime, eagerly); under ``strategy`` the batch is split across replicas and the
    per-replica sums are reduced with ``ReduceOp.SUM``. ``rows_per_dim`` caps the rows each Hessian takes
    (:func:`row_caps`); the rows kept are drawn from a fixed seed, so a run repeats exactly.
    """
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    caps = row_caps(consumers, rows_per_dim, len(inputs[0]), batch_size, replicas)
    step = hessian_step(model, consumers, caps)
    data = array_batches(inputs, batch_size)  # not tf.data: see array_batches
    if not model.traceable:
        fn = step
    elif strategy is None:  # one trace, a short last batch included
        spec = [tf.TensorSpec((None, *np.shape(a)[1:]), tf.as_dtype(a.dtype)) for a in inputs]
        fn = tf.function(step, input_signature=[spec, tf.TensorSpec((2,), tf.int32)], autograph=False)
    else:
        data = strategy.experimental_distribute_dataset(
            steady(tf.data.Dataset.from_tensor_slices(tuple(inputs)).batch(batch_size)))

        def per_replica(x, seed):  # each replica draws its own rows
            return step(x, (seed[0] + tf.distribute.get_replica_context().replica_id_in_sync_group, seed[1]))

        def replicated(x, seed):
            per = strategy.run(per_replica, args=(x, seed))
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, p, axis=None) for p in per]

        fn = tf.function(replicated, reduce_retracing=True, autograph=False)
    sums = [np.zeros((c.dim, c.dim)) for c in consumers]
    for b, x in enumerate(data):
        seed = tf.constant([0, b], tf.int32)
        for i, h in enumerate(fn(list(x) if isinstance(x, tuple) else x, seed)):
            sums[i] += np.asarray(h, np.float64)
        if progress is not None:
            progress.update(1)
    return {c.key: s for c, s in zip(consumers, sums)}


# ---- the algorithm ----------------------------------------------------------------------------------


class OBSPA:
    """OBSPA on one model (the frontend's graph object, Keras or ONNX): Hessians once, then scores for
    selection and compensation for a plan.

    >>> # o = OBSPA(model, analysis, inputs); plan = select(analysis, o.scores(fallback), 0.5)
    >>> # plan.compensate(o.compensation(plan)); slim = spa.apply(plan)
    """

    def __init__(self, model, analysis, inputs, verbose: bool = False, **options):
        """``options``: OBSPA's ``algorithm_options`` (``spa_keras.algorithms.OPTIONS["obspa"]`` has
        them with their defaults): ``damp``, ``batch_size``, ``strategy``, ``max_dim``, ``blocks``,
        ``rows_per_dim``."""
        from . import check, progress

        o = check("obspa", options)
        if o["update"] not in UPDATES:
            raise InvalidArgumentError(f"algorithm_options['update'] must be one of {UPDATES}, got {o['update']!r}")
        r = o["rows_per_dim"]
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0):
            raise InvalidArgumentError(f"algorithm_options['rows_per_dim'] must be None (every row) or a positive "
                                       f"number of rows per Hessian dimension, got {r!r}")
        self.model, self.analysis, self.verbose = model, analysis, verbose
        self.damp, self.blocks, self.update = o["damp"], o["blocks"], o["update"]
        self.consumers = find_consumers(model, analysis, o["max_dim"])
        n = len(inputs[0])
        with progress(int(math.ceil(n / o["batch_size"])), "OBSPA Hessians", "batch", verbose) as bar:
            self.hessians = accumulate_hessians(model, self.consumers, inputs, o["batch_size"], o["strategy"], bar,
                                                o["rows_per_dim"])
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
                obs = self.update == "obs"
                states = {c.key: (self._matrix(c), self.hinv(c.key) if obs else None, self.hessians[c.key])
                          for c in users.values()}
                if obs:
                    s = group_scores(g, list(users.values()), states, bar, self.blocks) if users else None
                else:
                    s = direct_scores(g, list(users.values()), states, bias_only=self.update == "bias")
                    if s is not None:
                        bar.update(g.size)
                if s is None:
                    f = np.asarray(fallback, np.float64)[g.classes]
                    s = f / (np.nanmean(f) + 1e-12) if np.isfinite(f).any() else f
                    bar.update(g.size)
                out[g.classes] = s
        return out

    def compensation(self, plan) -> dict:
        """``{parameter key: full-width array}``: the consumers' kernels (and biases, or following
        BatchNorm means) re-fitted for the plan's removals (:meth:`PruningPlan.compensate` takes it).
        ``update="bias"`` moves only the removed features' mean into the bias; ``"none"`` changes
        nothing."""
        new = {}
        removed = plan.removed_classes
        for c in self.consumers:
            rows = np.nonzero(removed[c.row_cls])[0]
            if not len(rows) or self.update == "none" or (self.update == "bias" and not c.augmented):
                continue
            kernel, bias = self._kernel(c), self._bias(c)
            if self.update == "bias":
                w = matrix(c, kernel, bias)
                h = self.hessians[c.key]
                w[-1] += (h[rows, -1] / max(h[-1, -1], 1e-30)) @ w[rows]  # the removed features' mean, times W
                w[rows] = 0
            else:
                w = compensate(matrix(c, kernel, bias), self.hinv(c.key), rows)
            k, delta = unmatrix(c, w, kernel, bias)
            new[c.key] = c.view.native(k)
            if delta is not None:
                if c.bias is not None:
                    new[c.bias.key] = (bias + delta.reshape(bias.shape)).astype(bias.dtype)
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
