"""Keras -> ONNX through tf2onnx, with exact GELU made convertible.

TensorFlow writes exact GELU with ``Erfc``, which tf2onnx cannot map (the file it writes is invalid:
``No Op registered for Erfc``); a custom handler rewrites it as ``1 - Erf(x)``.
"""

from __future__ import annotations

import numpy as np

from ..errors import RebuildError


def _erfc_handler(ctx, node, name, args):
    """Erfc(x) -> Sub(1, Erf(x))."""
    from tf2onnx import utils

    dtype = ctx.get_dtype(node.input[0])
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
    one = ctx.make_const(utils.make_name("one"), np.array(1, dtype=utils.map_onnx_to_numpy_type(dtype)))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])
    return node


def keras_to_onnx(model, opset: int = 17):
    """An ``onnx.ModelProto`` of a Keras model (its inputs and outputs keep their names and shapes)."""
    import tensorflow as tf

    from ..errors import require

    tf2onnx = require("tf2onnx", why="converting a Keras model to ONNX")

    spec = [tf.TensorSpec(x.shape, x.dtype, name=x.name.split(":")[0]) for x in model.inputs]

    @tf.function(input_signature=spec)
    def serve(*args):
        return model(list(args) if len(args) > 1 else args[0], training=False)

    try:
        proto, _ = tf2onnx.convert.from_function(
            serve, input_signature=spec, opset=opset, custom_op_handlers={"Erfc": (_erfc_handler, [])}
        )
    except Exception as e:  # noqa: BLE001
        raise RebuildError(f"tf2onnx could not convert model {model.name!r}: {e}") from e
    return proto
