"""The standard channel graph (framework-free): IR, channel rules, group discovery."""

from .groups import Analysis, Group, GraphError, analyse, axis_elements
from .ir import BIAS, IN, OUT, STAT, WEIGHT, AxisRef, Graph, Node, Param, TensorInfo
from .rules import FIXED, RULES

__all__ = [
    "Analysis", "Group", "GraphError", "analyse", "axis_elements", "BIAS", "IN", "OUT", "STAT", "WEIGHT",
    "AxisRef", "Graph", "Node", "Param", "TensorInfo", "FIXED", "RULES",
]
