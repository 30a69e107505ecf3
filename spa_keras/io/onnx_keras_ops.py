"""The conversions of ONNX op types into Keras layers and ``keras.ops`` (``fn(converter, node)``), one
per op type, registered with :func:`~.onnx_to_keras.converts` in the one ``CONVERTERS`` table. The
converter core (layouts, constants, element-wise ops, folding) is :mod:`.onnx_to_keras`.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import UnsupportedModelError
from ..frontends.onnx import attr
from .onnx_to_keras import NATIVE, NHWC, converts


@converts("Shape")
def op_Shape(cv, node):
    shape = cv.shapes.get(node.input[0])
    if shape is None or None in shape[1:]:
        raise UnsupportedModelError("Shape of a tensor with unknown dimensions cannot be converted")
    cv.consts[node.output[0]] = np.array([1 if shape[0] is None else shape[0]] + list(shape[1:]), np.int64)


@converts("Conv")
def op_Conv(cv, node):
    w = cv.const(node.input[1])
    if w.ndim != 4:
        raise UnsupportedModelError(f"only 2-D convolutions convert (node {node.output[0]!r})")
    b = cv.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    x = cv.nhwc(node.input[0])
    x, padding = _pads(cv, node, x, w.shape[2:], value=0.0)
    g = int(attr(node, "group", 1))
    o, ig, kh, kw = w.shape
    cin = ig * g
    common = dict(strides=tuple(attr(node, "strides", [1, 1])), padding=padding,
                  dilation_rate=tuple(attr(node, "dilations", [1, 1])), use_bias=b is not None,
                  name=cv.layer_name(node))
    if g > 1 and g == cin:
        m = o // cin
        layer = cv.L.DepthwiseConv2D((kh, kw), depth_multiplier=m, **common)
        weights = [w.reshape(cin, m, kh, kw).transpose(2, 3, 0, 1)]
    else:
        layer = cv.L.Conv2D(o, (kh, kw), groups=g, **common)
        weights = [w.transpose(2, 3, 1, 0)]
    y = layer(x)
    layer.set_weights(weights + ([b] if b is not None else []))
    cv.set(node.output[0], y, NHWC)


def _pads(cv, node, x, kernel, value, extra=(0, 0)):
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER",):
        return x, "same"
    if auto == "VALID":
        return x, "valid"
    if auto == "SAME_LOWER":
        raise UnsupportedModelError("auto_pad SAME_LOWER has no Keras equivalent")
    p = list(attr(node, "pads", [0, 0, 0, 0]))
    p[2] += extra[0]
    p[3] += extra[1]
    if any(p):
        (t, left, bot, right) = p
        if value == 0.0:
            x = cv.L.ZeroPadding2D(((t, bot), (left, right)))(x)
        else:
            x = cv.k.ops.pad(x, [[0, 0], [t, bot], [left, right], [0, 0]], constant_values=value)
    return x, "valid"


@converts("BatchNormalization")
def op_BatchNormalization(cv, node):
    s, b, m, v = (cv.const(n) for n in node.input[1:5])
    layer = cv.L.BatchNormalization(epsilon=float(attr(node, "epsilon", 1e-5)), name=cv.layer_name(node))
    x, layout = cv.t[node.input[0]]
    if len(x.shape) == 4:
        x, layout = cv.nhwc(node.input[0]), NHWC
    elif len(x.shape) != 2:
        raise UnsupportedModelError("BatchNormalization of a rank-3 tensor is not converted")
    y = layer(x)
    layer.set_weights([s, b, m, v])
    cv.set(node.output[0], y, layout)


def _pool(cv, node, cls, value):
    x = cv.nhwc(node.input[0])
    k = tuple(attr(node, "kernel_shape"))
    extra = (0, 0)
    if attr(node, "ceil_mode", 0):
        if node.op_type != "MaxPool":
            raise UnsupportedModelError(f"{node.op_type} with ceil_mode=1 is not converted")
        extra = _ceil_pads(cv, node, k)  # ceil mode = floor mode over -inf padding at the end
    if node.op_type == "AveragePool" and any(attr(node, "pads", [])) and not attr(node, "count_include_pad", 0):
        raise UnsupportedModelError("AveragePool with padding and count_include_pad=0 is not converted")
    x, padding = _pads(cv, node, x, k, value, extra)
    y = cls(k, strides=tuple(attr(node, "strides", k)), padding=padding, name=cv.layer_name(node))(x)
    cv.set(node.output[0], y, NHWC)


def _ceil_pads(cv, node, kernel):
    """Padding to add at the bottom and right so that floor mode gives ceil mode's output size."""
    src, dst = cv.shapes.get(node.input[0]), cv.shapes.get(node.output[0])
    if not src or not dst or None in src[2:] or None in dst[2:]:
        raise UnsupportedModelError(f"{node.op_type} with ceil_mode=1 on a tensor of unknown size is not converted")
    strides = list(attr(node, "strides", kernel))
    dil = list(attr(node, "dilations", [1] * len(kernel)))
    p = list(attr(node, "pads", [0] * 2 * len(kernel)))
    extra = []
    for i in range(2):
        need = (dst[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1
        extra.append(max(0, need - (src[2 + i] + p[i] + p[i + 2])))
    return tuple(extra)


@converts("MaxPool")
def op_MaxPool(cv, node):
    _pool(cv, node, cv.L.MaxPooling2D, -np.inf)


@converts("AveragePool")
def op_AveragePool(cv, node):
    _pool(cv, node, cv.L.AveragePooling2D, 0.0)


@converts("GlobalAveragePool")
def op_GlobalAveragePool(cv, node):
    y = cv.L.GlobalAveragePooling2D(keepdims=True, name=cv.layer_name(node))(cv.nhwc(node.input[0]))
    cv.set(node.output[0], y, NHWC)


@converts("GlobalMaxPool")
def op_GlobalMaxPool(cv, node):
    y = cv.L.GlobalMaxPooling2D(keepdims=True, name=cv.layer_name(node))(cv.nhwc(node.input[0]))
    cv.set(node.output[0], y, NHWC)


@converts("Flatten")
def op_Flatten(cv, node):
    if attr(node, "axis", 1) != 1:
        raise UnsupportedModelError("Flatten with axis != 1 is not converted")
    x = cv.native(node.input[0])
    y = cv.L.Flatten(name=cv.layer_name(node))(x) if len(x.shape) > 2 else x
    cv.set(node.output[0], y, NATIVE)


@converts("Gemm")
def op_Gemm(cv, node):
    w = cv.const(node.input[1])
    if attr(node, "transA", 0):
        raise UnsupportedModelError("Gemm with transA is not converted")
    if attr(node, "transB", 0):
        w = w.T
    w = w * float(attr(node, "alpha", 1.0))
    c = cv.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    layer = cv.L.Dense(w.shape[1], use_bias=c is not None, name=cv.layer_name(node))
    y = layer(cv.native(node.input[0]))
    bias = [np.broadcast_to(c * float(attr(node, "beta", 1.0)), (w.shape[1],)).astype(w.dtype)] if c is not None else []
    layer.set_weights([w] + bias)
    cv.set(node.output[0], y, NATIVE)


def _bias_add(cv, node, width):
    """The ``Add`` of a constant bias that alone consumes ``node``'s output (PyTorch's Linear on
    3-D inputs exports as MatMul + Add): fused into the Dense layer."""
    users = cv.consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None, None
    add = users[0]
    other = [x for x in add.input if x != node.output[0]]
    if len(other) != 1 or other[0] not in cv.consts or cv.consts[other[0]].shape != (width,):
        return None, None
    return add, cv.consts[other[0]]


@converts("MatMul")
def op_MatMul(cv, node):
    if node.input[1] in cv.consts and cv.consts[node.input[1]].ndim == 2:
        w = cv.consts[node.input[1]]
        add, bias = _bias_add(cv, node, w.shape[1])
        layer = cv.L.Dense(w.shape[1], use_bias=bias is not None, name=cv.layer_name(node))
        y = layer(cv.native(node.input[0]))
        layer.set_weights([w] + ([bias] if bias is not None else []))
        if add is not None:
            cv.skip.add(add.output[0])
            cv.set(add.output[0], y, NATIVE)
    else:
        y = cv.k.ops.matmul(cv.operand(node.input[0], NATIVE), cv.operand(node.input[1], NATIVE))
    cv.set(node.output[0], y, NATIVE)


@converts("Relu")
def op_Relu(cv, node):
    cv.unary(node, lambda x, n: cv.L.ReLU(name=n)(x))


@converts("Clip")
def op_Clip(cv, node):
    lo = cv.consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "min")
    hi = cv.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else attr(node, "max")
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    if lo == 0.0 and hi is not None:
        cv.unary(node, lambda x, n: cv.L.ReLU(max_value=hi, name=n)(x))
    else:
        cv.unary(node, lambda x, n: cv.k.ops.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi))


