"""Pruning during training (soft masks, strip), group sparsity, pruning at initialisation, fine-tuning."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import layers as L

import spa_keras as spa
from spa_keras.callbacks import schedule_fraction
from spa_keras.metrics import count_macs


def cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(16, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    y = L.Conv2D(16, 3, padding="same", name="c2")(x)
    x = L.ReLU()(L.Add()([x, y]))
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(24, 3, padding="same", activation="relu", name="c3")(x)
    x = L.Flatten()(x)
    x = L.Dense(32, activation="relu", name="fc")(x)
    model = keras.Model(inp, L.Dense(4, name="out")(x))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype("int32") + 2 * (x[:, :, :4].mean(axis=(1, 2, 3)) > 0)
    return x, y


def test_training_the_slim_model_leaves_the_original_untouched():
    """Weights are read as snapshots that share the variables' buffers: a weight copied whole into the
    slim model (``out``, whose inputs the ignored layer ``fc`` keeps) must not tie the two models together."""
    from spa_keras.frontends.keras import snapshot
    from spa_keras.testing import weights_hash

    model, (x, y) = cnn(), data()
    before = weights_hash(model)
    slim = spa.prune(model, ratio=0.5, ignored_layers=["fc"])
    np.testing.assert_array_equal(slim.get_layer("out").kernel.numpy(), model.get_layer("out").kernel.numpy())
    slim.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    slim.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert not np.array_equal(slim.get_layer("out").kernel.numpy(), model.get_layer("out").kernel.numpy())
    assert weights_hash(model) == before
    kernel = model.get_layer("c1").kernel
    seen = snapshot(kernel)
    with pytest.raises(ValueError):
        seen[0, 0, 0, 0] = 1.0
    old = seen.copy()
    kernel.assign(np.zeros(kernel.shape, "float32"))
    np.testing.assert_array_equal(seen, old)  # a snapshot keeps the value it was read with


def test_schedules():
    assert schedule_fraction("constant", 0.0) == 1.0
    assert schedule_fraction("linear", 0.25) == 0.25
    assert schedule_fraction("polynomial", 0.5, power=3) == pytest.approx(0.875)
    assert schedule_fraction("linear", 2.0) == 1.0
    with pytest.raises(spa.InvalidArgumentError):
        schedule_fraction("cubic", 0.5)


def test_callback_masks_during_fit_and_strip_matches_the_masked_model():
    import tensorflow as tf

    model = cnn()
    x, y = data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    cb = spa.PruningCallback(ratio=0.5, schedule="linear", frequency=4)
    history = model.fit(ds, epochs=3, callbacks=[cb], verbose=0)
    assert "pruning_macs_fraction" in history.history
    fractions = history.history["pruning_macs_fraction"]
    assert fractions[-1] < fractions[0] <= 1.0, "MACs fall along the schedule"
    slim = spa.strip(model)
    assert slim.count_params() < model.count_params()
    assert slim.get_layer("c3").filters == 12 and slim.get_layer("fc").units == 16
    np.testing.assert_allclose(np.asarray(slim(x[:8])), np.asarray(model(x[:8])), rtol=1e-4, atol=1e-5)


def test_checkpoint_mid_training_then_resume_and_strip(tmp_path):
    model = cnn()
    x, y = data()
    cb = spa.PruningCallback(target_macs=0.4, schedule="polynomial", end_step=16)
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[cb], verbose=0)
    path = str(tmp_path / "mid.keras")
    model.save(path)
    back = keras.saving.load_model(path)
    assert int(back.optimizer.iterations.numpy()) == 8
    cb2 = spa.PruningCallback(target_macs=0.4, schedule="polynomial", end_step=16)
    back.fit(x, y, batch_size=16, epochs=1, callbacks=[cb2], verbose=0)
    assert cb2.current_fraction() == 1.0, "the schedule resumed from the optimizer's step"
    slim = spa.strip(back)
    macs = count_macs(spa.inspect(slim).graph) / count_macs(spa.inspect(model).graph)
    assert abs(macs - 0.4) < 0.02
    np.testing.assert_allclose(np.asarray(slim(x[:8])), np.asarray(back(x[:8])), rtol=1e-4, atol=1e-5)


def test_strip_of_an_unmasked_model_changes_nothing():
    model = cnn()
    slim = spa.strip(model)
    assert slim.count_params() == model.count_params()


def test_group_sparsity_shrinks_the_least_important_groups_most():
    model = cnn()
    x, y = data()
    w0 = model.get_layer("c3").kernel.numpy()
    keras.utils.set_random_seed(1)
    model.fit(x, y, batch_size=16, epochs=2, callbacks=[spa.GroupSparsity(reg=5.0, alpha=8.0)], verbose=0)
    ref = cnn()
    keras.utils.set_random_seed(1)
    ref.fit(x, y, batch_size=16, epochs=2, verbose=0)
    norms = np.linalg.norm(model.get_layer("c3").kernel.numpy().reshape(-1, 24), axis=0)
    ref_norms = np.linalg.norm(ref.get_layer("c3").kernel.numpy().reshape(-1, 24), axis=0)
    assert norms.sum() < 0.8 * ref_norms.sum(), "the penalty shrinks the weights"
    assert np.std(norms / ref_norms) > 0.01, "and not uniformly"
    assert w0.shape == model.get_layer("c3").kernel.shape


def test_pruning_at_initialisation_with_snip_then_fit():
    model = cnn()
    x, y = data()
    slim = spa.prune(model, ratio=0.5, criterion="snip", data=(x[:32], y[:32]))
    slim.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    h = slim.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]


def test_finetune_with_distillation_improves_the_pruned_model():
    model = cnn()
    x, y = data(256)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    slim = spa.prune(model, ratio=0.5)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    before = float(loss(y, slim(x)))
    tuned, history = spa.finetune(slim, (x, y), epochs=3, teacher=model, batch_size=32, verbose=0)
    assert float(loss(y, tuned(x))) < before
    assert tuned is not slim and tuned.count_params() == slim.count_params()


MIRRORED = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np, spa_keras as spa
    from keras import layers as L

    def model():
        keras.utils.set_random_seed(0)
        inp = keras.Input((8, 8, 1))
        x = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
        x = L.Conv2D(8, 3, padding="same", activation="relu")(x)
        return keras.Model(inp, L.Dense(4)(L.GlobalAveragePooling2D()(x)))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 4, 64).astype("int32")
    slim = spa.prune(model(), ratio=0.5)
    out = {}
    for name, strategy in (("single", None), ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        keras.utils.set_random_seed(1)
        tuned, _ = spa.finetune(slim, (x, y), epochs=2, batch_size=16, optimizer="sgd", learning_rate=0.05,
                                strategy=strategy, shuffle=False, verbose=0)
        out[name] = [w.tolist() for w in tuned.get_weights()]
        out[name + "_replicas"] = (strategy or tf.distribute.get_strategy()).num_replicas_in_sync
    json.dump(out, sys.stdout)
""")


def test_finetune_under_mirrored_strategy_matches_a_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["mirrored_replicas"] == 2
    for a, b in zip(out["single"], out["mirrored"]):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-5)
