"""ONNX models into the standard channel graph: the reader (:mod:`.graph`) and one registry entry per
op type (:mod:`.ops` and :mod:`.shape_ops`, one registry)."""

from .graph import OnnxGraph, from_onnx_model, inferred_graph, load_onnx
from .ops import REGISTRY, OnnxCall, attr, register_op

__all__ = ["OnnxGraph", "from_onnx_model", "inferred_graph", "load_onnx", "REGISTRY", "OnnxCall", "attr",
           "register_op"]
