"""BatchNorm folded into the layer before it, for serving.

A ``BatchNormalization`` at inference is ``y = γ (z − μ) / sqrt(σ² + ε) + β``, an affine map per channel;
when ``z`` is the output of a convolution or dense layer with a linear activation that nothing else
reads, the map moves into that layer's kernel and bias:

    s = γ / sqrt(σ² + ε),    W' = W · s (per output channel),    b' = (b − μ) · s + β

and the BatchNorm disappears. A traced graph then runs one multiply and one add fewer per BatchNorm
over the whole activation (they are memory-bound on a CPU; TensorFlow's grappler does not fold them
itself, because the statistics are variables). The folded model computes the same outputs as the
original *at inference* (``training=False``); it is meant for export, not for training.

:func:`serving_model` also writes each grouped convolution with one input channel per group (a depthwise
convolution written as ``Conv2D(groups=channels)``, as ConvNeXt does) as the ``DepthwiseConv`` layer it
is. TensorFlow has no grouped convolution on the CPU, so Keras compiles those with XLA, which ran
ConvNeXt's 7×7 ones 15–130x slower than TensorFlow's depthwise kernel here
(``benchmarks/grouped_conv.py``); tf2onnx cannot convert them at all. The kernel ``(*window, 1, groups · m)``
is the depthwise kernel ``(*window, groups, m)`` reshaped (output channel ``g · m + j`` in both), so the
outputs are the same.
"""

from __future__ import annotations

import keras
import numpy as np

from ..frontends.keras import fill_in, functional_of, is_model, pack_inputs, pack_outputs, topological_nodes

L = keras.layers
_TRANSPOSE = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_FOLDABLE = (L.Conv1D, L.Conv2D, L.Conv3D, L.Dense) + _TRANSPOSE + _DEPTHWISE + _SEPARABLE


def depthwise_grouped(layer) -> bool:
    """A ``Conv1D``/``Conv2D`` (not a subclass) whose groups each read one input channel."""
    return (type(layer) in (L.Conv1D, L.Conv2D) and layer.groups > 1 and layer.built
            and layer.kernel.shape[-2] == 1)


def _depthwise_config(layer):
    """``(class, config)`` of the ``DepthwiseConv`` layer computing what the depthwise-grouped ``layer``
    computes."""
    cfg = layer.get_config()
    renamed = {"kernel_initializer": "depthwise_initializer", "kernel_regularizer": "depthwise_regularizer",
               "kernel_constraint": "depthwise_constraint"}
    out = {renamed.get(k, k): v for k, v in cfg.items() if k not in ("filters", "groups", "lora_rank", "lora_alpha")}
    out["depth_multiplier"] = cfg["filters"] // cfg["groups"]
    return (L.DepthwiseConv1D if isinstance(layer, L.Conv1D) else L.DepthwiseConv2D), out


def as_depthwise(layer):
    """The ``DepthwiseConv`` layer computing what the depthwise-grouped ``layer`` computes (no weights)."""
    cls, cfg = _depthwise_config(layer)
    return cls.from_config(cfg)


def _last_axis_bn(layer, rank) -> bool:
    axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
    return axis is not None and axis in (-1, rank - 1)


def _producer_ok(op) -> bool:
    return (isinstance(op, _FOLDABLE) and getattr(op, "data_format", "channels_last") == "channels_last"
            and op.activation in (None, keras.activations.linear))


def _pairs(fmodel) -> dict:
    """``{id(bn layer): producer layer}`` for the foldable pairs of this Functional graph: the BatchNorm
    and its producer are called once, and the producer's output is read by the BatchNorm alone."""
    uses, producers, calls = {}, {}, {}
    for knode in topological_nodes(fmodel):
        calls[id(knode.operation)] = calls.get(id(knode.operation), 0) + 1
        for t in knode.input_tensors:
            uses[id(t)] = uses.get(id(t), 0) + 1
        for t in knode.output_tensors:
            producers[id(t)] = knode.operation
    for t in keras.tree.flatten(fmodel.outputs):
        uses[id(t)] = uses.get(id(t), 0) + 1  # an output is read outside: never fold it away
    out = {}
    for knode in topological_nodes(fmodel):
        bn = knode.operation
        if not isinstance(bn, L.BatchNormalization) or calls[id(bn)] != 1 or len(knode.input_tensors) != 1:
            continue
        x = knode.input_tensors[0]
        prod = producers.get(id(x))
        if (prod is not None and _producer_ok(prod) and calls[id(prod)] == 1 and uses[id(x)] == 1
                and _last_axis_bn(bn, len(x.shape))):
            out[id(bn)] = prod
    return out


