"""What the data-pruning functions need of a Keras model: its class probabilities, and its embeddings
(the output of a chosen layer, by default the input of its last layer), computed a chunk at a time."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError
from .sources import CHUNK, as_data


def looks_like_logits(out) -> bool:
    """Whether model outputs are logits: not already probabilities (in [0, 1], rows summing to 1, or one
    sigmoid unit)."""
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 1 or out.shape[-1] == 1:
        return not (out.min() >= 0 and out.max() <= 1)
    return not (out.min() >= 0 and out.max() <= 1 and np.allclose(out.sum(axis=-1), 1, atol=1e-3))


def to_probabilities(out, from_logits=None) -> np.ndarray:
    """Class probabilities ``(n, C)`` from a model's outputs: softmax outputs as they are, logits through a
    softmax (``from_logits=None`` decides by whether the rows are already distributions); a single sigmoid
    unit (or logit) becomes ``[1 − p, p]``."""
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise InvalidArgumentError(f"the model's output has shape {out.shape[1:]} per sample: data pruning needs "
                                   "class scores (n, C)")
    if from_logits is None:
        from_logits = looks_like_logits(out)
    if out.shape[1] == 1:
        p = 1 / (1 + np.exp(-out[:, 0])) if from_logits else out[:, 0]
        return np.stack([1 - p, p], axis=1)
    if from_logits:
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return out


def check_model(model, what="build_model()"):
    import keras

    if not isinstance(model, keras.Model):
        raise InvalidArgumentError(f"{what} must return a keras.Model, got {type(model).__name__}")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", True):
        raise InvalidArgumentError(f"{what} must return a compiled model (call model.compile(optimizer, loss) in it)")
    return model


def predict_chunks(model, data, indices=None, batch_size=1024):
    """``(start, outputs)`` of ``model`` over ``data`` (see :mod:`.sources`) in order, a chunk at a time."""
    for start, xc in data.chunks(indices):
        yield start, model.predict(xc, batch_size=batch_size, verbose=0)


def _layer_output(model, layer):
    import keras

    if layer is None:
        last = model.layers[-1] if model.layers else None
        try:
            tensor = last.input
        except (AttributeError, ValueError):
            tensor = None
        inputs = [id(t) for t in keras.tree.flatten(model.inputs or [])]
        if last is None or tensor is None or isinstance(tensor, (list, tuple, dict)) or id(tensor) in inputs:
            raise InvalidArgumentError(
                f"model {model.name!r} has no penultimate layer to embed (its last layer "
                f"{getattr(last, 'name', None)!r} reads the model's input directly, or several tensors): pass "
                f"layer=<name> of a layer whose output describes the samples")
        return tensor
    if isinstance(layer, int):
        try:
            return model.layers[layer].output
        except IndexError:
            raise InvalidArgumentError(f"layer={layer}: model {model.name!r} has {len(model.layers)} layers") from None
    try:
        return model.get_layer(layer).output
    except ValueError:
        names = ", ".join(l.name for l in model.layers)
        raise InvalidArgumentError(f"model {model.name!r} has no layer {layer!r}; its layers: {names}") from None


def embedding_model(model, layer=None):
    """A ``keras.Model`` from ``model``'s inputs to the output of ``layer`` (a name or an index; by default
    the input of the last layer, the penultimate features)."""
    import keras

    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise InvalidArgumentError(f"model {getattr(model, 'name', model)!r} has no functional graph (a subclassed "
                                   "model, or a Sequential model never built): build it on an input first")
    return keras.Model(inputs, _layer_output(model, layer))


def embeddings(model, x, layer=None, batch_size: int = 1024, dtype="float32") -> np.ndarray:
    """The output of ``layer`` (default: the penultimate features) for every sample of ``x``, as an
    ``(n, d)`` array, computed a chunk of 65,536 samples at a time. Outputs with spatial axes are averaged
    over them (global average pooling), others flattened.

    >>> import keras, numpy as np
    >>> from spa_keras import data_pruning as dp
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="features"), keras.layers.Dense(2)])
    >>> dp.embeddings(model, np.ones((5, 4))).shape
    (5, 3)
    """
    data = x if hasattr(x, "chunks") else as_data(x, need_labels=False)
    emb = embedding_model(model, layer)
    out = None
    for start, o in predict_chunks(emb, data, batch_size=batch_size):
        o = np.asarray(o)
        if o.ndim > 2:
            o = o.mean(axis=tuple(range(1, o.ndim - 1)))
        o = o.reshape(len(o), -1)
        if out is None:
            out = np.empty((data.n, o.shape[1]), dtype=dtype)
        out[start:start + len(o)] = o
    return out


def default_model(input_shape, classes: int, learning_rate: float = 1e-3):
    """A small compiled classifier to score data with when there is no model of one's own: for images
    ``(H, W, C)`` two 3×3 convolutions (16, 32; max-pooling between them), global average pooling; for
    anything else a dense layer of 128 on the flattened input; then a dense ``"features"`` layer of 64
    (the embedding) and ``classes`` logits. Adam, sparse categorical cross-entropy from logits.

    >>> import functools
    >>> from spa_keras import data_pruning as dp
    >>> build = functools.partial(dp.default_model, (4,), 2)     # a build_model for dp.scores
    >>> build().output.shape
    (None, 2)
    """
    import keras

    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 2:
        raise InvalidArgumentError(f"classes must be an integer >= 2, got {classes!r}")
    L = keras.layers
    input_shape = tuple(input_shape)
    inp = keras.Input(input_shape)
    if len(input_shape) == 3:
        h = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
        h = L.MaxPooling2D()(h) if None not in input_shape[:2] and min(input_shape[:2]) >= 4 else h
        h = L.Conv2D(32, 3, padding="same", activation="relu")(h)
        h = L.GlobalAveragePooling2D()(h)
    else:
        h = L.Dense(128, activation="relu")(L.Flatten()(inp) if len(input_shape) > 1 else inp)
    h = L.Dense(64, activation="relu", name="features")(h)
    model = keras.Model(inp, L.Dense(int(classes), name="logits")(h))
    model.compile(keras.optimizers.Adam(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


__all__ = ["embeddings", "embedding_model", "to_probabilities", "default_model", "CHUNK"]
