"""Random architectures for checking the pruner on models nobody wrote by hand.

A *recipe* is a small JSON-able dict that describes a model: an input (rank 1, 2 or 3 spatial axes,
or integer token ids), a list of ops, and a head. Hypothesis draws recipes (:func:`keras_recipes`,
:func:`torch_recipes`); :func:`build_keras` / :func:`build_torch` turn one into a model, and
:func:`check_keras` / :func:`check_onnx` prune it with a random criterion, ratio and ``round_to`` and
check what every pruned model must satisfy:

- the outputs keep their shapes, and the parameter count of the graph agrees with the framework's;
- the zero-channel oracle: a full-width copy with the removed channels zeroed where they are written
  gives the pruned model's outputs (where every op of the model is zero-preserving: a recipe that uses
  an op mapping 0 to something else, such as a sigmoid on a pruned stream, is checked for shapes only);
- the input model is unchanged.

Ops draw their inputs by index (modulo the tensors built so far), so a recipe always builds: an op
whose inputs do not fit (an add of tensors of different shapes) is skipped. Shrinking removes ops and
lowers widths, which gives short failing recipes. ``benchmarks/fuzz.py`` runs thousands. Needs
``hypothesis`` (the ``dev`` extra); the ONNX half needs ``torch``.

>>> from hypothesis import given, settings
>>> from spa_keras import fuzz
>>> @settings(max_examples=3, deadline=None, database=None)
... @given(fuzz.keras_cases())
... def test(case):
...     assert fuzz.check_keras(*case)["passed"]
>>> test()
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

CRITERIA = ["l1", "l2", "bn_scale", "lamp", "fpgm", "random"]
ZERO_PRESERVING = ["relu", "swish", "gelu", "tanh", "elu", "linear"]
NOT_ZERO_PRESERVING = ["sigmoid", "softplus"]

CONV_OPS = ["conv", "conv", "conv", "grouped", "depthwise", "separable", "transpose", "bn", "bn", "act", "add", "add",
            "concat", "concat", "se", "pool", "pad_crop", "upsample", "dropout", "nested", "shared", "ops", "strided",
            "norm", "slice", "dense", "multiply", "scale", "held"]
SEQ_OPS = ["lstm", "gru", "rnn", "bidirectional", "mha", "einsum"]


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------


def _op(names):
    return st.fixed_dictionaries({
        "op": st.sampled_from(names),
        "a": st.integers(0, 64),
        "b": st.integers(0, 64),
        "width": st.integers(2, 12),
        "k": st.sampled_from([1, 3]),
        "act": st.sampled_from(ZERO_PRESERVING + ZERO_PRESERVING + NOT_ZERO_PRESERVING[:1]),
        "variant": st.integers(0, 3),
    })


@st.composite
def keras_recipes(draw, max_ops: int = 8):
    """A recipe for a random Keras functional model (see the module docstring)."""
    rank = draw(st.sampled_from([1, 2, 2, 3]))
    tokens = rank == 1 and draw(st.booleans())
    size = {1: draw(st.integers(4, 8)), 2: draw(st.sampled_from([4, 6, 8])), 3: 4}[rank]
    names = CONV_OPS + (SEQ_OPS * 2 if rank == 1 else [])
    return {
        "rank": rank,
        "size": size,
        "cin": draw(st.integers(1, 4)),
        "tokens": tokens,
        "stem": draw(st.integers(2, 12)),
        "ops": draw(st.lists(_op(names), min_size=1, max_size=max_ops)),
        "head": draw(st.sampled_from(["gap_dense", "flatten_dense", "conv", "two", "raw"])),
    }


def settings_strategy():
    """Random pruning settings: criterion, ratio, ``round_to``, global or local."""
    return st.fixed_dictionaries({
        "criterion": st.sampled_from(CRITERIA),
        "ratio": st.sampled_from([0.0, 0.25, 0.4, 0.5, 0.5, 0.7, 0.9]),
        "round_to": st.sampled_from([1, 1, 2, 4]),
        "global_pruning": st.booleans(),
    })


def keras_cases(max_ops: int = 8):
    """``(recipe, settings)`` pairs for :func:`check_keras`."""
    return st.tuples(keras_recipes(max_ops), settings_strategy())


# --------------------------------------------------------------------------------------------------
# Keras models from recipes
# --------------------------------------------------------------------------------------------------


def _recent(a: int, n: int) -> int:
    """An op's main input: mostly the newest tensor, sometimes one of the two before (chains with
    branches); its second input (``b``) may be any tensor (skip connections)."""
    return max(0, n - 1 - [0, 0, 0, 1, 2][a % 5])


class _T:
    """A tensor built so far: the Keras tensor, its channels, its spatial size."""

    def __init__(self, t, c, s):
        self.t, self.c, self.s = t, int(c), int(s)


def build_keras(recipe):
    """The Keras model of a recipe, and whether every op in it is zero-preserving (where the oracle
    holds). Layer names are deterministic (``op3_conv``), so a failure names the op."""
    import keras
    from keras import layers as L

    rank, size, cin = recipe["rank"], recipe["size"], recipe["cin"]
    conv = {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}[rank]
    state = {"zero_preserving": True}
    if recipe.get("tokens"):
        inp = keras.Input((size,), dtype="int32", name="tokens")
        x = L.Embedding(12, max(cin, 2), name="embed")(inp)
        tensors = [_T(x, max(cin, 2), size)]
    else:
        inp = keras.Input((size,) * rank + (cin,), name="x")
        tensors = [_T(inp, cin, size)]
    if recipe.get("stem"):
        w = recipe["stem"]
        tensors.append(_T(conv(w, 3, padding="same", activation="relu", name="stem")(tensors[-1].t), w, size))
    counters = {"shared": None, "nested": None}

    def act(name):
        if name in NOT_ZERO_PRESERVING:
            state["zero_preserving"] = False
        return None if name == "linear" else name

    for i, op in enumerate(recipe["ops"]):
        name = f"op{i}_{op['op']}"
        a = tensors[_recent(op["a"], len(tensors))]
        b = tensors[op["b"] % len(tensors)]
        w, k, v = op["width"], op["k"], op["variant"]
        out = _build_op(op["op"], name, a, b, w, k, v, op["act"], act, tensors, rank, conv, counters, state)
        if out is not None:
            tensors.append(out)
    last = tensors[-1]
    head = recipe["head"]
    outputs = []
    if head == "raw" or (head == "two" and len(tensors) < 3):
        outputs = [last.t]
    elif head == "conv":
        outputs = [conv(2, 1, name="head")(last.t)]
    elif head == "two":
        other = tensors[-2] if tensors[-2].t is not inp else tensors[-1]
        outputs = [last.t, L.Dense(3, name="head2")(L.GlobalAveragePooling1D()(L.Reshape((-1, other.c))(other.t)))
                   if rank > 1 else L.Dense(3, name="head2")(L.GlobalAveragePooling1D()(other.t))]
    elif head == "flatten_dense":
        outputs = [L.Dense(3, name="head")(L.Flatten(name="flatten")(last.t))]
    else:
        gap = {1: L.GlobalAveragePooling1D, 2: L.GlobalAveragePooling2D, 3: L.GlobalAveragePooling3D}[rank]
        outputs = [L.Dense(3, name="head")(gap(name="gap")(last.t))]
    if outputs[0] is inp:  # nothing was built: keep the model non-trivial
        outputs = [conv(2, 1, name="only")(inp)]
    model = keras.Model(inp, outputs if len(outputs) > 1 else outputs[0], name="fuzz")
    return model, state["zero_preserving"]


def _build_op(kind, name, a, b, w, k, v, act_name, act, tensors, rank, conv, counters, state):
    import keras
    from keras import layers as L

    R = {1: "1D", 2: "2D", 3: "3D"}[rank]
    same = [t for t in tensors if t.s == a.s and t.c == a.c and t is not a]
    if kind == "conv":
        return _T(conv(w, k, padding="same", activation=act(act_name), use_bias=v != 0, name=name)(a.t), w, a.s)
    if kind == "grouped":
        g = a.c if v % 2 == 0 else max(d for d in range(1, a.c + 1) if a.c % d == 0 and d <= 2)
        filters = g * max(1, w // g) if v % 2 else a.c * (1 + v // 2)  # grouped, or depthwise as a grouped conv
        if g == 1:
            return None
        return _T(conv(filters, k, padding="same", groups=g, activation=act(act_name), name=name)(a.t), filters, a.s)
    if kind == "depthwise":
        if rank == 3:
            return None
        m = 1 + v % 2
        layer = getattr(L, f"DepthwiseConv{R}")(k, padding="same", depth_multiplier=m, activation=act(act_name),
                                                name=name)
        return _T(layer(a.t), a.c * m, a.s)
    if kind == "separable":
        if rank == 3:
            return None
        layer = getattr(L, f"SeparableConv{R}")(w, k, padding="same", depth_multiplier=1 + v % 2, name=name)
        return _T(layer(a.t), w, a.s)
    if kind == "transpose":
        layer = getattr(L, f"Conv{R}Transpose")(w, k, padding="same", name=name)
        return _T(layer(a.t), w, a.s)
    if kind == "bn":
        return _T(L.BatchNormalization(name=name)(a.t), a.c, a.s)
    if kind == "act":
        if v == 0:
            return _T(L.ReLU(name=name)(a.t), a.c, a.s)
        if v == 1:
            return _T(L.PReLU(name=name)(a.t), a.c, a.s)
        if v == 2:
            return _T(L.LeakyReLU(0.1, name=name)(a.t), a.c, a.s)
        return _T(L.Activation(act(act_name) or "linear", name=name)(a.t), a.c, a.s)
    if kind == "add":
        if not same:
            return None
        others = [o.t for o in same[: 1 + v % 2]]
        if v == 3:
            return _T(keras.ops.add(a.t, others[0]), a.c, a.s)  # a non-Layer op
        cls = [L.Add, L.Add, L.Maximum, L.Subtract][v]
        return _T(cls(name=name)([a.t] + (others if cls is L.Add else others[:1])), a.c, a.s)
    if kind == "concat":
        peers = [t for t in tensors if t.s == a.s and t is not a]
        if not peers:
            return None
        chosen = [a] + [peers[(b.c + j) % len(peers)] for j in range(1 + v % 2)]
        if v == 3:
            t = keras.ops.concatenate([c.t for c in chosen], axis=-1)
        else:
            t = L.Concatenate(name=name)([c.t for c in chosen])
        return _T(t, sum(c.c for c in chosen), a.s)
    if kind == "se":
        gap = getattr(L, f"GlobalAveragePooling{R}")(keepdims=True, name=f"{name}_squeeze")(a.t)
        s = L.Dense(max(1, w // 2), activation="relu", name=f"{name}_reduce")(gap)
        s = L.Dense(a.c, activation="sigmoid", name=f"{name}_expand")(s)
        t = L.Multiply(name=name)([a.t, s]) if v % 2 == 0 else a.t * s
        return _T(t, a.c, a.s)
    if kind == "pool":
        if a.s < 4 or a.s % 2:
            return None
        cls = getattr(L, f"{'Max' if v % 2 == 0 else 'Average'}Pooling{R}")
        return _T(cls(2, name=name)(a.t), a.c, a.s // 2)
    if kind == "pad_crop":
        t = getattr(L, f"ZeroPadding{R}")(1, name=f"{name}_pad")(a.t)
        return _T(getattr(L, f"Cropping{R}")(1, name=name)(t), a.c, a.s)
    if kind == "upsample":
        if a.s > 4 or rank == 3:
            return None
        return _T(getattr(L, f"UpSampling{R}")(2, name=name)(a.t), a.c, a.s * 2)
    if kind == "dropout":
        layer = L.Dropout(0.3, name=name) if v % 2 == 0 else getattr(L, f"SpatialDropout{R}")(0.3, name=name)
        return _T(layer(a.t), a.c, a.s)
    if kind == "nested":
        shape = (a.s,) * rank + (a.c,)
        if v % 2 == 0:
            x = keras.Input(shape)
            y = conv(w, k, padding="same", name=f"{name}_conv")(x)
            y = L.BatchNormalization(name=f"{name}_bn")(y)
            inner = keras.Model(x, L.ReLU(name=f"{name}_relu")(y), name=name)
        else:
            inner = keras.Sequential([keras.Input(shape), conv(w, k, padding="same", name=f"{name}_conv"),
                                      L.ReLU(name=f"{name}_relu")], name=name)
        t = inner(a.t)
        if v >= 2 and same:  # the same nested model called twice
            t2 = inner(same[0].t)
            return _T(L.Add(name=f"{name}_sum")([t, t2]), w, a.s)
        return _T(t, w, a.s)
    if kind == "shared":
        layer = conv(w, k, padding="same", activation=act(act_name), name=name)
        t = layer(a.t)
        peers = [p for p in tensors if p.c == a.c and p is not a]
        if peers:
            p = peers[b.c % len(peers)]
            t2 = layer(p.t)
            if p.s == a.s:
                return _T(L.Add(name=f"{name}_sum")([t, t2]), w, a.s)
            tensors.append(_T(t2, w, p.s))
        return _T(t, w, a.s)
    if kind == "strided":
        if a.s < 4:
            return None
        if v < 2:  # stride 2, "same" or "valid"
            pad = "same" if v == 0 else "valid"
            out_s = (a.s + 1) // 2 if pad == "same" else (a.s - k) // 2 + 1
            return _T(conv(w, k, strides=2, padding=pad, name=name)(a.t), w, out_s)
        if v == 2:  # dilated
            return _T(conv(w, 3, dilation_rate=2, padding="same", name=name)(a.t), w, a.s)
        return _T(conv(w, 3, padding="valid", name=name)(a.t), w, a.s - 2)
    if kind == "norm":  # normalisations across channels are held fixed; the stream around them must stay whole
        layer = [L.LayerNormalization(name=name), L.UnitNormalization(name=name),
                 L.GroupNormalization(groups=1, name=name), L.BatchNormalization(center=False, name=name)][v]
        return _T(layer(a.t), a.c, a.s)
    if kind == "slice":
        if a.s < 3:
            return None
        key = (slice(None),) + (slice(1, None),) * rank
        return _T(a.t[key], a.c, a.s - 1)
    if kind == "dense":  # a Dense layer acts on the channel axis of any rank
        return _T(L.Dense(w, activation=act(act_name), name=name)(a.t), w, a.s)
    if kind == "multiply":
        if not same:
            return None
        cls = [L.Multiply, L.Multiply, L.Average, L.Minimum][v]
        return _T(cls(name=name)([a.t, same[0].t]), a.c, a.s)
    if kind == "scale":
        if v == 0:
            return _T(L.Rescaling(0.5, name=name)(a.t), a.c, a.s)
        if v == 1:
            return _T(L.PReLU(shared_axes=list(range(1, rank + 1)), name=name)(a.t), a.c, a.s)
        if v == 2:
            return _T(L.GaussianNoise(0.1, name=name)(a.t), a.c, a.s)
        return _T(L.Identity(name=name)(a.t), a.c, a.s)
    if kind == "held":  # ops that read across channels: their streams are held fixed, never guessed
        if v == 0:
            return _T(a.t[..., : max(1, a.c // 2)], max(1, a.c // 2), a.s)
        if v == 1:
            return _T(keras.ops.mean(a.t, axis=-1, keepdims=True), 1, a.s)
        if v == 2:
            return _T(L.Softmax(name=name)(a.t), a.c, a.s)
        if rank == 1 and same:  # concatenation along the steps: a merge, not a concat of channels
            return _T(L.Concatenate(axis=1, name=name)([a.t, same[0].t]), a.c, 2 * a.s)
        return None
    if kind == "ops":
        fn = [keras.ops.relu, keras.ops.silu, keras.ops.abs, lambda x: keras.ops.clip(x, -1.0, 1.0)][v]
        return _T(fn(a.t), a.c, a.s)
    # sequence ops (rank 1: (steps, channels))
    if kind in ("lstm", "gru", "rnn"):
        cls = {"lstm": L.LSTM, "gru": L.GRU, "rnn": L.SimpleRNN}[kind]
        opts = {"reset_after": v % 2 == 0} if kind == "gru" else {}
        return _T(cls(w, return_sequences=True, name=name, **opts)(a.t), w, a.s)
    if kind == "bidirectional":
        inner = (L.LSTM if v % 2 == 0 else L.GRU)(w, return_sequences=True)
        return _T(L.Bidirectional(inner, name=name)(a.t), 2 * w, a.s)
    if kind == "mha":
        heads = 1 + v % 2
        return _T(L.MultiHeadAttention(heads, w, name=name)(a.t, a.t), a.c, a.s)
    if kind == "einsum":
        return _T(L.EinsumDense("abc,cd->abd", output_shape=(a.s, w), bias_axes="d", name=name)(a.t), w, a.s)
    raise ValueError(f"unknown op {kind!r}")


def check_keras(recipe, settings, seed: int = 0, policy: str | None = None) -> dict:
    """Build, prune and check one recipe. Returns ``{"passed", "oracle", ...}``; raises nothing for a
    failed check (``passed`` is False and ``error`` says why), so that callers can record it.
    ``policy``: a Keras dtype policy to build the model under (``"mixed_float16"``: the oracle's tolerance
    becomes 1e-2, float16's three significant digits); the global policy is restored afterwards."""
    import keras

    if policy is not None:
        old = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(policy)
        try:
            return _check_keras(recipe, settings, seed, 1e-2 if "16" in policy else 1e-3)
        finally:
            keras.mixed_precision.set_global_policy(old)
    return _check_keras(recipe, settings, seed, 1e-3)


def _check_keras(recipe, settings, seed, rtol) -> dict:
    import keras

    import spa_keras as spa
    from .backends.keras import verify
    from .frontends.keras import from_keras
    from .metrics import count_params
    from .testing import perturb_statistics, random_inputs, weights_hash

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model, zero_preserving = build_keras(recipe)
    perturb_statistics(model, seed)
    before = weights_hash(model)
    result = {"passed": False, "oracle": zero_preserving, "error": None}
    plan = _plan(spa, from_keras(model), settings)
    if plan is None:
        return {**result, "passed": True, "refused": True}
    slim = spa.apply(plan)
    x = random_inputs(model, seed=seed)
    ref = keras.tree.flatten(model(x, training=False))
    got = keras.tree.flatten(slim(x, training=False))
    result["removed"] = int(plan.n_removed)
    if [tuple(a.shape) for a in ref] != [tuple(b.shape) for b in got]:
        return {**result, "error": "output shapes changed"}
    if slim.count_params() != count_params(plan.source.graph, plan):
        want = count_params(plan.source.graph, plan)
        return {**result, "error": f"parameter count {slim.count_params()} != graph's {want}"}
    if settings.get("ratio", 0) == 0 and plan.n_removed == 0:
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(ref, got))
        if diff > 1e-4 * max(1.0, max(float(np.max(np.abs(np.asarray(a)))) for a in ref)):
            return {**result, "error": f"ratio 0 changed the outputs by {diff}"}
    if zero_preserving:
        v = verify(plan.source, plan, slim, x, rtol=rtol)
        if not v["passed"]:
            return {**result, "error": f"oracle: max abs diff {v['max_abs_diff']:.3g} at scale {v['scale']:.3g}"}
    if weights_hash(model) != before:
        return {**result, "error": "the input model was changed"}
    result["passed"] = True
    return result


