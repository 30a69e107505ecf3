"""Where the post-training algorithms get their inputs: calibration samples, or synthetic ones.

- :func:`calibration_inputs`: up to ``n`` samples from a NumPy array, an ``(x, y)`` tuple, a
  ``tf.data.Dataset`` or a generator of batches, checked against the model's inputs.
- :func:`synthetic_inputs` with ``source="bn"``: inputs optimised so that, at every BatchNormalization,
  the batch mean and standard deviation of the incoming activations match the layer's moving
  statistics (the model's own memory of its training data; no data needed). ``source="random"``:
  standard-normal inputs. A model without BatchNormalization falls back to ``"random"``.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from ..data import iterate_batches
from ..errors import CalibrationDataError, InvalidArgumentError
from . import SOURCES


def calibration_inputs(model, data, n: int) -> list:
    """Up to ``n`` samples of ``data`` as one array per model input, in the input's dtype (labels are
    dropped). ``model`` is the frontend's graph object."""
    specs = model.input_specs()
    name = model.graph.name
    chunks = [[] for _ in specs]
    seen = 0
    try:
        batches = iterate_batches(data, batch_size=256, max_samples=n)
        for x, _ in batches:
            if isinstance(x, dict):  # named inputs: every model input by its name, in the model's order
                missing = [s.name for s in specs if s.name not in x]
                if missing or len(x) != len(specs):
                    raise CalibrationDataError(
                        f"calibration data is a dict with keys {sorted(x)} but model {name!r} takes the inputs "
                        f"{[s.name for s in specs]}" + (f": {missing} missing" if missing else ""))
                x = [x[s.name] for s in specs]
            flat = keras.tree.flatten(x)
            if len(flat) != len(specs):
                raise CalibrationDataError(
                    f"calibration data has {len(flat)} input arrays per sample but model "
                    f"{name!r} takes {len(specs)} inputs ({', '.join(s.name for s in specs)})"
                )
            for i, (a, spec) in enumerate(zip(flat, specs)):
                a = np.asarray(a)
                want = tuple(spec.shape)
                if a.ndim != len(want) + 1 or any(w is not None and w != g for w, g in zip(want, a.shape[1:])):
                    raise CalibrationDataError(
                        f"calibration data for input {spec.name!r} of model {name!r} has shape "
                        f"{a.shape}, expected (batch, {', '.join(str(w) for w in want)}): pass batches "
                        "shaped like the model's input"
                    )
                if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
                    raise CalibrationDataError(
                        f"calibration data for input {spec.name!r} has dtype {a.dtype}; pass numbers"
                    )
                if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
                    raise CalibrationDataError(f"calibration data for input {spec.name!r} holds NaN or Inf")
                chunks[i].append(a.astype(spec.dtype or np.float32))
            seen += len(flat[0])
    except InvalidArgumentError as e:
        if isinstance(e, CalibrationDataError):
            raise
        raise CalibrationDataError(f"calibration data: {e}") from None
    if seen == 0:
        raise CalibrationDataError("the calibration data yielded no sample")
    return [np.concatenate(c) for c in chunks]


def _bn_inputs(model):
    """``[(graph tensor id, moving mean, moving std, channels_first)]`` for every batch normalisation."""
    out = []
    for node in model.graph.nodes:
        bn = model.batchnorm(node)
        if bn is None:
            continue
        mean = np.asarray(model.weight(bn.mean.key), np.float32)
        std = np.sqrt(np.asarray(model.weight(bn.var.key), np.float32) + bn.epsilon)
        out.append((bn.source, mean, std, bn.channels_first))
    return out


def synthetic_inputs(model, n: int, source: str, steps: int, batch_size: int = 64,
                     seed: int = 0, progress=None) -> list:
    """``n`` synthetic samples per model input (see the module docstring).

    For ``"bn"``, each batch starts from standard-normal noise and takes ``steps`` Adam steps on
    ``Σ_BN (|μ_batch − μ_BN|² + |σ_batch − σ_BN|²) / C`` (the model runs in inference mode; its
    weights are not touched).
    """
    if source not in SOURCES:
        raise InvalidArgumentError(f"data_free must be one of {SOURCES}, got {source!r}")
    specs = model.input_specs()
    name = model.graph.name
    for s in specs:
        if s.dtype is not None and not str(s.dtype).startswith(("float", "bfloat")):
            raise CalibrationDataError(
                f"input {s.name!r} of model {name!r} has dtype {s.dtype}: synthetic inputs exist only "
                "for float inputs; pass calibration_data"
            )
        if any(d is None for d in s.shape):
            raise CalibrationDataError(
                f"input {s.name!r} of model {name!r} has an unknown size {(None,) + tuple(s.shape)}: pass "
                "calibration_data, or build the model with a fixed input shape"
            )
    rng = np.random.default_rng(seed)
    noise = [rng.standard_normal((n,) + tuple(s.shape)).astype(np.float32) for s in specs]
    bns = _bn_inputs(model) if source == "bn" else []
    if source == "bn" and not bns:
        warnings.warn(f"model {name!r} has no BatchNormalization: data_free='bn' falls back to random inputs")
    elif bns and not model.traceable:
        warnings.warn(f"model {name!r} ({model.kind}) cannot be differentiated: data_free='bn' falls back to "
                      "random inputs (pass calibration_data)")
        bns = []
    if not bns:
        if progress is not None:
            progress.update(n)
        return noise
    keep = {b[0] for b in bns}
    stats = [(t, tf.constant(m), tf.constant(s), first) for t, m, s, first in bns]

    def loss_fn(xs):
        values = model.run(xs, keep=keep)
        total = 0.0
        for t, mean, std, first in stats:
            a = tf.cast(values[t], tf.float32)
            if first:
                a = tf.experimental.numpy.moveaxis(a, 1, -1)
            a = tf.reshape(a, (-1, mean.shape[0]))
            m, v = tf.nn.moments(a, axes=[0])
            total += tf.reduce_mean(tf.square(m - mean)) + tf.reduce_mean(tf.square(tf.sqrt(v + 1e-8) - std))
        return total / len(stats)

    out = [[] for _ in specs]
    for start in range(0, n, batch_size):
        xs = [tf.Variable(a[start:start + batch_size]) for a in noise]
        opt = keras.optimizers.Adam(learning_rate=0.1)
        opt.build(xs)  # its slots exist before the step is traced

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = loss_fn(xs)
            opt.apply_gradients(zip(tape.gradient(loss, xs), xs))
            return loss

        for _ in range(steps):
            step()
        for i, v in enumerate(xs):
            out[i].append(v.numpy())
        if progress is not None:
            progress.update(len(xs[0].numpy()))
    return [np.concatenate(o) for o in out]
