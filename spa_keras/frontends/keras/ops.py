"""Non-Layer operations of a Functional graph (``keras.ops`` calls, ``x + y``): what each means for
channels."""

from __future__ import annotations

import keras

from ..spec import ELEMENTWISE, Spec, fixed
from .registry import Call, identity

OPS_MERGE = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power"}
OPS_UNARY = ELEMENTWISE | {
    "Relu6", "Silu", "Swish", "HardSilu", "Absolute", "Square", "Rsqrt", "Log1p", "Expm1", "Negative", "Clip",
    "StopGradient", "Tanhshrink", "SoftShrink", "HardShrink", "HardTanh", "SparsePlus", "Squareplus", "LogSigmoid",
}  # fmt: skip
OPS_REDUCE = {"Mean", "Sum", "Max", "Min", "Prod", "Amax", "Amin", "Std", "Var"}


def _const_is_per_channel(node) -> bool:
    """A constant array argument as wide as the channels would be left unsliced."""
    def check(x):
        if isinstance(x, keras.KerasTensor):
            return False
        shape = getattr(x, "shape", None)
        return shape is not None and len(shape) >= 1 and shape[-1] not in (None, 1)

    args = list(node.arguments.args) + list(node.arguments.kwargs.values())
    return any(check(x) for x in keras.tree.flatten(args))


def _key_spares_last_axis(key, rank: int) -> bool:
    """Whether ``x[key]`` leaves the last axis whole (``x[:, 0]``, ``x[..., 1:, :]``)."""
    key = tuple(key) if isinstance(key, (tuple, list)) else (key,)
    if any(k is None for k in key):
        return False
    whole = slice(None)
    if Ellipsis in key:
        tail = key[key.index(Ellipsis) + 1 :]
        return all(k == whole for k in tail)
    return len(key) < rank or key[-1] == whole


def describe_op(op, call: Call) -> Spec:
    """What a non-Layer operation means for channels (held fixed when not understood)."""
    name = type(op).__name__
    if _const_is_per_channel(call.node):
        return fixed(f"keras.ops {name} with a per-channel constant argument")
    if name in OPS_MERGE:
        return Spec("merge")
    if name in OPS_UNARY:
        return identity()
    if name == "Concatenate":
        rank = len(call.out_shapes[0]) + 1
        return Spec("concat" if getattr(op, "axis", None) in (-1, rank - 1) else "merge")
    if name == "GetItem" and _key_spares_last_axis(call.argument(1, "key"), len(call.in_shapes[0]) + 1):
        return identity()
    if name in OPS_REDUCE:
        axis = getattr(op, "axis", None)
        rank = len(call.in_shapes[0]) + 1
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        if axis is not None and all(a not in (-1, rank - 1) for a in axes):
            return identity()
    return fixed(f"keras.ops {name} is not understood")


