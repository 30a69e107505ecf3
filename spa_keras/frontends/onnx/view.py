"""The ONNX side of the frontend interface (:mod:`spa_keras.frontends.base`): inputs, consumers as
matrices, batch normalisations, and an op-by-op runner on onnxruntime (any tensor can be read out)."""

from __future__ import annotations

import numpy as np
import onnx

from ...errors import InvalidArgumentError
from ..base import BatchNormView, InputSpec, LinearView
from .ops import attr


def input_specs(og) -> list:
    out = []
    for vi in og.model.graph.input:
        if vi.name in og.arrays:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        out.append(InputSpec(vi.name, tuple(og.shapes.get(vi.name, [None])[1:]), str(dtype)))
    return out


def _params_by_key(node):
    return {p.key: p for p in node.params}


def linear(og, node) -> LinearView | None:
    """``Conv`` with ``group == 1`` and a constant kernel, and ``MatMul``/``Gemm`` with a constant 2-D
    kernel on the feature axis (a bias added by the one ``Add`` that reads a ``MatMul`` counts)."""
    if node.kind != "linear":
        return None
    proto = og.protos[node.name]
    params = _params_by_key(node)
    kernel = params.get(proto.input[1]) if len(proto.input) > 1 else None
    if kernel is None:
        return None
    bias = params.get(proto.input[2]) if len(proto.input) > 2 else None
    if proto.op_type == "Conv":
        if int(attr(proto, "group", 1) or 1) != 1:
            return None
        rank = len(kernel.shape) - 2
        k = tuple(int(d) for d in kernel.shape[2:])
        strides = tuple(attr(proto, "strides", None) or [1] * rank)
        dilation = tuple(attr(proto, "dilations", None) or [1] * rank)
        auto = attr(proto, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            padding = "same"
        elif auto == "VALID":
            padding = "valid"
        else:
            pads = list(attr(proto, "pads", None) or [0] * (2 * rank))
            padding = tuple((int(pads[i]), int(pads[i + rank])) for i in range(rank))
        perm = tuple(range(2, rank + 2)) + (1, 0)
        return LinearView(node, kernel, bias, "conv", node.inputs[0], k, strides, dilation, padding, perm, True)
    perm = (1, 0) if kernel.axes.get(0) is not None and kernel.axes[0].side == "out" else None
    if bias is None and proto.op_type == "MatMul":
        bias = _added_bias(og, node)
    return LinearView(node, kernel, bias, "dense", node.inputs[0], kernel_perm=perm)


def _added_bias(og, node):
    """The bias of a ``MatMul`` followed by ``Add`` of a constant vector (PyTorch's ``nn.Linear``)."""
    readers = [n for n in og.graph.nodes if node.outputs[0] in n.inputs]
    if len(readers) != 1 or og.protos[readers[0].name].op_type != "Add":
        return None
    ps = [p for p in readers[0].params if p.axes and len(p.shape) == 1]
    return ps[0] if len(ps) == 1 else None


def batchnorm(og, node) -> BatchNormView | None:
    proto = og.protos.get(node.name)
    if proto is None or proto.op_type != "BatchNormalization" or node.kind != "identity":
        return None
    params = _params_by_key(node)
    mean, var = params.get(proto.input[3]), params.get(proto.input[4])
    if mean is None or var is None:
        return None
    return BatchNormView(node, node.inputs[0], mean, var, float(attr(proto, "epsilon", 1e-5)), True)


class Runner:
    """onnxruntime sessions that also return inner tensors (one session per set of tensors asked for).
    A model exported with a fixed batch size runs the batch in pieces of that size."""

    def __init__(self, og):
        self.og = og
        self.sessions: dict = {}
        specs = input_specs(og)
        self.names = [s.name for s in specs]
        batch = [og.shapes.get(n, [None])[0] for n in self.names]
        self.batch = batch[0] if batch and batch[0] else None

    def _session(self, outputs: tuple):
        from .runtime import session

        if outputs not in self.sessions:
            extra = [self.og.value_info.get(name) or onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                     for name in outputs]
            self.sessions[outputs] = session(self.og.model, outputs=extra)
        return self.sessions[outputs]

    def __call__(self, inputs, keep=None, training: bool = False) -> dict:
        if training:
            raise InvalidArgumentError("ONNX models run in inference mode only (BatchNorm statistics cannot be "
                                       "re-estimated on them)")
        og = self.og
        flat = [np.asarray(a) for a in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
        if len(flat) != len(self.names):
            raise InvalidArgumentError(f"ONNX model {og.graph.name!r} takes {len(self.names)} inputs, got {len(flat)}")
        tids = [t for t in (og.graph.tensors if keep is None else keep) if og.graph.tensors[t].name in og.tid]
        names = tuple(dict.fromkeys(og.graph.tensors[t].name for t in tids))
        if not names:
            return {}
        session = self._session(names)
        n = len(flat[0])
        step = self.batch or n
        parts = []
        for i in range(0, n, step):
            chunk = [a[i:i + step] for a in flat]
            short = step - len(chunk[0])
            if short:  # a fixed batch size: pad the last piece, then drop what was padded
                chunk = [np.concatenate([a, np.zeros((short,) + a.shape[1:], a.dtype)]) for a in chunk]
            out = session.run(list(names), dict(zip(self.names, chunk)))
            parts.append([o[: step - short] for o in out])
        values = {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(names)}
        return {t: values[og.graph.tensors[t].name] for t in tids}


def run(og, inputs, keep=None, training: bool = False) -> dict:
    """``{graph tensor id: NumPy array}`` from onnxruntime (see :class:`Runner`; one per model)."""
    if og._runner is None:
        og._runner = Runner(og)
    return og._runner(inputs, keep, training)
