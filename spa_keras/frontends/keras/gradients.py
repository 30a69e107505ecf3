"""Gradient statistics of a Keras model for the gradient criteria (Taylor, Hessian/OBD, SNIP)."""

from __future__ import annotations

import keras
import numpy as np

from ...errors import InvalidArgumentError


def gradient_stats(kg, data, loss=None, batch_size: int = 8, max_samples: int = 512):
    """Mean gradient and mean squared gradient (empirical Fisher) of the loss over ``data``, per
    parameter key, as two functions ``key -> array``. The model runs in inference mode (BatchNorm
    statistics are not touched).

    ``loss``: a Keras loss (name or callable ``loss(y_true, y_pred)``). With no targets in the data, the
    loss is half the mean squared output (the output's energy).
    """
    import tensorflow as tf

    from ...data import iterate_batches

    keys = [k for k, v in kg.variables.items() if v.trainable]
    tvars = [kg.variables[k] for k in keys]
    gsum = [np.zeros(v.shape, np.float64) for v in tvars]
    fsum = [np.zeros(v.shape, np.float64) for v in tvars]
    n = 0
    for x, y in iterate_batches(data, batch_size, max_samples):
        with tf.GradientTape() as tape:
            pred = kg.model(x, training=False)
            value = _loss_value(loss, y, pred)
        grads = tape.gradient(value, tvars)
        for i, g in enumerate(grads):
            if g is not None:
                g = np.asarray(g, np.float64)
                gsum[i] += g
                fsum[i] += g * g
        n += 1
    if n == 0:
        raise InvalidArgumentError("the data yielded no batch")
    grad = {k: g / n for k, g in zip(keys, gsum)}
    fisher = {k: f / n for k, f in zip(keys, fsum)}

    def zeros(k):  # a non-trainable parameter has no gradient
        return np.zeros(kg.variables[k].shape)

    return (lambda k: grad[k] if k in grad else zeros(k)), (lambda k: fisher[k] if k in fisher else zeros(k))


def _loss_value(loss, y, pred):
    outputs = keras.tree.flatten(pred)
    if y is None:
        return sum(0.5 * keras.ops.mean(keras.ops.square(o)) for o in outputs)
    if loss is None:
        out = outputs[0]
        if np.issubdtype(np.asarray(y).dtype, np.integer):
            probs = bool(keras.ops.all(out >= 0)) and bool(
                keras.ops.all(keras.ops.abs(keras.ops.sum(out, axis=-1) - 1.0) < 1e-3)
            )
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not probs)
        else:
            loss = keras.losses.MeanSquaredError()
    fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    return keras.ops.mean(fn(y, outputs[0]))