@converts("LeakyRelu")
def op_LeakyRelu(cv, node):
    a = float(attr(node, "alpha", 0.01))
    cv.unary(node, lambda x, n: cv.L.LeakyReLU(negative_slope=a, name=n)(x))


@converts("HardSigmoid")
def op_HardSigmoid(cv, node):
    a, b = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
    cv.unary(node, lambda x, n: cv.k.ops.clip(x * a + b, 0.0, 1.0))


@converts("HardSwish")
def op_HardSwish(cv, node):
    cv.unary(node, lambda x, n: cv.L.Activation("hard_silu", name=n)(x))


@converts("Gelu")
def op_Gelu(cv, node):
    approx = attr(node, "approximate", b"none")
    approx = (approx.decode() if isinstance(approx, bytes) else approx) == "tanh"
    cv.unary(node, lambda x, n: cv.k.ops.gelu(x, approximate=approx))


@converts("Softmax")
def op_Softmax(cv, node):
    axis = attr(node, "axis", -1) % cv.rank(node.input[0])
    x = cv.native(node.input[0])
    cv.set(node.output[0], cv.L.Softmax(axis=axis, name=cv.layer_name(node))(x), NATIVE)


@converts("Identity", "Dropout")
def op_Identity(cv, node):
    cv.t[node.output[0]] = cv.t[node.input[0]]


