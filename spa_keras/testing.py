"""Helpers for tests and benchmarks: the keras.applications zoo and random inputs."""

from __future__ import annotations

import inspect as _inspect

import numpy as np

# Input sizes below a constructor's default that still build (weights=None); None: the default.
SMALL_SIZES = {"NASNetLarge": 96, "NASNetMobile": 96, "InceptionV3": 96, "InceptionResNetV2": 96, "Xception": 96}


def zoo_names() -> list:
    """Every model constructor in ``keras.applications``."""
    import keras

    return sorted(
        n for n in dir(keras.applications)
        if n[0].isupper() and _inspect.isfunction(getattr(keras.applications, n))
    )


def build_zoo_model(name: str, size: int = 64):
    """``keras.applications.<name>`` with ``weights=None``, logits out, at ``size`` (or the smallest
    size the architecture accepts, when that is larger)."""
    import keras

    size = max(size, SMALL_SIZES.get(name, 32))
    fn = getattr(keras.applications, name)
    kwargs = dict(weights=None, input_shape=(size, size, 3))
    if "classifier_activation" in _inspect.signature(fn).parameters:
        kwargs["classifier_activation"] = None
    return fn(**kwargs)


def random_inputs(model, batch_size: int = 2, seed: int = 0):
    """Standard-normal inputs (integers in ``[0, 10)`` for integer inputs) shaped for ``model``."""
    rng = np.random.default_rng(seed)
    out = []
    for x in model.inputs:
        shape = (batch_size,) + tuple(int(d or 8) for d in x.shape[1:])
        if "int" in str(x.dtype):
            out.append(rng.integers(0, 10, size=shape).astype(str(x.dtype)))
        else:
            out.append(rng.standard_normal(shape).astype("float32"))
    return out[0] if len(out) == 1 else out


def weights_hash(model) -> str:
    """A hash of every weight of ``model`` (to prove it was not changed)."""
    import hashlib

    h = hashlib.sha256()
    for w in model.weights:
        h.update(w.path.encode())
        h.update(np.ascontiguousarray(np.asarray(w.numpy())).tobytes())
    return h.hexdigest()


def perturb_statistics(model, seed: int = 0):
    """Give every normalisation layer, bias and PReLU non-trivial values (in place), so that a
    freshly built model exercises what an oracle must catch: slicing of gamma, beta, means, variances."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        name = w.name.split("/")[-1]
        if name in ("gamma", "beta", "moving_mean", "alpha"):
            w.assign(rng.uniform(0.2, 1.0, w.shape).astype(w.dtype))
        elif name == "moving_variance":
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype(w.dtype))
        elif name == "bias":
            w.assign(rng.normal(0, 0.1, w.shape).astype(w.dtype))
    return model


def build_vit(image_size: int = 32, patch: int = 4, dim: int = 48, depth: int = 3, heads: int = 4,
              mlp_dim: int = 96, classes: int = 10):
    """A small ViT: patch embedding, class token, position embedding, pre-norm transformer blocks with
    ``MultiHeadAttention``, an MLP head. The class token and the position embedding are custom layers
    registered through :func:`spa_keras.register_layer`."""
    import keras
    from keras import layers as L

    from .frontends.keras import register_layer

    n = (image_size // patch) ** 2
    inp = keras.Input((image_size, image_size, 3))
    x = L.Conv2D(dim, patch, strides=patch, name="patch_embed")(inp)
    x = L.Reshape((n, dim))(x)
    x = ClassToken(name="cls_token")(x)
    x = PositionEmbedding(name="pos_embed")(x)
    for i in range(depth):
        y = L.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
        y = L.MultiHeadAttention(heads, dim // heads, name=f"block{i}_attn")(y, y)
        x = L.Add()([x, y])
        y = L.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
        y = L.Dense(mlp_dim, activation="gelu", name=f"block{i}_mlp1")(y)
        y = L.Dense(dim, name=f"block{i}_mlp2")(y)
        x = L.Add()([x, y])
    x = L.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    out = L.Dense(classes, name="head")(x[:, 0])
    register_layer(ClassToken, kind="identity", params={"cls": {2: "out"}})
    register_layer(PositionEmbedding, kind="identity", params={"pos": {2: "out"}})
    return keras.Model(inp, out, name="vit")


def _vit_layers():
    import keras

    @keras.saving.register_keras_serializable("spa_keras")
    class ClassToken(keras.layers.Layer):
        """Prepends a learnt token to the sequence."""

        def build(self, shape):
            self.cls = self.add_weight(shape=(1, 1, shape[-1]), initializer="random_normal", name="cls")

        def call(self, x):
            b = keras.ops.shape(x)[0]
            return keras.ops.concatenate([keras.ops.repeat(self.cls, b, axis=0), x], axis=1)

        def compute_output_shape(self, shape):
            return (shape[0], None if shape[1] is None else shape[1] + 1, shape[2])

    @keras.saving.register_keras_serializable("spa_keras")
    class PositionEmbedding(keras.layers.Layer):
        """Adds a learnt embedding per position."""

        def build(self, shape):
            self.pos = self.add_weight(shape=(1, shape[1], shape[2]), initializer="random_normal", name="pos")

        def call(self, x):
            return x + self.pos

    return ClassToken, PositionEmbedding


ClassToken, PositionEmbedding = _vit_layers()
