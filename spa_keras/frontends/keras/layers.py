"""Registry entries for Keras' own layers (and the layers ``keras.applications`` defines without
exporting them)."""

from __future__ import annotations

import keras
import numpy as np

from ...graph import BIAS, IN, OUT, STAT, WEIGHT, AxisRef
from ..spec import Spec, fixed, reshape_rule
from .registry import Call, _channels_first, _set_last, _spatial, identity, register

L = keras.layers

# ---- producers -----------------------------------------------------------------------------------


CHANNELS_FIRST = "channels_first layout is not supported; use channels_last"


def _resize_filters(cfg, w):
    cfg["filters"] = w(OUT)


def _geometry(layer):
    """``(rank, kernel offsets)`` of a convolution."""
    return len(layer.kernel_size), int(np.prod(layer.kernel_size))


def _bias_out():
    return {"bias": ({0: OUT}, BIAS)}


@register(L.Conv1D, L.Conv2D, L.Conv3D)
def _conv(call: Call) -> Spec:
    layer = call.layer
    if _channels_first(layer):
        return fixed(CHANNELS_FIRST)
    rank, ks = _geometry(layer)
    cin, cout = call.in_shapes[0][-1], layer.filters
    g = int(getattr(layer, "groups", 1) or 1)
    if g > 1 and g == cin:  # depthwise written as a grouped conv: input c feeds outputs c*m..c*m+m-1

        def resize(cfg, w):
            cfg["filters"] = w(OUT)
            cfg["groups"] = w(IN)

        return Spec("depthwise", {"kernel": ({rank + 1: OUT}, WEIGHT), **_bias_out()}, {"multiplier": cout // cin},
                    [(call.out_spatial * ks, [OUT])], resize)
    k_in_ref = AxisRef("in", 0, block=True) if g > 1 else IN
    return Spec("linear", {"kernel": ({rank: k_in_ref, rank + 1: OUT}, WEIGHT), **_bias_out()}, {"groups": g},
                [(call.out_spatial * ks / g, [IN, OUT])], _resize_filters)


@register(L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
def _conv_transpose(call: Call) -> Spec:
    if _channels_first(call.layer):
        return fixed(CHANNELS_FIRST)
    rank, ks = _geometry(call.layer)
    return Spec("linear", {"kernel": ({rank: OUT, rank + 1: IN}, WEIGHT), **_bias_out()}, {},
                [(call.in_spatial * ks, [IN, OUT])], _resize_filters)


@register(L.DepthwiseConv1D, L.DepthwiseConv2D)
def _depthwise(call: Call) -> Spec:
    if _channels_first(call.layer):
        return fixed(CHANNELS_FIRST)
    rank, ks = _geometry(call.layer)
    return Spec("depthwise", {"kernel": ({rank: IN}, WEIGHT), **_bias_out()},
                {"multiplier": int(call.layer.depth_multiplier)}, [(call.out_spatial * ks, [OUT])])


@register(L.SeparableConv1D, L.SeparableConv2D)
def _separable(call: Call) -> Spec:
    if _channels_first(call.layer):
        return fixed(CHANNELS_FIRST)
    rank, ks = _geometry(call.layer)
    m = int(call.layer.depth_multiplier)
    params = {"depthwise_kernel": ({rank: IN}, WEIGHT),
              "pointwise_kernel": ({rank: AxisRef("in", 0, repeat=m), rank + 1: OUT}, WEIGHT), **_bias_out()}
    return Spec("linear", params, {}, [(call.out_spatial * ks * m, [IN]), (call.out_spatial * m, [IN, OUT])],
                _resize_filters)


@register(L.Dense)
def _dense(call: Call) -> Spec:
    def resize(cfg, w):
        cfg["units"] = w(OUT)

    return Spec(
        "linear",
        {"kernel": ({0: IN, 1: OUT}, WEIGHT), "bias": ({0: OUT}, BIAS)},
        {},
        [(call.out_spatial, [IN, OUT])],
        resize,
    )


def _einsum_terms(equation: str):
    lhs, out = equation.split("->")
    inp, ker = lhs.split(",")
    return inp, ker, out


@register(L.EinsumDense)
def _einsum_dense(call: Call) -> Spec:
    layer = call.layer
    inp, ker, out = _einsum_terms(layer.equation)
    kshape = tuple(layer.kernel.shape)
    reduced = [d for c, d in zip(ker, kshape) if c not in out]
    total = _spatial(call.out_shapes[0] + (1,)) * int(np.prod(reduced or [1]))
    a, b = inp[-1], out[-1]
    dense_like = (
        "." not in ker and a in ker and a not in out and b in ker and b not in inp and ker.count(a) == 1
    )
    if not dense_like:
        return fixed(f"EinsumDense equation {layer.equation!r} does not act on the last axis alone", total)
    cin, cout = call.in_shapes[0][-1], call.out_shapes[0][-1]
    params = {"kernel": ({ker.index(a): IN, ker.index(b): OUT}, WEIGHT)}
    bias_axes = layer.bias_axes or ""
    if bias_axes:
        params["bias"] = ({len(layer.bias.shape) - 1: OUT}, BIAS) if b in bias_axes else ({}, BIAS)

    def resize(cfg, w):
        shape = cfg["output_shape"]
        cfg["output_shape"] = w(OUT) if isinstance(shape, int) else _set_last(shape, w(OUT))

    return Spec("linear", params, {}, [(total / (cin * cout), [IN, OUT])], resize)


@register(L.Embedding)
def _embedding(call: Call) -> Spec:
    def resize(cfg, w):
        cfg["output_dim"] = w(OUT)

    return Spec("linear", {"embeddings": ({1: OUT}, WEIGHT)}, {}, [], resize)


if hasattr(L, "ReversibleEmbedding"):

    @register(L.ReversibleEmbedding)
    def _reversible_embedding(call: Call) -> Spec:
        """An embedding that keras_hub also calls with ``reverse=True`` as the output head: the stream's
        channels are then read, by the same matrix (tied) or by ``reverse_embeddings`` ``(D, V)``."""
        layer = call.layer
        reverse = bool(call.argument(1, "reverse"))
        tied = bool(getattr(layer, "tie_weights", True))
        if not reverse:
            spec = _embedding(call)
            if not tied:  # read only by the reverse call, sliced like the stream it reads
                spec.params["reverse_embeddings"] = ({0: OUT}, STAT)
            return spec
        params = {"embeddings": ({1: IN}, WEIGHT)} if tied else {"reverse_embeddings": ({0: IN}, WEIGHT)}
        return Spec("linear", params, {}, [(call.in_spatial, [IN, OUT])])


# ---- channel-wise ops ----------------------------------------------------------------------------



@register(L.BatchNormalization)
def _batchnorm(call: Call) -> Spec:
    layer = call.layer
    rank = len(call.in_shapes[0]) + 1
    if layer.axis not in (-1, rank - 1):
        return fixed(f"BatchNormalization on axis {layer.axis}, not the channel axis")
    return Spec(
        "identity",
        {
            "gamma": ({0: OUT}, WEIGHT, "norm_scale"),
            "beta": ({0: OUT}, BIAS),
            "moving_mean": ({0: OUT}, BIAS),
            "moving_variance": ({0: OUT}, STAT),
        },
    )


@register(L.LayerNormalization, L.GroupNormalization, L.UnitNormalization)
def _norm_across_channels(call: Call) -> Spec:
    layer = call.layer
    rank = len(call.in_shapes[0]) + 1
    axes = getattr(layer, "axis", None)
    axes = list(axes) if isinstance(axes, (list, tuple)) else [axes]
    if (
        call.options.get("residual_stream", "hold") != "hold"
        and isinstance(layer, L.LayerNormalization)
        and [a % rank for a in axes] == [rank - 1]
    ):
        params = {"gamma": ({0: OUT}, WEIGHT, "norm_scale"), "beta": ({0: OUT}, BIAS)}
        width = int(call.in_shapes[0][-1])

        def resize(cfg, w):  # the mean square over D' channels is D/D' times larger: so is epsilon
            cfg["epsilon"] = cfg["epsilon"] * width / max(w(OUT), 1)

        def transform(name, value, w):  # and the scale grows by sqrt(D/D') (exact on a centred stream)
            return value * np.sqrt(width / max(w(OUT), 1)).astype(value.dtype) if name == "gamma" else value

        return Spec("identity", params, {"stream": "pass", "norm": "layer"}, resize=resize, transform=transform)
    return fixed(
        f"{type(call.layer).__name__} normalises across channels: removing one changes the others "
        "(its stream is held fixed; residual_stream='slice' prunes LayerNorm streams approximately, 'rotate' "
        "exactly up to the directions it drops)"
    )


@register(L.Normalization)
def _normalization(call: Call) -> Spec:
    cfg = call.layer.get_config()
    axis = cfg.get("axis")
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if cfg.get("mean") is not None or cfg.get("invert") or axis not in (-1, len(call.in_shapes[0])):
        return fixed("Normalization with statistics in its config or on another axis")
    return Spec("identity", {"mean": ({0: OUT}, BIAS), "variance": ({0: OUT}, STAT)})


@register(L.Rescaling)
def _rescaling(call: Call) -> Spec:
    cfg = call.layer.get_config()
    if any(np.ndim(cfg.get(k, 0)) > 0 and np.size(cfg.get(k)) > 1 for k in ("scale", "offset")):
        return fixed("Rescaling with a per-channel scale or offset")
    return identity()


@register(L.Activation)
def _activation(call: Call) -> Spec:
    name = keras.activations.serialize(call.layer.activation)
    name = name if isinstance(name, str) else str(name.get("config", name))
    if "softmax" in name:
        return fixed("softmax mixes channels")
    return identity()


@register(L.Softmax)
def _softmax(call: Call) -> Spec:
    axis = call.layer.axis
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    rank = len(call.in_shapes[0]) + 1
    if any(a in (-1, rank - 1) for a in axes):
        return fixed("softmax mixes channels")
    return identity()


@register(L.PReLU)
def _prelu(call: Call) -> Spec:
    nd = len(call.layer.alpha.shape)
    return Spec("identity", {"alpha": ({nd - 1: OUT}, BIAS)})


@register(L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D)
def _dropout(call: Call) -> Spec:
    def resize(cfg, w):
        ns = cfg.get("noise_shape")
        if ns is not None and ns[-1] not in (None, 1):
            cfg["noise_shape"] = _set_last(ns, w(OUT))

    return Spec("identity", resize=resize)


for _cls in (
    L.ReLU, L.LeakyReLU, L.ELU, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
    L.ActivityRegularization, L.Identity, L.Masking,
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
    L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
    L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
):  # fmt: skip

    def _channelwise(call: Call, _name=_cls.__name__) -> Spec:
        if _channels_first(call.layer):
            return fixed(CHANNELS_FIRST)
        return identity()

    register(_cls)(_channelwise)


@register(L.Flatten)
def _flatten(call: Call) -> Spec:
    if _channels_first(call.layer):
        return fixed("channels_first Flatten reorders features")
    return Spec("identity" if len(call.in_shapes[0]) == 1 else "flatten")


@register(L.Reshape)
def _reshape(call: Call) -> Spec:
    src, dst = tuple(call.in_shapes[0]), tuple(call.out_shapes[0])
    if not src or not dst or None in src or None in dst:
        return fixed("Reshape with unknown dimensions")
    rule = reshape_rule(src, dst, len(src) - 1)
    if rule == ("identity", len(dst) - 1):

        def keep_last(cfg, w):
            cfg["target_shape"] = _set_last(cfg["target_shape"], w(OUT))

        return Spec("identity", resize=keep_last)
    if rule == ("flatten", "tile"):

        def flat(cfg, w):
            cfg["target_shape"] = [w(OUT)]

        return Spec("flatten", resize=flat)
    return fixed(f"Reshape {src} -> {dst} moves the channel axis")


@register(L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
def _merge(call: Call) -> Spec:
    return Spec("merge")


@register(L.Concatenate)
def _concat(call: Call) -> Spec:
    rank = len(call.out_shapes[0]) + 1
    return Spec("concat" if call.layer.axis in (-1, rank - 1) else "merge")


def keep_query_scale(value: np.ndarray, size: int, new_size: int) -> np.ndarray:
    """A query projection's weights for an attention that divides its scores by ``sqrt(head size)``,
    when the head size shrinks from ``size`` to ``new_size``: times ``sqrt(new_size / size)``, so that
    the scores of the dimensions kept are what they were (Keras' ``MultiHeadAttention``, keras_hub's
    blocks)."""
    return value if new_size == size else value * np.sqrt(new_size / size).astype(value.dtype)


@register(L.MultiHeadAttention)
def _mha(call: Call) -> Spec:
    """Heads, key width and value width are units of their own; the output projection's width follows
    the query unless ``output_shape`` is set."""
    layer = call.layer
    cfg = layer.get_config()
    q_t, v_t = call.argument(0, "query"), call.argument(1, "value")
    k_t = call.argument(2, "key")
    k_t = v_t if k_t is None else k_t
    qi, vi, ki = call.input_index(q_t), call.input_index(v_t), call.input_index(k_t)
    h, dk = int(layer.num_heads), int(layer.key_dim)
    dv = int(layer.value_dim or dk)
    tq, tk = _spatial(call.in_shapes[qi]), _spatial(call.in_shapes[ki])
    out_shape = cfg.get("output_shape")
    if cfg.get("use_gate") or (out_shape is not None and np.ndim(out_shape) > 0 and len(out_shape) > 1):
        macs = tq * call.in_shapes[qi][-1] * h * dk + tk * h * (dk * call.in_shapes[ki][-1] + dv * call.in_shapes[vi][-1])
        return fixed("MultiHeadAttention with a gate or a multi-axis output_shape is kept whole", macs)
    n = len(call.out_shapes)
    Q, K, V = AxisRef("in", qi), AxisRef("in", ki), AxisRef("in", vi)
    H, DK, DV = AxisRef("out", n), AxisRef("out", n + 1), AxisRef("out", n + 2)

    def resize(c, w):
        c["num_heads"], c["key_dim"], c["value_dim"] = w(H), w(DK), w(DV)
        if out_shape is not None:
            c["output_shape"] = w(OUT)

    def transform(name, value, w):
        return keep_query_scale(value, dk, w(DK)) if name.startswith("query/") else value

    return Spec(
        "attention",
        {
            "query/kernel": ({0: Q, 1: H, 2: DK}, WEIGHT),
            "query/bias": ({0: H, 1: DK}, BIAS),
            "key/kernel": ({0: K, 1: H, 2: DK}, WEIGHT),
            "key/bias": ({0: H, 1: DK}, BIAS),
            "value/kernel": ({0: V, 1: H, 2: DV}, WEIGHT),
            "value/bias": ({0: H, 1: DV}, BIAS),
            "attention_output/kernel": ({0: H, 1: DV, 2: OUT}, WEIGHT),
            "attention_output/bias": ({0: OUT}, BIAS),
        },
        {"tied": out_shape is None, "query": qi},
        [(tq, [Q, H, DK]), (tk, [K, H, DK]), (tk, [V, H, DV]), (tq * tk, [H, DK]), (tq * tk, [H, DV]),
         (tq, [H, DV, OUT])],
        resize,
        hidden=[("heads", h), ("key_dim", dk), ("value_dim", dv)],
        transform=transform,
    )


_GATES = {L.LSTM: 4, L.GRU: 3, L.SimpleRNN: 1}


def _rnn_params(call: Call, cell_layer, n_out: int, in_ref=IN) -> tuple:
    g = _GATES[type(cell_layer)]
    units = AxisRef("out", n_out)
    gates = AxisRef("out", n_out, tile=g)
    bias_rank = 2 if isinstance(cell_layer, L.GRU) and cell_layer.reset_after else 1
    params = {
        "kernel": ({0: in_ref, 1: gates}, WEIGHT),
        "recurrent_kernel": ({0: units, 1: gates}, WEIGHT),
        "bias": ({bias_rank - 1: gates}, BIAS),
    }
    steps = call.in_shapes[0][0] or 1
    macs = [(steps * g, [in_ref, units]), (steps * g, [units, units])]
    return params, macs, units


@register(L.LSTM, L.GRU, L.SimpleRNN)
def _rnn(call: Call) -> Spec:
    layer = call.layer
    if type(layer) not in _GATES:
        return fixed(f"{type(layer).__name__} is a recurrent layer spa_keras does not know")
    n = len(call.out_shapes)
    params, macs, units = _rnn_params(call, layer, n)

    def resize(cfg, w):
        cfg["units"] = w(units)

    return Spec("recurrent", params, {"units": layer.units}, macs, resize, hidden=[("units", layer.units)])


@register(L.Bidirectional)
def _bidirectional(call: Call) -> Spec:
    layer = call.layer
    fwd, bwd = layer.forward_layer, layer.backward_layer
    if type(fwd) not in _GATES or type(bwd) is not type(fwd):
        return fixed("Bidirectional around a layer other than LSTM, GRU or SimpleRNN")
    n = len(call.out_shapes)
    params, macs, units = _rnn_params(call, fwd, n)

    def resize(cfg, w):
        for key in ("layer", "backward_layer"):
            if cfg.get(key):
                cfg[key]["config"]["units"] = w(units)

    return Spec(
        "recurrent",
        params,
        {"units": fwd.units, "concat": layer.merge_mode == "concat"},
        [(2 * c, refs) for c, refs in macs],
        resize,
        hidden=[("units", fwd.units)],
    )


@register(L.InputLayer)
def _input(call: Call) -> Spec:
    return Spec("input")


# layers that keras.applications defines without exporting them
register("LayerScale")(lambda call: Spec("identity", {"gamma": ({0: OUT}, WEIGHT, "norm_scale")}))
register("StochasticDepth")(identity)
register("CustomScaleLayer")(lambda call: Spec("merge"))

