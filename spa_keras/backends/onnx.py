"""Apply a plan to an ONNX model: slice initializers, fix group counts, Reshape shapes and Split
sizes, re-infer shapes and check the result with ``onnx.checker``. The input model is not changed."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from ..errors import RebuildError
from ..frontends.onnx import OnnxGraph
from ..frontends.onnx.graph import skeleton
from ..frontends.onnx.runtime import session as ort_session
from ..plan import PruningPlan
from .oracle import compare


class _Writer:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inits = {i.name: i for i in model.graph.initializer}
        self.consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
        self.names = {n for node in model.graph.node for n in list(node.input) + list(node.output)} | set(self.inits)

    def set_array(self, name, value):
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
        if name in self.inits:
            self.inits[name].CopyFrom(tensor)
        elif name in self.consts:
            for a in self.consts[name].attribute:
                if a.name == "value":
                    a.t.CopyFrom(tensor)
        else:
            raise RebuildError(f"parameter {name!r} is neither an initializer nor a Constant")

    def array(self, name) -> np.ndarray:
        """The current value of an initializer or Constant."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        for a in self.consts[name].attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
        raise RebuildError(f"{name!r} is neither an initializer nor a Constant")

    def kept(self, ref) -> np.ndarray:
        """Which channels of the tensor ``ref`` names (of the node being fixed) stay: a boolean mask."""
        node, plan = self.current
        t = (node.inputs if ref.side == "in" else node.outputs)[ref.index]
        return plan.keep_mask(plan.analysis.layouts[t])

    def add_constant(self, name, value) -> str:
        """A new initializer (unique name) for one node's shape-like input, so shared constants stay."""
        base, k = name, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name


def apply_onnx_plan(og: OnnxGraph, plan: PruningPlan, transform=None, check: bool = True,
                    verify: bool = True) -> onnx.ModelProto:
    """A new ``ModelProto`` with the plan's channels removed and its compensation written;
    ``transform(node, param, value)``, when given, decides each full-width value instead (the oracle).

    ``check``: ``onnx.checker`` and strict shape inference. ``verify`` (run before you write): the
    pruned model runs once on onnxruntime at its declared input shapes (dynamic dimensions as 1),
    beside the zero-channel oracle (the full-width model with the removed channels zeroed), and a
    model that onnxruntime refuses or that differs from the oracle raises
    :class:`~spa_keras.errors.RebuildError` naming the node. Where onnxruntime cannot run the input
    model itself, the run is skipped with a warning.
    """
    transform = transform or (lambda node, p, value: plan.value(p, value))
    model = copy.deepcopy(og.model)
    writer = _Writer(model)
    done = set()
    for node in og.graph.nodes:
        for p in node.params:
            if p.key in done:
                continue
            done.add(p.key)
            value = transform(node, p, og.arrays[p.key])
            for axis, idx in plan.keep_indices(node, p).items():
                value = np.take(value, idx, axis=axis)
            if value is not og.arrays[p.key]:
                writer.set_array(p.key, value)
        spec = og.specs[node.name]
        if spec.resize is not None:
            writer.current = (node, plan)
            width = lambda ref, n=node: plan.width((n.inputs if ref.side == "in" else n.outputs)[ref.index])  # noqa: E731
            spec.resize(model.graph.node[node.ref], width, writer)
    used = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)  # shape constants replaced by per-node copies
    for node in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        model.graph.node.remove(node)
    del model.graph.value_info[:]
    if check:
        try:
            bare = skeleton(model)  # the weights were sliced by NumPy: the structure is what can go wrong
            onnx.checker.check_model(bare)
            shape_inference.infer_shapes(bare, strict_mode=True)
        except Exception as e:  # noqa: BLE001
            raise RebuildError(f"the pruned ONNX model does not check: {e}") from e
    if verify:
        verify_before_writing(og, plan, model)
    return model


