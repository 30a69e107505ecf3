"""Residual-stream rotation (computational invariance, as in SliceGPT): fold, centre, rotate, drop.

A pre-norm transformer's residual stream ``x`` (width ``D``) is only ever *written* by linear maps
(embeddings, attention output and MLP down projections, their biases) and *read* through a norm
``n(x) = γ ⊙ x / rms(x) + β`` by linear maps (query, key, value, gate and up projections, the output
head). Three exact rewrites make its coordinates free to choose, and a fourth orders each head:

1. **Fold** each norm's scale and offset into the weights that read it: ``R ← diag(γ) R``,
   ``b ← b + β R``; then ``γ = 1``, ``β = 0``.
2. **Centre** (LayerNorm models): subtract, from everything that writes the stream, its mean over the
   channels, so that the stream has zero mean and LayerNorm computes what RMSNorm does.
3. **Rotate**: for an orthogonal ``Q``, the stream ``x Q`` written by ``W Q`` and read by ``Qᵀ R`` gives
   the same outputs (an RMS norm does not see a rotation). ``Q`` holds the principal directions of the
   stream's activations on calibration samples (its second moment; centred for LayerNorm models).

4. **Reshape the heads** where the head size is ``hidden_dim // heads`` (keras_hub's GPT-2 and Llama):
   a narrower stream must narrow every head, so each head's dimensions are ordered first. Values and
   outputs, and (without a rotary embedding) queries and keys, are turned onto their principal
   directions by invertible maps within the head; rotary heads keep evenly spaced frequency pairs
   (:meth:`Rotation._choose_frequencies`) and the rebuild sets the base wavelength that turns them as
   before.

Then the weakest ``D - D'`` directions are dropped: the plan removes the stream's last ``D - D'``
channels (and each head's last dimensions), and the norms' scales grow by ``sqrt(D / D')`` (the slicing
rule of the frontends). For a LayerNorm the kept coordinates must themselves have zero mean: the kept
block is ``[u_1 … u_{D'-1}, 1/√D] H`` (``H`` a Householder reflection taking the all-ones vector to the
last axis), so ``D' - 1`` principal directions are kept and LayerNorm's centring stays exact.

With ``D' = D`` the rotated model computes what the original does (to float precision). Where a norm's
readers cannot take its scale (an embedding tied to the output head also writes the stream), the norm
keeps its scale, rotated approximately (``diag(Qᵀ diag(γ) Q)``), and the model is no longer exactly
invariant; the report of the plan says so (``settings["rotation_exact"]``).

Everything is seen through the frontend interface and the channel graph: which parameters write or
read the stream, which norm each reader sits behind (``norm_readers`` of a block, or the graph's
edges), and the stream's values from the runner.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError
from ..graph import BIAS, STAT


def _contract(value: np.ndarray, axis: int, q: np.ndarray) -> np.ndarray:
    """``value`` with its ``axis`` (the stream's channels) mapped through ``q``: new[j] = Σ_i value[i] q[i, j]."""
    return np.moveaxis(np.tensordot(value, q, axes=([axis], [0])), -1, axis)


class Rotation:
    """The rotated weights of a model whose stream (one group of the analysis) is rotated and cut to
    ``keep`` channels. ``arrays``: ``{parameter key: full-width array}`` (the plan's compensation);
    ``order``: the stream's channel positions, most important first; ``head_scores``: for each block
    whose head size follows the stream (``attrs["head_dim"]``), its head dimensions' scores (the plan
    keeps the highest in every head); ``exact``: whether every norm could be folded."""

    def __init__(self, model, analysis, stream_group: int, inputs, keep: int, batch_size: int = 32):
        self.model, self.analysis, self.graph = model, analysis, analysis.graph
        cls = analysis.groups[stream_group].classes
        self.in_stream = np.zeros(analysis.n_classes, bool)
        self.in_stream[cls] = True
        self.points = self._stream_tensors()
        if not self.points:
            raise InvalidArgumentError(f"model {self.graph.name!r}: no residual stream to rotate")
        self.width = self.graph.tensors[self.points[0]].channels
        self.kinds = {n.attrs.get("norm") for n in self.graph.nodes if n.attrs.get("norm")}
        if "post_layer" in self.kinds:
            raise InvalidArgumentError(
                f"model {self.graph.name!r} normalises after the residual add (post-norm, like BERT): its stream "
                "cannot be rotated exactly. Use residual_stream='slice' (approximate) or 'hold'")
        self.layer_norm = bool(self.kinds & {"layer"})
        self.keep = int(keep)
        self.values = {}  # parameter key -> current array
        self.norm_params = {}  # parameter key of a norm's scale or offset -> "scale" or "offset"
        self.exact = True
        self.producer = {t: n for n in self.graph.nodes for t in n.outputs}
        self._fold()
        if self.layer_norm:
            self._centre()
        self.blocks = head_blocks(self.graph)
        cov, reads = self._second_moment(inputs, batch_size)
        self.q = self._basis(cov)
        self._rotate()
        self.head_scores = [self._reshape_heads(node, self._kept_read(reads[node.inputs[0]])) for node in self.blocks]
        self._choose_frequencies()
        self.arrays = self.values
        self.order = np.arange(self.width)

    # ---- where the stream is -------------------------------------------------------------------------
    def _on_stream(self, node, p, axis) -> bool:
        return bool(self.in_stream[self.analysis.class_of[self.analysis.axis_elements(node, p, axis)]].all())

    def _stream_tensors(self) -> list:
        """The stream's tensors that a norm or a block reads (the points whose statistics matter)."""
        out = []
        for node in self.graph.nodes:
            if node.attrs.get("stream") == "pass" and node.inputs:
                t = node.inputs[0]
                lay = self.analysis.layouts[t]
                if len(lay) and self.in_stream[self.analysis.class_of[lay]].all() and t not in out:
                    out.append(t)
        return out

    def _value(self, p):
        if p.key not in self.values:
            self.values[p.key] = np.array(self.model.weight(p.key), dtype=np.float64)
        return self.values[p.key]

    # ---- 1. fold the norms into their readers ----------------------------------------------------------
    @staticmethod
    def _is_norm(node) -> bool:
        return node.kind == "identity" and bool(node.attrs.get("norm"))

    def _norm_of(self, tensor):
        """The norm node whose output ``tensor`` is, through ops that only pass it on (a slice, a dropout)."""
        node = self.producer.get(tensor)
        while node is not None and node.kind == "identity" and not self._is_norm(node) and not node.params:
            node = self.producer.get(node.inputs[0]) if node.inputs else None
        return node if node is not None and self._is_norm(node) else None

    def _fold(self):
        readers: dict = {}  # norm (node name, norm name) -> [(node, reader param, axis)]
        norms: dict = {}  # the same key -> [(node, norm param)]
        for node in self.graph.nodes:
            by_name = {p.name.rsplit("/", 2)[-2] + "/" + p.name.rsplit("/", 1)[-1]: p for p in node.params}
            for norm, names in (node.attrs.get("norm_readers") or {}).items():  # a block's own norms
                key = (node.name, norm)
                norms[key] = [(node, p) for n, p in by_name.items() if n.startswith(norm + "/")]
                for name in names:
                    p = next((q for q in node.params if q.name.endswith("/" + name)), None)
                    if p is not None:
                        axis = next(a for a, r in p.axes.items() if r.side == "in")
                        readers.setdefault(key, []).append((node, p, axis))
            if self._is_norm(node):  # a norm layer of the graph
                norms[(node.name, "")] = [(node, p) for p in node.params]
            for p in node.params:
                for axis, ref in p.axes.items():
                    if ref.side != "in" or node.attrs.get("norm_readers") is not None:
                        continue
                    src = self._norm_of(node.inputs[ref.index])
                    if src is not None and self._on_stream(node, p, axis):
                        readers.setdefault((src.name, ""), []).append((node, p, axis))
        writes = {p.key for _, p, _ in self._writers()}
        for key, params in norms.items():
            gamma = next((p for _, p in params if p.tag == "norm_scale"), None)
            beta = next((p for _, p in params if p.tag != "norm_scale" and p.axes), None)
            self.norm_params.update({p.key: "scale" if p is gamma else "offset" for p in (gamma, beta) if p})
            reads = readers.get(key, [])
            shared = any(p.key in writes for _, p, _ in reads)  # an embedding tied to the output head
            kind = next(n.attrs.get("norm") for n, _ in params) if params else None
            if not reads or shared:  # a tied output head: keep the scale, rotated as well as a diagonal can be
                self.exact = self.exact and gamma is None
                continue
            g = self._gamma(gamma, kind)
            b = None if beta is None else self._value(beta)
            for node, p, axis in reads:
                r = self._value(p)
                if b is not None:
                    bias = self._bias_of(node, p, axis)
                    if bias is None:
                        self.exact = False
                    else:
                        self.values[bias.key] = self._value(bias) + np.tensordot(b, r, axes=([0], [axis]))
                shape = [1] * r.ndim
                shape[axis] = -1
                self.values[p.key] = r * g.reshape(shape)
            if gamma is not None:
                self.values[gamma.key] = np.zeros_like(g) if kind == "rms1p" else np.ones_like(g)
            if beta is not None:
                self.values[beta.key] = np.zeros_like(b)

    def _gamma(self, gamma, kind):
        if gamma is None:
            return np.ones(self.width)
        g = self._value(gamma)
        return 1.0 + g if kind == "rms1p" else g

    def _bias_of(self, node, p, axis):
        """The bias added to what ``p`` computes: a parameter of the same node shaped like ``p`` without
        the stream axis, following the same tensors."""
        want = [r for a, r in sorted(p.axes.items()) if a != axis]
        shape = tuple(d for a, d in enumerate(p.shape) if a != axis)
        found = [q for q in node.params
                 if q.role == BIAS and tuple(q.shape) == shape and [r for _, r in sorted(q.axes.items())] == want]
        prefix = p.name.rsplit("/", 1)[0]  # several alike (query and key biases): the one beside the kernel
        found = [q for q in found if q.name.rsplit("/", 1)[0] == prefix] or found[:1] if len(found) > 1 else found
        return found[0] if found else None

    # ---- 2. centre the writers ----------------------------------------------------------------------------
    def _writers(self):
        """``(node, param, axis)`` of every parameter that writes the stream (not a norm's)."""
        for node in self.graph.nodes:
            if self._is_norm(node):
                continue
            for p in node.params:
                for axis, ref in p.axes.items():
                    if ref.side == "out" and p.role != STAT and self._on_stream(node, p, axis):
                        yield node, p, axis

    def _centre(self):
        done = set()
        for node, p, axis in self._writers():
            if p.key in done:
                continue
            done.add(p.key)
            w = self._value(p)
            self.values[p.key] = w - w.mean(axis=axis, keepdims=True)

    # ---- 3. rotate ------------------------------------------------------------------------------------------
    def _second_moment(self, inputs, batch_size) -> tuple:
        """``Σ x xᵀ`` over the stream's points on the calibration samples (padded positions left out),
        centred per position for LayerNorm models; and, at the input of each block whose heads are
        reshaped, ``Σ [x̂, 1][x̂, 1]ᵀ`` of what its attention reads (``x̂``: the normalised stream)."""
        mask_at = next((i for i, s in enumerate(self.model.input_specs()) if s.name == "padding_mask"), None)
        cov = np.zeros((self.width, self.width))
        reads = {n.inputs[0]: np.zeros((self.width + 1, self.width + 1)) for n in self.blocks}
        n = len(inputs[0])
        for start in range(0, n, batch_size):
            batch = [a[start:start + batch_size] for a in inputs]
            values = self.model.run(batch, keep=set(self.points))
            weight = None if mask_at is None else np.asarray(batch[mask_at], np.float64).reshape(-1)
            for t in self.points:
                x = np.asarray(values[t], np.float64).reshape(-1, self.width)
                if self.layer_norm:
                    x = x - x.mean(axis=1, keepdims=True)
                if weight is not None and len(weight) == len(x):
                    x = x * np.sqrt(weight)[:, None]
                cov += x.T @ x
                if t in reads:  # a padded row is zero: so are its x̂ and its 1
                    one = np.ones((len(x), 1)) if weight is None or len(weight) != len(x) else np.sqrt(weight)[:, None]
                    a = np.hstack([x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-6), one])
                    reads[t] += a.T @ a
        return cov, reads

    def _basis(self, cov) -> np.ndarray:
        """``Q`` (D×D, orthogonal): the first ``keep`` columns span what is kept."""
        d, k = self.width, self.keep
        vals, vecs = np.linalg.eigh(cov)
        vecs = vecs[:, np.argsort(vals)[::-1]]
        if not self.layer_norm:
            return vecs
        ones = np.ones(d) / np.sqrt(d)
        vecs = vecs - np.outer(ones, ones @ vecs)  # the principal directions of a centred stream, within 1⊥
        basis, _ = np.linalg.qr(np.column_stack([vecs[:, : k - 1], ones]))
        basis[:, -1] = ones  # qr may flip its sign
        h = _householder(np.ones(k) / np.sqrt(k), k)
        kept = basis @ h  # its columns sum to sqrt(k/d) * ones: the kept coordinates have zero mean
        rest = _complement(kept)
        return np.column_stack([kept, rest])

    def _rotate(self):
        done = set()
        for node in self.graph.nodes:
            for p in node.params:
                for axis in p.axes:
                    if (p.key, axis) in done or not self._on_stream(node, p, axis):
                        continue
                    done.add((p.key, axis))
                    value = self._value(p)
                    role = self.norm_params.get(p.key)
                    if role == "scale":  # elementwise: folded away (constant) or, where it could not be, its best diagonal
                        if not np.allclose(value, value.flat[0]):
                            self.values[p.key] = _rotated_diagonal(value, self.q, node.attrs.get("norm"))
                    else:  # writers W Q, readers Qᵀ R and a norm's offset β Q: the same contraction
                        self.values[p.key] = _contract(value, axis, self.q)


    # ---- 4. reshape every head (blocks whose head size is hidden_dim // heads) -------------------------
    def _param(self, node, name):
        return next((p for p in node.params if p.name.endswith("/" + name)), None)

    def _kept_read(self, read) -> np.ndarray:
        """A block's ``E [x̂, 1][x̂, 1]ᵀ`` in the kept, rotated coordinates (the last is the constant 1),
        damped."""
        k = self.keep
        basis = np.zeros((self.width + 1, k + 1))
        basis[:-1, :-1], basis[-1, -1] = self.q[:, :k], 1.0
        read = basis.T @ read @ basis / max(read[-1, -1], 1.0)
        return read + np.eye(k + 1) * 1e-3 * np.mean(np.diag(read)[:-1])

    def _reshape_heads(self, node, read) -> np.ndarray:
        """Make each head's dimensions ordered, most useful first, so that the plan can drop the last of
        them in every head (a narrower stream takes the same share of every head's size, not whole heads).

        Values and outputs: for the values ``V_g`` of a key/value head and the output rows ``O_h`` of
        its query heads, any invertible ``T`` gives ``(V T)(T⁻¹ O) = V O``; ``T`` whitens what the values
        read (``L``, the Cholesky factor of its second moment) and takes the singular directions of
        ``Lᵀ V O``. The value bias moves into the output bias first (attention weights sum to one).
        Queries and keys (no rotary embedding): ``(Q T)(K T⁻ᵀ)ᵀ = Q Kᵀ``, with ``T`` from the singular
        directions of ``Lᵀ Q Kᵀ L`` (biases as a last row of ``Q`` and ``K``, read by a constant 1).
        Rotary heads keep their query and key dimensions (:meth:`_choose_frequencies` picks the pairs).
        Returns the dimensions' scores (one shared order for every head of the block)."""
        names = node.attrs["attention"]
        k = self.keep
        wq, wk, wv, wo = (self._value(self._param(node, names[x] + "/kernel")) for x in "qkvo")
        bias = {x: self._param(node, names[x] + "/bias") for x in "qkvo"} if names["biases"] else {}
        bq, bk, bv, bo = (self._value(bias[x]) if bias.get(x) is not None else None for x in "qkvo")
        h, kv, hd = wq.shape[1], wk.shape[1], wq.shape[2]
        group = h // kv
        if bv is not None and bo is not None:  # softmax rows sum to one: b_v O reaches the output as a constant
            self.values[bias["o"].key] = bo + sum(bv[g] @ wo[g * group + j] for g in range(kv) for j in range(group))
            self.values[bias["v"].key] = bv = np.zeros_like(bv)
        lx = np.linalg.cholesky(read[:k, :k])
        for g in range(kv):  # values and outputs
            heads = range(g * group, (g + 1) * group)
            r = np.linalg.qr(lx.T @ wv[:k, g, :], mode="r")
            if not _invertible(r):  # a dead value dimension: this head keeps its order
                continue
            u = np.linalg.svd(r @ np.hstack([wo[j][:, :k] for j in heads]))[0]
            wv[:, g, :] = wv[:, g, :] @ np.linalg.solve(r, u)
            for j in heads:
                wo[j] = u.T @ r @ wo[j]
        if names["rope"]:
            return np.zeros(hd)  # the frequency pairs are chosen across all blocks
        la = np.linalg.cholesky(read) if bq is not None else lx
        for j in range(h):  # queries and keys (one key head a query head: no rotary embedding, no groups)
            aq = wq[:k, j, :] if bq is None else np.vstack([wq[:k, j, :], bq[j]])
            ak = wk[:k, j, :] if bk is None else np.vstack([wk[:k, j, :], bk[j]])
            rq, rk = np.linalg.qr(la.T @ aq, mode="r"), np.linalg.qr(la.T @ ak, mode="r")
            if not (_invertible(rq) and _invertible(rk)):
                continue
            u, sv, vt = np.linalg.svd(rq @ rk.T)
            tq, tk = np.linalg.solve(rq, u * np.sqrt(sv)), np.linalg.solve(rk, vt.T * np.sqrt(sv))
            wq[:, j, :], wk[:, j, :] = wq[:, j, :] @ tq, wk[:, j, :] @ tk
            if bq is not None:
                bq[j], bk[j] = bq[j] @ tq, bk[j] @ tk
        return (hd - np.arange(hd)) / hd

    def _choose_frequencies(self):
        """Rotary heads keep the frequency pairs ``f = 0, s, 2s, …`` (the only sets a narrower head can
        turn at the same frequencies), with the widest stride ``s``: the kept wavelengths still span
        the range the heads were trained with, from the fastest pair to the slowest that fits. On the
        benchmark's Llama (16 pairs, 8 kept) that is x10.1 of dense perplexity against x14.9 for the
        first 8 pairs, although the first 8 change the sampled attention outputs less. Then each head's
        strongest value directions move onto the dimensions kept."""
        rotary = [i for i, n in enumerate(self.blocks) if n.attrs["attention"]["rope"]]
        if not rotary:
            return
        names = self.blocks[rotary[0]].attrs["attention"]
        hd = self._value(self._param(self.blocks[rotary[0]], names["q"] + "/kernel")).shape[2]
        half, pairs = hd // 2, max(1, self.keep * hd // self.width // 2)
        stride = (half - 1) // (pairs - 1) if pairs > 1 else 1
        low = np.arange(pairs) * stride
        kept = np.concatenate([low, low + half])
        dropped = np.setdiff1d(np.arange(hd), kept)
        where = np.concatenate([kept, dropped])  # value component j goes to dimension where[j]
        scores = np.zeros(hd)
        scores[where] = (hd - np.arange(hd)) / hd
        for i in rotary:
            for x, axis in (("v", 2), ("o", 1)):  # dimension where[j] takes value component j
                p = self._param(self.blocks[i], names[x] + "/kernel")
                self.values[p.key] = np.take(self._value(p), np.argsort(where), axis=axis)
            self.head_scores[i] = scores