@converts("Cast")
def op_Cast(cv, node):
    to = onnx.helper.tensor_dtype_to_np_dtype(attr(node, "to"))
    cv.unary(node, lambda x, n: cv.k.ops.cast(x, str(to)))


@converts("Concat")
def op_Concat(cv, node):
    axis = attr(node, "axis") % cv.rank(node.output[0])
    layouts = {cv.t[x][1] for x in node.input if x not in cv.consts}
    if layouts == {NHWC} and axis == 1:
        y = cv.L.Concatenate(axis=-1, name=cv.layer_name(node))([cv.t[x][0] for x in node.input])
        cv.set(node.output[0], y, NHWC)
    else:
        y = cv.k.ops.concatenate([cv.operand(x, NATIVE) for x in node.input], axis=axis)
        cv.set(node.output[0], y, NATIVE)


@converts("Split")
def op_Split(cv, node):
    axis = attr(node, "axis", 0) % cv.rank(node.input[0])
    sizes = cv.consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "split")
    x, layout = cv.t[node.input[0]]
    k_axis = -1 if (layout == NHWC and axis == 1 and len(x.shape) == 4) else axis
    if k_axis == axis:
        x, layout = cv.native(node.input[0]), NATIVE
    n = len(node.output)
    indices = list(np.cumsum(sizes)[:-1]) if sizes is not None else n
    for o, y in zip(node.output, cv.k.ops.split(x, indices, axis=k_axis)):
        cv.set(o, y, layout)


@converts("Slice")
def op_Slice(cv, node):
    rank = cv.rank(node.input[0])
    starts, ends = (np.ravel(cv.const(n)) for n in node.input[1:3])
    axes = np.ravel(cv.const(node.input[3])) if len(node.input) > 3 and node.input[3] else range(len(starts))
    steps = np.ravel(cv.const(node.input[4])) if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    x, layout = cv.t[node.input[0]]
    nhwc = layout == NHWC and len(x.shape) == 4
    where = {1: 3, 2: 1, 3: 2} if nhwc else {}
    index = [slice(None)] * len(x.shape)
    big = 2**62
    for a, st, en, sp in zip(axes, starts, ends, steps):
        a = int(a) % rank
        if a == 0:
            continue  # the batch axis: PyTorch's exports never slice it
        st, en, sp = int(st), int(en), int(sp)
        index[where.get(a, a)] = slice(st, None if abs(en) >= big else en, sp)
    cv.set(node.output[0], x[tuple(index)], layout)


