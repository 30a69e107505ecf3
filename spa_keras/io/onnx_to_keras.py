"""ONNX -> Keras: a Functional model built from Keras' own layers and ``keras.ops``, so that it
saves and loads as ``.keras`` (no Lambda, no custom objects), exports as a SavedModel, and prunes like
any Keras model.

Layouts: ONNX is NCHW, Keras convolutions are NHWC. Every converted tensor remembers whether it holds
its ONNX tensor as is (``native``) or with the channel axis moved last (``nhwc``). Convolutions, batch
norms and pooling want ``nhwc``; shape-minded ops (Reshape, Transpose, Gather, Flatten) want ``native``;
a ``Permute`` goes in only where the two meet. Element-wise ops work in either layout (constants are
transposed to match). The converted model takes and returns tensors in the ONNX model's own layout
unless ``channels_last_inputs`` is set, so its outputs match onnxruntime's directly.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UnsupportedModelError
from ..frontends.onnx import attr, inferred_graph

NHWC, NATIVE = "nhwc", "native"


def converts(*ops):
    """Mark a method of :class:`_Converter` as the conversion of these ONNX op types."""

    def deco(fn):
        fn.onnx_ops = ops
        return fn

    return deco


class _Converter:
    def __init__(self, model: onnx.ModelProto, channels_last_inputs: bool):
        import keras

        self.k = keras
        self.L = keras.layers
        g, self.shapes = inferred_graph(model)
        self.consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.t = {}  # onnx name -> (keras tensor, layout)
        self.inputs = []
        for vi in g.input:
            if vi.name in self.consts:
                continue
            shape = self.shapes[vi.name]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            if channels_last_inputs and len(shape) == 4:
                x = keras.Input(batch_shape=(None, shape[2], shape[3], shape[1]), dtype=str(dtype), name=_safe(vi.name))
                self.t[vi.name] = (x, NHWC)
            else:
                x = keras.Input(batch_shape=(None,) + tuple(shape[1:]), dtype=str(dtype), name=_safe(vi.name))
                self.t[vi.name] = (x, NATIVE)
            self.inputs.append(x)
        self.names = set()
        self.consumers = {}
        for node in g.node:
            for x in node.input:
                self.consumers.setdefault(x, []).append(node)
        self.skip = set()
        for node in g.node:
            if node.output[0] not in self.skip:
                self.convert(node)
        self.outputs = [self.native(o.name) for o in g.output]
        self.name = g.name or "onnx_model"

    # ---- layouts ---------------------------------------------------------------------------------
    def rank(self, name):
        return len(self.shapes.get(name) or self.t[name][0].shape)

    def nhwc(self, name):
        x, layout = self.t[name]
        if layout == NHWC or len(x.shape) != 4:
            return x
        return self.L.Permute((2, 3, 1))(x)

    def native(self, name):
        x, layout = self.t[name]
        if layout == NATIVE or len(x.shape) != 4:
            return x
        return self.L.Permute((3, 1, 2))(x)

    def set(self, name, x, layout):
        self.t[name] = (x, layout)

    def layer_name(self, node):
        base = _safe(node.name or node.output[0]) or node.op_type
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def const(self, name):
        if name not in self.consts:
            raise UnsupportedModelError(f"{name!r} must be a constant for this op")
        return self.consts[name]

    # ---- ops ---------------------------------------------------------------------------------------
    def convert(self, node):
        op = node.op_type
        fn = CONVERTERS.get(op)
        if op == "Constant":
            self.consts[node.output[0]] = numpy_helper.to_array(attr(node, "value"))
            return
        if all(x in self.consts for x in node.input if x) and op not in ("Shape",):
            self.fold(node)
            return
        if fn is None:
            if op in ELEMENTWISE:
                return self.elementwise(node)
            raise UnsupportedModelError(
                f"ONNX op {op} (node {node.name or node.output[0]!r}) has no Keras conversion yet; prune the "
                "ONNX model directly with spa.prune(path) or convert it with another tool"
            )
        fn(self, node)

    def fold(self, node):
        """Constant-fold a node whose inputs are all constants (shape arithmetic)."""
        import onnx.reference

        vals = {x: self.consts[x] for x in node.input if x}
        graph = onnx.helper.make_graph(
            [node], "fold",
            [onnx.helper.make_tensor_value_info(x, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for x, v in vals.items()],
            [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
        )
        ref = onnx.reference.ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]))
        for o, v in zip(node.output, ref.run(None, vals)):
            self.consts[o] = np.asarray(v)

    @converts("Shape")
    def op_Shape(self, node):
        shape = self.shapes.get(node.input[0])
        if shape is None or None in shape[1:]:
            raise UnsupportedModelError("Shape of a tensor with unknown dimensions cannot be converted")
        self.consts[node.output[0]] = np.array([1 if shape[0] is None else shape[0]] + list(shape[1:]), np.int64)

    @converts("Conv")
    def op_Conv(self, node):
        w = self.const(node.input[1])
        if w.ndim != 4:
            raise UnsupportedModelError(f"only 2-D convolutions convert (node {node.output[0]!r})")
        b = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        x = self.nhwc(node.input[0])
        x, padding = self.pads(node, x, w.shape[2:], value=0.0)
        g = int(attr(node, "group", 1))
        o, ig, kh, kw = w.shape
        cin = ig * g
        common = dict(strides=tuple(attr(node, "strides", [1, 1])), padding=padding,
                      dilation_rate=tuple(attr(node, "dilations", [1, 1])), use_bias=b is not None,
                      name=self.layer_name(node))
        if g > 1 and g == cin:
            m = o // cin
            layer = self.L.DepthwiseConv2D((kh, kw), depth_multiplier=m, **common)
            weights = [w.reshape(cin, m, kh, kw).transpose(2, 3, 0, 1)]
        else:
            layer = self.L.Conv2D(o, (kh, kw), groups=g, **common)
            weights = [w.transpose(2, 3, 1, 0)]
        y = layer(x)
        layer.set_weights(weights + ([b] if b is not None else []))
        self.set(node.output[0], y, NHWC)

    def pads(self, node, x, kernel, value, extra=(0, 0)):
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
                x = self.L.ZeroPadding2D(((t, bot), (left, right)))(x)
            else:
                x = self.k.ops.pad(x, [[0, 0], [t, bot], [left, right], [0, 0]], constant_values=value)
        return x, "valid"

    @converts("BatchNormalization")
    def op_BatchNormalization(self, node):
        s, b, m, v = (self.const(n) for n in node.input[1:5])
        layer = self.L.BatchNormalization(epsilon=float(attr(node, "epsilon", 1e-5)), name=self.layer_name(node))
        x, layout = self.t[node.input[0]]
        if len(x.shape) == 4:
            x, layout = self.nhwc(node.input[0]), NHWC
        elif len(x.shape) != 2:
            raise UnsupportedModelError("BatchNormalization of a rank-3 tensor is not converted")
        y = layer(x)
        layer.set_weights([s, b, m, v])
        self.set(node.output[0], y, layout)

    def pool(self, node, cls, value):
        x = self.nhwc(node.input[0])
        k = tuple(attr(node, "kernel_shape"))
        extra = (0, 0)
        if attr(node, "ceil_mode", 0):
            if node.op_type != "MaxPool":
                raise UnsupportedModelError(f"{node.op_type} with ceil_mode=1 is not converted")
            extra = self._ceil_pads(node, k)  # ceil mode = floor mode over -inf padding at the end
        if node.op_type == "AveragePool" and any(attr(node, "pads", [])) and not attr(node, "count_include_pad", 0):
            raise UnsupportedModelError("AveragePool with padding and count_include_pad=0 is not converted")
        x, padding = self.pads(node, x, k, value, extra)
        y = cls(k, strides=tuple(attr(node, "strides", k)), padding=padding, name=self.layer_name(node))(x)
        self.set(node.output[0], y, NHWC)

    def _ceil_pads(self, node, kernel):
        """Padding to add at the bottom and right so that floor mode gives ceil mode's output size."""
        src, dst = self.shapes.get(node.input[0]), self.shapes.get(node.output[0])
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
    def op_MaxPool(self, node):
        self.pool(node, self.L.MaxPooling2D, -np.inf)

    @converts("AveragePool")
    def op_AveragePool(self, node):
        self.pool(node, self.L.AveragePooling2D, 0.0)

    @converts("GlobalAveragePool")
    def op_GlobalAveragePool(self, node):
        y = self.L.GlobalAveragePooling2D(keepdims=True, name=self.layer_name(node))(self.nhwc(node.input[0]))
        self.set(node.output[0], y, NHWC)

    @converts("GlobalMaxPool")
    def op_GlobalMaxPool(self, node):
        y = self.L.GlobalMaxPooling2D(keepdims=True, name=self.layer_name(node))(self.nhwc(node.input[0]))
        self.set(node.output[0], y, NHWC)

    @converts("Flatten")
    def op_Flatten(self, node):
        if attr(node, "axis", 1) != 1:
            raise UnsupportedModelError("Flatten with axis != 1 is not converted")
        x = self.native(node.input[0])
        y = self.L.Flatten(name=self.layer_name(node))(x) if len(x.shape) > 2 else x
        self.set(node.output[0], y, NATIVE)

    @converts("Gemm")
    def op_Gemm(self, node):
        w = self.const(node.input[1])
        if attr(node, "transA", 0):
            raise UnsupportedModelError("Gemm with transA is not converted")
        if attr(node, "transB", 0):
            w = w.T
        w = w * float(attr(node, "alpha", 1.0))
        c = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        layer = self.L.Dense(w.shape[1], use_bias=c is not None, name=self.layer_name(node))
        y = layer(self.native(node.input[0]))
        bias = [np.broadcast_to(c * float(attr(node, "beta", 1.0)), (w.shape[1],)).astype(w.dtype)] if c is not None else []
        layer.set_weights([w] + bias)
        self.set(node.output[0], y, NATIVE)

    def _bias_add(self, node, width):
        """The ``Add`` of a constant bias that alone consumes ``node``'s output (PyTorch's Linear on
        3-D inputs exports as MatMul + Add): fused into the Dense layer."""
        users = self.consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            return None, None
        add = users[0]
        other = [x for x in add.input if x != node.output[0]]
        if len(other) != 1 or other[0] not in self.consts or self.consts[other[0]].shape != (width,):
            return None, None
        return add, self.consts[other[0]]

    @converts("MatMul")
    def op_MatMul(self, node):
        if node.input[1] in self.consts and self.consts[node.input[1]].ndim == 2:
            w = self.consts[node.input[1]]
            add, bias = self._bias_add(node, w.shape[1])
            layer = self.L.Dense(w.shape[1], use_bias=bias is not None, name=self.layer_name(node))
            y = layer(self.native(node.input[0]))
            layer.set_weights([w] + ([bias] if bias is not None else []))
            if add is not None:
                self.skip.add(add.output[0])
                self.set(add.output[0], y, NATIVE)
        else:
            y = self.k.ops.matmul(self.operand(node.input[0], NATIVE), self.operand(node.input[1], NATIVE))
        self.set(node.output[0], y, NATIVE)

    @converts("Relu")
    def op_Relu(self, node):
        self.unary(node, lambda x, n: self.L.ReLU(name=n)(x))

    @converts("Clip")
    def op_Clip(self, node):
        lo = self.consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "min")
        hi = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else attr(node, "max")
        lo = None if lo is None else float(lo)
        hi = None if hi is None else float(hi)
        if lo == 0.0 and hi is not None:
            self.unary(node, lambda x, n: self.L.ReLU(max_value=hi, name=n)(x))
        else:
            self.unary(node, lambda x, n: self.k.ops.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi))

    @converts("LeakyRelu")
    def op_LeakyRelu(self, node):
        a = float(attr(node, "alpha", 0.01))
        self.unary(node, lambda x, n: self.L.LeakyReLU(negative_slope=a, name=n)(x))

    @converts("HardSigmoid")
    def op_HardSigmoid(self, node):
        a, b = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
        self.unary(node, lambda x, n: self.k.ops.clip(x * a + b, 0.0, 1.0))

    @converts("HardSwish")
    def op_HardSwish(self, node):
        self.unary(node, lambda x, n: self.L.Activation("hard_silu", name=n)(x))

    @converts("Gelu")
    def op_Gelu(self, node):
        approx = attr(node, "approximate", b"none")
        approx = (approx.decode() if isinstance(approx, bytes) else approx) == "tanh"
        self.unary(node, lambda x, n: self.k.ops.gelu(x, approximate=approx))

    @converts("Softmax")
    def op_Softmax(self, node):
        x, layout = self.t[node.input[0]]
        axis = attr(node, "axis", -1) % self.rank(node.input[0])
        x = self.native(node.input[0])
        self.set(node.output[0], self.L.Softmax(axis=axis, name=self.layer_name(node))(x), NATIVE)

    def unary(self, node, fn):
        x, layout = self.t[node.input[0]]
        self.set(node.output[0], fn(x, self.layer_name(node)), layout)

    @converts("Identity", "Dropout")
    def op_Identity(self, node):
        self.t[node.output[0]] = self.t[node.input[0]]

    @converts("Cast")
    def op_Cast(self, node):
        to = onnx.helper.tensor_dtype_to_np_dtype(attr(node, "to"))
        self.unary(node, lambda x, n: self.k.ops.cast(x, str(to)))

    def operand(self, name, layout, rank=None):
        """``name`` as a Keras tensor or a constant, in ``layout``."""
        if name in self.consts:
            c = self.consts[name]
            if layout == NHWC and rank == 4:
                c = c.reshape((1,) * (4 - c.ndim) + c.shape).transpose(0, 2, 3, 1) if c.ndim else c
            return c
        return self.nhwc(name) if layout == NHWC else self.native(name)

    def elementwise(self, node):
        dyn = [x for x in node.input if x and x not in self.consts]
        layouts = {self.t[x][1] for x in dyn if len(self.t[x][0].shape) == 4}
        rank = max(self.rank(x) for x in dyn)
        layout = NHWC if layouts == {NHWC} else NATIVE
        args = [self.operand(x, layout, rank) for x in node.input if x]
        fn = ELEMENTWISE[node.op_type]
        self.set(node.output[0], fn(self.k.ops, *args), layout if rank == 4 else NATIVE)

    @converts("Concat")
    def op_Concat(self, node):
        axis = attr(node, "axis") % self.rank(node.output[0])
        layouts = {self.t[x][1] for x in node.input if x not in self.consts}
        if layouts == {NHWC} and axis == 1:
            y = self.L.Concatenate(axis=-1, name=self.layer_name(node))([self.t[x][0] for x in node.input])
            self.set(node.output[0], y, NHWC)
        else:
            y = self.k.ops.concatenate([self.operand(x, NATIVE) for x in node.input], axis=axis)
            self.set(node.output[0], y, NATIVE)

    @converts("Split")
    def op_Split(self, node):
        axis = attr(node, "axis", 0) % self.rank(node.input[0])
        sizes = self.consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "split")
        x, layout = self.t[node.input[0]]
        k_axis = -1 if (layout == NHWC and axis == 1 and len(x.shape) == 4) else axis
        if k_axis == axis:
            x, layout = self.native(node.input[0]), NATIVE
        n = len(node.output)
        indices = list(np.cumsum(sizes)[:-1]) if sizes is not None else n
        for o, y in zip(node.output, self.k.ops.split(x, indices, axis=k_axis)):
            self.set(o, y, layout)

    @converts("Slice")
    def op_Slice(self, node):
        rank = self.rank(node.input[0])
        starts, ends = (np.ravel(self.const(n)) for n in node.input[1:3])
        axes = np.ravel(self.const(node.input[3])) if len(node.input) > 3 and node.input[3] else range(len(starts))
        steps = np.ravel(self.const(node.input[4])) if len(node.input) > 4 and node.input[4] else [1] * len(starts)
        x, layout = self.t[node.input[0]]
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
        self.set(node.output[0], x[tuple(index)], layout)

    @converts("ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare")
    def op_Reduce(self, node):
        """Reductions other than the mean (Swin V2's cosine attention normalises q and k by ReduceL2)."""
        o = self.k.ops
        axes = self.axes_of(node)
        if axes is None and attr(node, "noop_with_empty_axes", 0):
            self.t[node.output[0]] = self.t[node.input[0]]
            return
        keep = bool(attr(node, "keepdims", 1))
        x = self.native(node.input[0])
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
        self.set(node.output[0], fn(x), NATIVE)

    @converts("Expand")
    def op_Expand(self, node):
        target = list(self.shapes.get(node.output[0]) or [])
        if not target or None in target[1:]:
            raise UnsupportedModelError("Expand to a shape of unknown size is not converted")
        x = self.native(node.input[0])
        if x.shape[0] is None:  # the batch stays as it comes
            target[0] = 1 if len(x.shape) == len(target) else target[0]
            y = x * self.k.ops.ones(tuple(target), dtype=x.dtype)
        else:
            y = self.k.ops.broadcast_to(x, tuple(target))
        self.set(node.output[0], y, NATIVE)

    @converts("Where")
    def op_Where(self, node):
        c, a, b = (self.operand(x, NATIVE) for x in node.input)
        self.set(node.output[0], self.k.ops.where(c, a, b), NATIVE)

    @converts("Equal")
    def op_Equal(self, node):
        a, b = (self.operand(x, NATIVE) for x in node.input)
        self.set(node.output[0], self.k.ops.equal(a, b), NATIVE)

    @converts("Tile")
    def op_Tile(self, node):
        reps = [int(r) for r in self.const(node.input[1])]
        self.set(node.output[0], self.k.ops.tile(self.native(node.input[0]), reps), NATIVE)

    @converts("Einsum")
    def op_Einsum(self, node):
        eq = attr(node, "equation")
        eq = (eq.decode() if isinstance(eq, bytes) else str(eq)).replace(" ", "")
        upper = sorted({ch for ch in eq if ch.isupper()})  # Keras' einsum reads lower-case letters only
        free = [ch for ch in "abcdefghijklmnopqrstuvwxyz" if ch not in eq]
        eq = eq.translate(str.maketrans(dict(zip(upper, free))))
        args = [self.operand(x, NATIVE) for x in node.input]
        self.set(node.output[0], self.k.ops.einsum(eq, *args), NATIVE)

    @converts("Pad")
    def op_Pad(self, node):
        mode = attr(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("constant", "reflect"):
            raise UnsupportedModelError(f"Pad mode {mode!r} is not converted")
        rank = self.rank(node.input[0])
        pads = np.ravel(self.const(node.input[1])) if len(node.input) > 1 and node.input[1] else np.ravel(attr(node, "pads"))
        value = float(np.ravel(self.const(node.input[2]))[0]) if len(node.input) > 2 and node.input[2] else 0.0
        axes = [int(a) % rank for a in np.ravel(self.const(node.input[3]))] if len(node.input) > 3 and node.input[3] \
            else list(range(rank))
        x, layout = self.t[node.input[0]]
        where = {1: 3, 2: 1, 3: 2} if layout == NHWC and len(x.shape) == 4 else {}
        width = [[0, 0] for _ in range(len(x.shape))]
        n = len(axes)
        for i, a in enumerate(axes):
            width[where.get(a, a)] = [int(pads[i]), int(pads[i + n])]
        if not any(any(w) for w in width):
            self.set(node.output[0], x, layout)
            return
        if width[0] != [0, 0]:
            raise UnsupportedModelError("Pad of the batch axis is not converted")
        y = self.k.ops.pad(x, width, mode=mode, constant_values=value if mode == "constant" else None)
        self.set(node.output[0], y, layout)

    @converts("Reshape")
    def op_Reshape(self, node):
        shape = [int(s) for s in self.const(node.input[1])]
        src = list(self.shapes.get(node.input[0]) or [])
        target = list(self.shapes.get(node.output[0]) or [])
        if not target or None in target[1:]:
            target = [d if s == 0 else s for s, d in zip(shape, src + [None] * len(shape))]
        x = self.native(node.input[0])
        if x.shape[0] is None and src and target and src[0] == target[0]:
            y = self.L.Reshape(tuple(target[1:]), name=self.layer_name(node))(x)
        else:  # the batch axis moves (attention written by PyTorch): the exported batch size is kept
            y = self.k.ops.reshape(x, tuple(-1 if d is None else d for d in target))
        self.set(node.output[0], y, NATIVE)

    @converts("Transpose")
    def op_Transpose(self, node):
        perm = list(attr(node, "perm"))
        x = self.native(node.input[0])
        if perm[0] == 0:
            y = self.L.Permute(tuple(p for p in perm[1:]), name=self.layer_name(node))(x)
        else:
            y = self.k.ops.transpose(x, perm)
        self.set(node.output[0], y, NATIVE)

    def axes_of(self, node, index=1):
        axes = attr(node, "axes")
        if axes is None and len(node.input) > index and node.input[index]:
            axes = self.const(node.input[index])
        return None if axes is None else [int(a) for a in np.ravel(axes)]

    @converts("Squeeze")
    def op_Squeeze(self, node):
        axes = self.axes_of(node)
        self.set(node.output[0], self.k.ops.squeeze(self.native(node.input[0]), axis=tuple(axes) if axes else None), NATIVE)

    @converts("Unsqueeze")
    def op_Unsqueeze(self, node):
        y = self.native(node.input[0])
        axes = self.axes_of(node)
        rank = len(y.shape) + len(axes)
        for a in sorted(a % rank for a in axes):
            y = self.k.ops.expand_dims(y, a)
        self.set(node.output[0], y, NATIVE)

    @converts("ReduceMean")
    def op_ReduceMean(self, node):
        axes = self.axes_of(node)
        keep = bool(attr(node, "keepdims", 1))
        x, layout = self.t[node.input[0]]
        if layout == NHWC and len(x.shape) == 4 and sorted(a % 4 for a in axes) == [2, 3]:
            y = self.L.GlobalAveragePooling2D(keepdims=keep, name=self.layer_name(node))(x)
            self.set(node.output[0], y, NHWC if keep else NATIVE)
            return
        y = self.k.ops.mean(self.native(node.input[0]), axis=tuple(axes), keepdims=keep)
        self.set(node.output[0], y, NATIVE)

    @converts("Gather")
    def op_Gather(self, node):
        axis = attr(node, "axis", 0) % self.rank(node.input[0])
        idx = self.const(node.input[1])
        y = self.k.ops.take(self.native(node.input[0]), idx, axis=axis)
        self.set(node.output[0], y, NATIVE)

    @converts("LayerNormalization")
    def op_LayerNormalization(self, node):
        axis = attr(node, "axis", -1) % self.rank(node.input[0])
        if axis != self.rank(node.input[0]) - 1:
            raise UnsupportedModelError("LayerNormalization over more than the last axis is not converted")
        s = self.const(node.input[1])
        b = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        layer = self.L.LayerNormalization(epsilon=float(attr(node, "epsilon", 1e-5)), center=b is not None,
                                          name=self.layer_name(node))
        y = layer(self.native(node.input[0]))
        layer.set_weights([s] + ([b] if b is not None else []))
        self.set(node.output[0], y, NATIVE)


ELEMENTWISE = {
    "Add": lambda o, a, b: o.add(a, b),
    "Sub": lambda o, a, b: o.subtract(a, b),
    "Mul": lambda o, a, b: o.multiply(a, b),
    "Div": lambda o, a, b: o.divide(a, b),
    "Pow": lambda o, a, b: o.power(a, b),
    "Max": lambda o, *a: _fold(o.maximum, a),
    "Min": lambda o, *a: _fold(o.minimum, a),
    "Sum": lambda o, *a: _fold(o.add, a),
    "Sigmoid": lambda o, a: o.sigmoid(a),
    "Tanh": lambda o, a: o.tanh(a),
    "Erf": lambda o, a: o.erf(a),
    "Sqrt": lambda o, a: o.sqrt(a),
    "Exp": lambda o, a: o.exp(a),
    "Log": lambda o, a: o.log(a),
    "Neg": lambda o, a: o.negative(a),
    "Abs": lambda o, a: o.abs(a),
    "Reciprocal": lambda o, a: o.reciprocal(a) if hasattr(o, "reciprocal") else o.divide(1.0, a),
    "Softplus": lambda o, a: o.softplus(a),
    "Elu": lambda o, a: o.elu(a),
    "Selu": lambda o, a: o.selu(a),
}


#: ONNX op type -> ``method(converter, node)``
CONVERTERS = {op: fn for fn in vars(_Converter).values() for op in getattr(fn, "onnx_ops", ())}


def _fold(fn, args):
    out = args[0]
    for a in args[1:]:
        out = fn(out, a)
    return out


def _safe(name: str) -> str:
    out = "".join(c if c.isalnum() or c in "_-" else "_" for c in name).strip("_")
    return out if out and not out[0].isdigit() else f"t_{out}"


def onnx_to_keras(model: onnx.ModelProto, channels_last_inputs: bool = False):
    """Build the Keras model of an ONNX model (see the module docstring)."""
    import keras

    c = _Converter(model, channels_last_inputs)
    outputs = c.outputs[0] if len(c.outputs) == 1 else c.outputs
    inputs = c.inputs[0] if len(c.inputs) == 1 else c.inputs
    return keras.Model(inputs, outputs, name=_safe(c.name))