def head_blocks(graph) -> list:
    """The blocks whose heads the rotation reshapes: their head size follows the stream
    (``attrs["head_dim"]``) and they name their attention's projections (``attrs["attention"]``)."""
    return [n for n in graph.nodes if n.attrs.get("head_dim") and n.attrs.get("attention")]


def _invertible(r: np.ndarray) -> bool:
    """Whether the triangular ``r`` is safely invertible (no diagonal entry near zero)."""
    d = np.abs(np.diag(r))
    return bool(d.size) and d.min() > 1e-9 * d.max()


def _householder(v: np.ndarray, k: int) -> np.ndarray:
    """The reflection taking the unit vector ``v`` to the last axis (``k``×``k``)."""
    e = np.zeros(k)
    e[-1] = 1.0
    u = v - e
    if np.linalg.norm(u) < 1e-12:
        return np.eye(k)
    u /= np.linalg.norm(u)
    return np.eye(k) - 2.0 * np.outer(u, u)


def _complement(a: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the directions ``a``'s columns do not span."""
    d, k = a.shape
    if k == d:
        return np.zeros((d, 0))
    q, _ = np.linalg.qr(np.column_stack([a, np.random.default_rng(0).standard_normal((d, d - k))]))
    return q[:, k:]


def _rotated_diagonal(gamma: np.ndarray, q: np.ndarray, kind) -> np.ndarray:
    """The diagonal closest to ``Qᵀ diag(γ) Q`` (a scale that could not be folded away)."""
    g = 1.0 + gamma if kind == "rms1p" else gamma
    d = np.einsum("ij,i,ij->j", q, g, q)
    return d - 1.0 if kind == "rms1p" else d