# --------------------------------------------------------------------------------------------------
# PyTorch modules through ONNX
# --------------------------------------------------------------------------------------------------

TORCH_OPS = ["conv", "conv", "conv", "grouped", "depthwise", "bn", "relu", "add", "add", "concat", "se", "pool",
             "linear_tokens"]


@st.composite
def torch_recipes(draw, max_ops: int = 7):
    """A recipe for a random PyTorch module (2-D, NCHW) exported to ONNX."""
    return {
        "size": draw(st.sampled_from([4, 6, 8])),
        "cin": draw(st.integers(1, 4)),
        "stem": draw(st.integers(2, 12)),
        "ops": draw(st.lists(_op(TORCH_OPS), min_size=1, max_size=max_ops)),
        "head": draw(st.sampled_from(["gap_linear", "flatten_linear", "conv", "raw"])),
    }


def onnx_cases(max_ops: int = 7):
    """``(recipe, settings)`` pairs for :func:`check_onnx`."""
    return st.tuples(torch_recipes(max_ops), settings_strategy())


def build_torch(recipe):
    """A ``torch.nn.Module`` for a recipe (``eval()`` mode) and its input shape; ops whose inputs do not
    fit are skipped, as in :func:`build_keras`."""
    import torch
    from torch import nn

    size, cin = recipe["size"], recipe["cin"]
    shapes = [(cin, size)]  # (channels, spatial) per tensor
    program = []  # (kind, module name or None, input indices)
    mods = nn.ModuleDict()
    if recipe.get("stem"):
        mods["stem"] = nn.Conv2d(cin, recipe["stem"], 3, padding=1)
        program.append(("mod", "stem", [0])); shapes.append((recipe["stem"], size))  # noqa: E702
    for i, op in enumerate(recipe["ops"]):
        n = len(shapes)
        ia, ib = _recent(op["a"], n), op["b"] % n
        (ca, sa), w, k, v = shapes[ia], op["width"], op["k"], op["variant"]
        name = f"op{i}"
        kind = op["op"]
        if kind == "conv":
            mods[name] = nn.Conv2d(ca, w, k, padding=k // 2, bias=v != 0)
            program.append(("mod", name, [ia])); shapes.append((w, sa))  # noqa: E702
        elif kind in ("grouped", "depthwise"):
            g = ca if kind == "depthwise" else (2 if ca % 2 == 0 else 0)
            if not g:
                continue
            out = ca * (1 + v % 2) if kind == "depthwise" else g * max(1, w // g)
            mods[name] = nn.Conv2d(ca, out, k, padding=k // 2, groups=g)
            program.append(("mod", name, [ia])); shapes.append((out, sa))  # noqa: E702
        elif kind == "bn":
            mods[name] = nn.BatchNorm2d(ca)
            program.append(("mod", name, [ia])); shapes.append((ca, sa))  # noqa: E702
        elif kind == "relu":
            program.append(("relu", None, [ia])); shapes.append((ca, sa))  # noqa: E702
        elif kind == "add":
            if shapes[ib] != (ca, sa) or ib == ia:
                continue
            program.append(("add", None, [ia, ib])); shapes.append((ca, sa))  # noqa: E702
        elif kind == "concat":
            if shapes[ib][1] != sa:
                continue
            program.append(("cat", None, [ia, ib])); shapes.append((ca + shapes[ib][0], sa))  # noqa: E702
        elif kind == "se":
            mods[name] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(ca, max(1, w // 2), 1), nn.ReLU(),
                                       nn.Conv2d(max(1, w // 2), ca, 1), nn.Sigmoid())
            program.append(("se", name, [ia])); shapes.append((ca, sa))  # noqa: E702
        elif kind == "pool":
            if sa < 4 or sa % 2:
                continue
            mods[name] = nn.MaxPool2d(2) if v % 2 == 0 else nn.AvgPool2d(2)
            program.append(("mod", name, [ia])); shapes.append((ca, sa // 2))  # noqa: E702
        elif kind == "linear_tokens":  # channels as the last axis of tokens: permute, Linear, permute back
            mods[name] = nn.Linear(ca, w)
            program.append(("tokens", name, [ia])); shapes.append((w, sa))  # noqa: E702
    c, s = shapes[-1]
    head = recipe["head"]
    if head == "gap_linear":
        mods["head"] = nn.Linear(c, 3)
    elif head == "flatten_linear":
        mods["head"] = nn.Linear(c * s * s, 3)
    elif head == "conv":
        mods["head"] = nn.Conv2d(c, 2, 1)

    class Fuzz(nn.Module):
        def __init__(self):
            super().__init__()
            self.mods = mods

        def forward(self, x):
            ts = [x]
            for kind, name, idx in program:
                a = ts[idx[0]]
                if kind == "mod":
                    y = self.mods[name](a)
                elif kind == "relu":
                    y = torch.relu(a)
                elif kind == "add":
                    y = a + ts[idx[1]]
                elif kind == "cat":
                    y = torch.cat([a, ts[idx[1]]], 1)
                elif kind == "se":
                    y = a * self.mods[name](a)
                else:
                    y = self.mods[name](a.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                ts.append(y)
            y = ts[-1]
            if head == "gap_linear":
                return self.mods["head"](y.mean(dim=(2, 3)))
            if head == "flatten_linear":
                return self.mods["head"](torch.flatten(y, 1))
            if head == "conv":
                return self.mods["head"](y)
            return y

    module = Fuzz().eval()
    for m in module.modules():  # non-trivial statistics, so that slicing them is checked
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 1.0)
                m.bias.uniform_(-0.2, 0.2)
    return module, (1, cin, size, size)


def torch_to_onnx(module, shape):
    """Export with the TorchScript exporter (no onnxscript needed) to an ``onnx.ModelProto``."""
    import io

    import onnx
    import torch

    f = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, (torch.randn(*shape),), f, dynamo=False, input_names=["x"], output_names=["y"],
                          opset_version=17)
    return onnx.load_from_string(f.getvalue())


def _plan(spa, model, settings):
    """The plan, or None when ``bn_scale`` is refused for a model without a BatchNorm scale to read
    (the documented answer: an error that says so, never a silent empty plan)."""
    try:
        return spa.plan(model, **settings)
    except spa.InvalidArgumentError as e:
        if settings.get("criterion") == "bn_scale" and "no such scale" in str(e):
            return None
        raise


def check_onnx(recipe, settings, seed: int = 0) -> dict:
    """Export a recipe's PyTorch module to ONNX, prune it, and check it in onnxruntime (shapes, the
    oracle, the input model unchanged). Returns ``{"passed", "error", ...}``."""
    import onnx
    import torch

    import spa_keras as spa
    from .backends.onnx import run_onnx, verify_onnx
    from .frontends.onnx import from_onnx_model

    torch.manual_seed(seed)
    module, shape = build_torch(recipe)
    model = torch_to_onnx(module, shape)
    before = model.SerializeToString()
    og = from_onnx_model(model)
    plan = _plan(spa, og, settings)
    if plan is None:
        return {"passed": True, "oracle": True, "error": None, "removed": 0, "refused": True}
    slim = spa.apply(plan)
    onnx.checker.check_model(slim)
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    result = {"passed": False, "oracle": True, "error": None, "removed": int(plan.n_removed)}
    if [o.shape for o in run_onnx(slim, x)] != [o.shape for o in run_onnx(model, x)]:
        return {**result, "error": "output shapes changed"}
    v = verify_onnx(og, plan, slim, x)
    if not v["passed"]:
        return {**result, "error": f"oracle: max abs diff {v['max_abs_diff']:.3g} at scale {v['scale']:.3g}"}
    if model.SerializeToString() != before:
        return {**result, "error": "the input model was changed"}
    result["passed"] = True
    return result
