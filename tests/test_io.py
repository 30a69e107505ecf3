"""Saving: TF Serving layout, atomic writes, versions never overwritten."""

import keras
import numpy as np
import pytest
from keras import layers as L

import spa_keras as spa


def small():
    inp = keras.Input((6,), name="features")
    x = L.Dense(8, activation="relu")(inp)
    return keras.Model(inp, L.Dense(3, name="scores")(x))


def test_export_for_serving_versions_and_signature(tmp_path):
    import tensorflow as tf

    model = spa.prune(small(), ratio=0.5)
    base = str(tmp_path / "models" / "m")
    first = spa.export_for_serving(model, base)
    second = spa.export_for_serving(model, base)
    assert first.endswith("/1") and second.endswith("/2")
    with pytest.raises(spa.OutputExistsError, match="never overwritten"):
        spa.export_for_serving(model, base, version=1)
    sig = tf.saved_model.load(second).signatures["serving_default"]
    assert list(sig.structured_input_signature[1]) == ["features"]
    x = np.random.default_rng(0).standard_normal((2, 6)).astype("float32")
    out = sig(features=tf.constant(x))
    assert list(out) == ["scores"]
    np.testing.assert_allclose(out["scores"].numpy(), np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    assert not [d for d in __import__("os").listdir(base) if d.startswith(".spa-")]


def test_save_model_is_atomic_and_refuses_to_overwrite(tmp_path):
    from spa_keras.io import save_model

    path = str(tmp_path / "m.keras")
    save_model(small(), path)
    size = (tmp_path / "m.keras").stat().st_size
    with pytest.raises(spa.InvalidArgumentError, match="exists"):
        save_model(small(), path)
    assert (tmp_path / "m.keras").stat().st_size == size
    with pytest.raises(spa.InvalidArgumentError, match=".keras or .h5"):
        save_model(small(), str(tmp_path / "m.txt"))


def test_a_saved_model_directory_is_copied_in_as_a_new_version(tmp_path):
    import os
    import stat

    import tensorflow as tf

    base = str(tmp_path / "m")
    first = spa.export_for_serving(small(), base)
    assert stat.S_IMODE(os.stat(first).st_mode) & 0o055, "readable by TF Serving running as another user"
    second = spa.export_for_serving(first, base)
    assert second.endswith("/2")
    assert "serving_default" in tf.saved_model.load(second).signatures
    with pytest.raises(spa.InvalidArgumentError, match="not a SavedModel"):
        spa.export_for_serving(str(tmp_path), base)
    with pytest.raises(spa.InvalidArgumentError, match="positive integer"):
        spa.export_for_serving(small(), base, version=0)
