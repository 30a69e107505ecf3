"""The Keras side of the frontend interface (:mod:`spa_keras.frontends.base`): the model's inputs,
consumers as matrices, batch normalisations, copies. The algorithms see Keras layers only through it."""

from __future__ import annotations

import keras

from ..base import BatchNormView, InputSpec, LinearView
from .walk import functional_of

L = keras.layers


def input_specs(kg) -> list:
    xs = keras.tree.flatten(functional_of(kg.model)._inputs_struct)
    return [InputSpec(x.name, tuple(x.shape[1:]), str(x.dtype)) for x in xs]


def _param(node, short, full: bool = False):
    """The parameter of ``node`` whose weight is called ``short`` (``kernel``, ``bias``...), or whose
    path ends with it (``full``: ``self_attention/attention_output/kernel``)."""
    for p in node.params:
        if (p.name.endswith("/" + short) if full else p.name.rsplit("/", 1)[-1] == short):
            return p
    return None


def _padding(op, rank):
    if op.padding == "causal":
        return ((op.dilation_rate[0] * (op.kernel_size[0] - 1), 0),)
    return op.padding


def linear(kg, node) -> LinearView | None:
    """``Dense``, a 2-D-kernel ``EinsumDense`` acting on the last axis, and ``Conv1D/2D/3D`` with
    ``groups == 1`` in channels_last layout."""
    op = kg.layer(node)
    if node.kind != "linear" or op is None:
        return None
    kernel, bias = _param(node, "kernel"), _param(node, "bias")
    if kernel is None:
        return None
    per_token = len(kg.graph.tensors[node.inputs[0]].shape) == 2  # (positions, channels): a sequence
    if isinstance(op, L.Dense):
        return LinearView(node, kernel, bias, "dense", node.inputs[0], per_token=per_token)
    if isinstance(op, L.EinsumDense) and len(kernel.shape) == 2:
        perm = None if kernel.axes[0].side == "in" else (1, 0)
        return LinearView(node, kernel, bias if bias is not None and bias.axes else None, "dense",
                          node.inputs[0], kernel_perm=perm, per_token=per_token)
    if isinstance(op, (L.Conv1D, L.Conv2D, L.Conv3D)) and not isinstance(op, (L.Conv1DTranspose,
                                                                               L.Conv2DTranspose,
                                                                               L.Conv3DTranspose)):
        if getattr(op, "groups", 1) != 1 or getattr(op, "data_format", "channels_last") != "channels_last":
            return None
        rank = len(op.kernel_size)
        return LinearView(node, kernel, bias, "conv", node.inputs[0], tuple(op.kernel_size), tuple(op.strides),
                          tuple(op.dilation_rate), _padding(op, rank))
    return None


def linears(kg, node) -> list:
    """A transformer block's attention output and MLP down projections (read through probes), or the
    node itself."""
    probes = node.attrs.get("probes")
    if not probes:
        view = linear(kg, node)
        return [] if view is None else [view]
    out = []
    for name, (sub, axes) in probes.items():
        kernel, bias = _param(node, f"{sub}/kernel", full=True), _param(node, f"{sub}/bias", full=True)
        if kernel is not None:
            out.append(LinearView(node, kernel, bias if bias is not None and bias.axes else None, "dense",
                                  ("probe", node.name, name), row_axes=tuple(axes), per_token=True))
    return out


def batchnorm(kg, node) -> BatchNormView | None:
    op = kg.layer(node)
    if not isinstance(op, L.BatchNormalization) or node.kind != "identity":
        return None
    mean, var = _param(node, "moving_mean"), _param(node, "moving_variance")
    if mean is None or var is None:
        return None
    return BatchNormView(node, node.inputs[0], mean, var, float(op.epsilon))


def copy(kg):
    """A view of a full-width copy of the model with the same weights (layer names kept)."""
    from .graph import from_keras

    model = kg.model
    try:
        new = keras.models.clone_model(model)
    except Exception:  # noqa: BLE001 - some models (keras_hub's) only rebuild from their config
        new = type(model).from_config(model.get_config())
    new.set_weights(model.get_weights())
    return from_keras(new, **kg.options)