def _fold_weights(prod, new, bn) -> None:
    """Write ``prod``'s weights with ``bn`` folded in into ``new`` (the same layer with a bias)."""
    eps = float(bn.epsilon)
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    var = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros_like(mean)
    s = gamma / np.sqrt(var + eps)
    values = {_short(w): np.asarray(w.numpy(), np.float64) for w in prod.weights}
    bias = values.get("bias", np.zeros_like(mean))
    if isinstance(prod, _DEPTHWISE):
        k = values["kernel"]  # (*kernel_size, c_in, multiplier): output channel c*m + j
        values["kernel"] = k * s.reshape(k.shape[-2], k.shape[-1])
    elif isinstance(prod, _SEPARABLE):
        values["pointwise_kernel"] = values["pointwise_kernel"] * s
    elif isinstance(prod, _TRANSPOSE):
        values["kernel"] = values["kernel"] * s[:, None]  # (*kernel_size, c_out, c_in)
    else:
        values["kernel"] = values["kernel"] * s
    values["bias"] = (bias - mean) * s + beta
    new.set_weights([values[_short(w)].reshape(w.shape).astype(w.dtype) for w in new.weights])


def _short(w) -> str:
    return w.path.rsplit("/", 1)[-1]


class _Folder:
    """Replays a model with new layers (from their configs): the folded BatchNorms left out (``fold``),
    depthwise-grouped convolutions as ``DepthwiseConv`` layers (``depthwise``)."""

    def __init__(self, fold: bool = True, depthwise: bool = False):
        self.fold, self.depthwise = fold, depthwise
        self.new_ops = {}  # id(old layer or model) -> new
        self.folded = {}  # id(producer) -> its BatchNorm

    def layer(self, layer):
        if id(layer) not in self.new_ops:
            if is_model(layer):
                self.new_ops[id(layer)] = self.model(layer)
            else:
                served = self.depthwise and depthwise_grouped(layer)
                cls, cfg = _depthwise_config(layer) if served else (type(layer), layer.get_config())
                if id(layer) in self.folded:
                    cfg["use_bias"] = True
                self.new_ops[id(layer)] = cls.from_config(cfg)
        return self.new_ops[id(layer)]

    def model(self, model):
        fmodel = functional_of(model)
        pairs = _pairs(fmodel) if self.fold else {}
        bns = {id(knode.operation): knode.operation for knode in topological_nodes(fmodel) if id(knode.operation) in pairs}
        self.folded.update({id(prod): bns[b] for b, prod in pairs.items()})
        inputs = [keras.Input(batch_shape=tuple(x.shape), dtype=x.dtype, name=x.name.split(":")[0])
                  for x in fmodel.inputs]
        tmap = {id(x): y for x, y in zip(fmodel.inputs, inputs)}
        for knode in topological_nodes(fmodel):
            op = knode.operation
            args, kwargs = fill_in(knode, tmap)
            if id(op) in pairs:  # the BatchNorm: its output is the folded layer's
                out = args[0]
            elif isinstance(op, L.Layer):
                out = self.layer(op)(*args, **kwargs)
            else:
                out = op(*args, **kwargs)
            for x, y in zip(knode.outputs, keras.tree.flatten(out)):
                tmap[id(x)] = y
        outputs = [tmap[id(t)] for t in fmodel.outputs]
        return keras.Model(pack_inputs(fmodel, inputs), pack_outputs(fmodel, outputs), name=model.name)

    def copy_weights(self, model):
        for old in _all_layers(model):
            new = self.new_ops.get(id(old))
            if new is None or is_model(old):
                continue
            if id(old) in self.folded:
                _fold_weights(old, new, self.folded[id(old)])
            elif old.weights:
                new.set_weights([v.reshape(w.shape) for v, w in zip(old.get_weights(), new.weights)])


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if is_model(layer):
            yield from _all_layers(layer)


def fold_batchnorm(model) -> keras.Model:
    """A new model computing what ``model`` computes at inference, with every ``BatchNormalization`` that
    directly follows a convolution (plain, grouped, depthwise, separable, transposed) or ``Dense`` layer
    with a linear activation folded into that layer's kernel and bias (see the module's docstring).
    BatchNorms that cannot fold (after an activation, after a shared layer or an add, on another axis,
    or that are a model output) stay. ``model`` is not changed; nested models are folded too.

    >>> import keras, numpy as np
    >>> from spa_keras.backends.fold import fold_batchnorm
    >>> x = keras.Input((8, 8, 3))
    >>> m = keras.Model(x, keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(x))))
    >>> f = fold_batchnorm(m)
    >>> sum(isinstance(l, keras.layers.BatchNormalization) for l in f.layers)
    0
    >>> d = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    >>> bool(np.allclose(f(d), m(d, training=False), atol=1e-5))
    True
    """
    return _replay(model, _Folder())


def serving_model(model, fold_batchnorm: bool = True) -> keras.Model:
    """``model`` as it is best served: depthwise-grouped convolutions written as ``DepthwiseConv`` layers
    (see the module's docstring) and, with ``fold_batchnorm``, the BatchNorms folded as by
    :func:`fold_batchnorm`. It computes what ``model`` computes at inference; ``model`` is not changed.

    >>> import keras
    >>> from spa_keras.backends.fold import serving_model
    >>> x = keras.Input((16, 16, 8))
    >>> m = keras.Model(x, keras.layers.Conv2D(8, 7, padding="same", groups=8)(x))
    >>> [type(l).__name__ for l in serving_model(m).layers]
    ['InputLayer', 'DepthwiseConv2D']
    """
    return _replay(model, _Folder(fold=fold_batchnorm, depthwise=True))


def _replay(model, folder: _Folder) -> keras.Model:
    new = folder.model(model)
    folder.copy_weights(model)
    return new