def declared_inputs(model: onnx.ModelProto, seed: int = 0) -> dict:
    """Random inputs at the model's declared input shapes (dynamic or unknown dimensions as 1)."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = np.ones(shape, dtype)
        else:
            feeds[vi.name] = np.zeros(shape, dtype)
    return feeds


def _failing_node(message: str) -> str:
    """The node an onnxruntime error message names, or ``""``."""
    import re

    for pattern in (r"Name:\s*'([^']+)'", r"[Nn]ode \(([^)]+)\)", r"[Nn]ode:\s*([^\s,]+)", r"[Nn]ode name:\s*([^\s,]+)", r"[Nn]ode ([^\s,:]+)"):
        m = re.search(pattern, message)
        if m:
            return m.group(1)
    return ""


def _session(model, optimize: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:  # nodes keep their own names in error messages (no fusion)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort_session(model, options)


def verify_before_writing(og: OnnxGraph, plan: PruningPlan, pruned: onnx.ModelProto, rtol: float = 1e-3) -> dict:
    """Run ``pruned`` once on onnxruntime beside the zero-channel oracle (see :func:`apply_onnx_plan`)."""
    import warnings

    feeds = declared_inputs(pruned)
    try:
        got = _session(pruned).run(None, feeds)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own error types
        message = str(e).strip()
        try:
            _session(og.model).run(None, declared_inputs(og.model))
        except Exception as e0:  # noqa: BLE001
            warnings.warn(f"onnxruntime cannot run the input model either ({str(e0).strip()[:200]}); the pruned "
                          "model was not run before writing", stacklevel=3)
            return {"ran": False}
        named = copy.deepcopy(pruned)
        for i, n in enumerate(named.graph.node):
            n.name = n.name or n.output[0] or f"{n.op_type}_{i}"
        try:
            _session(named, optimize=False).run(None, feeds)
        except Exception as e2:  # noqa: BLE001
            message = str(e2).strip()
        node = _failing_node(message)
        where = f" at node {node!r}" if node else ""
        raise RebuildError(f"onnxruntime refuses the pruned ONNX model{where}: {message[:600]}. This is a bug in "
                           "spa_keras's ONNX path: the file was not written") from None
    want = _session(zeroed_onnx_copy(og, plan)).run(None, feeds)
    result = compare(want, got, rtol, floor=1e-30)  # relative: untrained deep models can output 1e-14
    if not np.isfinite(result["scale"]) and result["max_abs_diff"] == float("inf"):
        raise RebuildError("the pruned ONNX model gives outputs of other shapes than the input model's; the file "
                           "was not written")
    if not np.isfinite(result["scale"]):
        return {"ran": True, "oracle": None}  # non-finite outputs: nothing to compare
    if not result["passed"]:
        raise RebuildError(f"the pruned ONNX model differs from the zero-channel oracle by {result['max_abs_diff']:.3g} "
                           f"(outputs up to {result['scale']:.3g}); the file was not written")
    return {"ran": True, "oracle": True, "max_abs_diff": result["max_abs_diff"]}


def zeroed_onnx_copy(og: OnnxGraph, plan: PruningPlan) -> onnx.ModelProto:
    """The zero-channel oracle for ONNX: the full-width model, compensated, with the removed channels
    zeroed where they are written."""
    return apply_onnx_plan(og, PruningPlan.empty(plan.analysis), transform=plan.zeroed, check=False,
                           verify=False)


def run_onnx(model: onnx.ModelProto, inputs) -> list:
    """Outputs of ``model`` in onnxruntime for ``inputs`` (an array, a list, or a dict by input name)."""
    session = ort_session(model)
    names = [i.name for i in session.get_inputs()]
    if not isinstance(inputs, dict):
        inputs = dict(zip(names, inputs if isinstance(inputs, (list, tuple)) else [inputs]))
    return session.run(None, inputs)


def verify_onnx(og: OnnxGraph, plan: PruningPlan, pruned: onnx.ModelProto, inputs, rtol: float = 1e-3) -> dict:
    """The zero-channel oracle on onnxruntime: ``pruned`` against the zeroed full-width model."""
    return compare(run_onnx(zeroed_onnx_copy(og, plan), inputs), run_onnx(pruned, inputs), rtol, floor=1e-30)