@converts("ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare")
def op_Reduce(cv, node):
    """Reductions other than the mean (Swin V2's cosine attention normalises q and k by ReduceL2)."""
    o = cv.k.ops
    axes = cv.axes_of(node)
    if axes is None and attr(node, "noop_with_empty_axes", 0):
        cv.t[node.output[0]] = cv.t[node.input[0]]
        return
    keep = bool(attr(node, "keepdims", 1))
    x = cv.native(node.input[0])
    axis = tuple(a % len(x.shape) for a in axes) if axes else None
    fn = {
        "ReduceSum": lambda v: o.sum(v, axis=axis, keepdims=keep),
        "ReduceMax": lambda v: o.max(v, axis=axis, keepdims=keep),
        "ReduceMin": lambda v: o.min(v, axis=axis, keepdims=keep),
        "ReduceProd": lambda v: o.prod(v, axis=axis, keepdims=keep),
        "ReduceL1": lambda v: o.sum(o.abs(v), axis=axis, keepdims=keep),
        "ReduceL2": lambda v: o.sqrt(o.sum(o.square(v), axis=axis, keepdims=keep)),
        "ReduceSumSquare": lambda v: o.sum(o.square(v), axis=axis, keepdims=keep),
    }[node.op_type]
    cv.set(node.output[0], fn(x), NATIVE)


@converts("Expand")
def op_Expand(cv, node):
    target = list(cv.shapes.get(node.output[0]) or [])
    if not target or None in target[1:]:
        raise UnsupportedModelError("Expand to a shape of unknown size is not converted")
    x = cv.native(node.input[0])
    if x.shape[0] is None:  # the batch stays as it comes
        target[0] = 1 if len(x.shape) == len(target) else target[0]
        y = x * cv.k.ops.ones(tuple(target), dtype=x.dtype)
    else:
        y = cv.k.ops.broadcast_to(x, tuple(target))
    cv.set(node.output[0], y, NATIVE)


@converts("Where")
def op_Where(cv, node):
    c, a, b = (cv.operand(x, NATIVE) for x in node.input)
    cv.set(node.output[0], cv.k.ops.where(c, a, b), NATIVE)


@converts("Equal")
def op_Equal(cv, node):
    a, b = (cv.operand(x, NATIVE) for x in node.input)
    cv.set(node.output[0], cv.k.ops.equal(a, b), NATIVE)


@converts("Tile")
def op_Tile(cv, node):
    reps = [int(r) for r in cv.const(node.input[1])]
    cv.set(node.output[0], cv.k.ops.tile(cv.native(node.input[0]), reps), NATIVE)


@converts("Einsum")
def op_Einsum(cv, node):
    eq = attr(node, "equation")
    eq = (eq.decode() if isinstance(eq, bytes) else str(eq)).replace(" ", "")
    upper = sorted({ch for ch in eq if ch.isupper()})  # Keras' einsum reads lower-case letters only
    free = [ch for ch in "abcdefghijklmnopqrstuvwxyz" if ch not in eq]
    eq = eq.translate(str.maketrans(dict(zip(upper, free))))
    args = [cv.operand(x, NATIVE) for x in node.input]
    cv.set(node.output[0], cv.k.ops.einsum(eq, *args), NATIVE)


@converts("Pad")
def op_Pad(cv, node):
    mode = attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("constant", "reflect"):
        raise UnsupportedModelError(f"Pad mode {mode!r} is not converted")
    rank = cv.rank(node.input[0])
    pads = np.ravel(cv.const(node.input[1])) if len(node.input) > 1 and node.input[1] else np.ravel(attr(node, "pads"))
    value = float(np.ravel(cv.const(node.input[2]))[0]) if len(node.input) > 2 and node.input[2] else 0.0
    axes = [int(a) % rank for a in np.ravel(cv.const(node.input[3]))] if len(node.input) > 3 and node.input[3] \
        else list(range(rank))
    x, layout = cv.t[node.input[0]]
    where = {1: 3, 2: 1, 3: 2} if layout == NHWC and len(x.shape) == 4 else {}
    width = [[0, 0] for _ in range(len(x.shape))]
    n = len(axes)
    for i, a in enumerate(axes):
        width[where.get(a, a)] = [int(pads[i]), int(pads[i + n])]
    if not any(any(w) for w in width):
        cv.set(node.output[0], x, layout)
        return
    if width[0] != [0, 0]:
        raise UnsupportedModelError("Pad of the batch axis is not converted")
    y = cv.k.ops.pad(x, width, mode=mode, constant_values=value if mode == "constant" else None)
    cv.set(node.output[0], y, layout)


@converts("Reshape")
def op_Reshape(cv, node):
    shape = [int(s) for s in cv.const(node.input[1])]
    src = list(cv.shapes.get(node.input[0]) or [])
    target = list(cv.shapes.get(node.output[0]) or [])
    if not target or None in target[1:]:
        target = [d if s == 0 else s for s, d in zip(shape, src + [None] * len(shape))]
    x = cv.native(node.input[0])
    if x.shape[0] is None and src and target and src[0] == target[0]:
        y = cv.L.Reshape(tuple(target[1:]), name=cv.layer_name(node))(x)
    else:  # the batch axis moves (attention written by PyTorch): the exported batch size is kept
        y = cv.k.ops.reshape(x, tuple(-1 if d is None else d for d in target))
    cv.set(node.output[0], y, NATIVE)


@converts("Transpose")
def op_Transpose(cv, node):
    perm = list(attr(node, "perm"))
    x = cv.native(node.input[0])
    if perm[0] == 0:
        y = cv.L.Permute(tuple(p for p in perm[1:]), name=cv.layer_name(node))(x)
    else:
        y = cv.k.ops.transpose(x, perm)
    cv.set(node.output[0], y, NATIVE)


@converts("Squeeze")
def op_Squeeze(cv, node):
    axes = cv.axes_of(node)
    cv.set(node.output[0], cv.k.ops.squeeze(cv.native(node.input[0]), axis=tuple(axes) if axes else None), NATIVE)


@converts("Unsqueeze")
def op_Unsqueeze(cv, node):
    y = cv.native(node.input[0])
    axes = cv.axes_of(node)
    rank = len(y.shape) + len(axes)
    for a in sorted(a % rank for a in axes):
        y = cv.k.ops.expand_dims(y, a)
    cv.set(node.output[0], y, NATIVE)


@converts("ReduceMean")
def op_ReduceMean(cv, node):
    axes = cv.axes_of(node)
    keep = bool(attr(node, "keepdims", 1))
    x, layout = cv.t[node.input[0]]
    if layout == NHWC and len(x.shape) == 4 and sorted(a % 4 for a in axes) == [2, 3]:
        y = cv.L.GlobalAveragePooling2D(keepdims=keep, name=cv.layer_name(node))(x)
        cv.set(node.output[0], y, NHWC if keep else NATIVE)
        return
    y = cv.k.ops.mean(cv.native(node.input[0]), axis=tuple(axes), keepdims=keep)
    cv.set(node.output[0], y, NATIVE)


@converts("Gather")
def op_Gather(cv, node):
    axis = attr(node, "axis", 0) % cv.rank(node.input[0])
    idx = cv.const(node.input[1])
    y = cv.k.ops.take(cv.native(node.input[0]), idx, axis=axis)
    cv.set(node.output[0], y, NATIVE)


@converts("LayerNormalization")
def op_LayerNormalization(cv, node):
    axis = attr(node, "axis", -1) % cv.rank(node.input[0])
    if axis != cv.rank(node.input[0]) - 1:
        raise UnsupportedModelError("LayerNormalization over more than the last axis is not converted")
    s = cv.const(node.input[1])
    b = cv.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    layer = cv.L.LayerNormalization(epsilon=float(attr(node, "epsilon", 1e-5)), center=b is not None,
                                      name=cv.layer_name(node))
    y = layer(cv.native(node.input[0]))
    layer.set_weights([s] + ([b] if b is not None else []))
    cv.set(node.output[0], y, NATIVE)
