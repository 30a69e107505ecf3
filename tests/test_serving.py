"""The serving path: BatchNorm folded into the layer before it gives the same outputs (Keras, SavedModel,
ONNX); latency is measured in the traced function."""

import keras
import numpy as np
import pytest
from keras import layers as L

import spa_keras as spa
from spa_keras.backends.fold import fold_batchnorm
from spa_keras.testing import perturb_statistics, weights_hash


def bn(x, **kw):
    return L.BatchNormalization(**kw)(x)


def every_producer(groups=2):
    """A BatchNorm after each kind of producer that folds, and some that must not fold (tf2onnx cannot
    convert Keras' grouped convolutions: ``groups=1`` for ONNX)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 4), name="image")
    x = L.ReLU()(bn(L.Conv2D(8, 3, padding="same", use_bias=False)(inp)))
    x = L.ReLU()(bn(L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)))
    x = bn(L.SeparableConv2D(8, 3, padding="same")(x), center=False)
    x = L.ReLU()(bn(L.Conv2D(8, 3, padding="same", groups=groups)(x), scale=False))
    y = bn(L.Conv2DTranspose(8, 3, strides=1, padding="same")(x))
    r = L.Conv2D(8, 1)(x)
    x = L.Add()([y, r])
    x = bn(x)  # after an add: stays
    a = L.Conv2D(8, 1, activation="relu")(x)
    x = bn(a)  # after an activation: stays
    inner = keras.Sequential([keras.Input((12, 12, 8)), L.Conv2D(8, 1), L.BatchNormalization(), L.ReLU()], name="inner")
    x = inner(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.ReLU()(bn(L.Dense(16)(x)))
    out = bn(L.Dense(5, name="logits")(x))  # an output BatchNorm folds too: the output stays the same tensor
    return perturb_statistics(keras.Model(inp, out))


def count_bn(model):
    n = 0
    for layer in model.layers:
        n += count_bn(layer) if isinstance(layer, keras.Model) else isinstance(layer, L.BatchNormalization)
    return n


def test_folded_batchnorm_gives_equal_outputs_and_the_model_is_unchanged():
    model = every_producer()
    before = weights_hash(model)
    folded = fold_batchnorm(model)
    assert count_bn(model) == 10 and count_bn(folded) == 2  # the ones after the add and the activation stay
    x = np.random.default_rng(0).standard_normal((3, 12, 12, 4)).astype("float32")
    want, got = np.asarray(model(x, training=False)), np.asarray(folded(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert weights_hash(model) == before


@pytest.mark.parametrize("name", ["MobileNetV2", "ResNet50"])
def test_folded_zoo_models_match(name):
    from spa_keras.testing import build_zoo_model, random_inputs

    model = spa.prune(perturb_statistics(build_zoo_model(name, 32)), ratio=0.5)
    folded = fold_batchnorm(model)
    assert count_bn(folded) == 0
    x = random_inputs(model, 2)
    want = np.asarray(model(x, training=False))
    np.testing.assert_allclose(np.asarray(folded(x)), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_export_for_serving_and_to_onnx_fold_by_default(tmp_path):
    import onnxruntime as ort
    import tensorflow as tf

    model = every_producer(groups=1)
    x = np.random.default_rng(1).standard_normal((2, 12, 12, 4)).astype("float32")
    want = np.asarray(model(x, training=False))
    tol = dict(rtol=1e-5, atol=1e-5 * np.abs(want).max())
    for fold in (True, False):
        path = spa.export_for_serving(model, str(tmp_path / "serving"), fold_batchnorm=fold)
        sig = tf.saved_model.load(path).signatures["serving_default"]
        out = sig(image=tf.constant(x))
        np.testing.assert_allclose(list(out.values())[0].numpy(), want, **tol)
    proto = spa.to_onnx(model)
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) <= 2
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], want, **tol)


def depthwise_as_groups():
    """Depthwise convolutions written as grouped ``Conv`` layers (ConvNeXt's way), one with a BatchNorm
    to fold, one with a multiplier, a 1-D one, and a grouped convolution that is not depthwise."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 6), name="image")
    x = bn(L.Conv2D(6, 7, padding="same", groups=6, name="dw7")(inp))
    x = L.Conv2D(12, 3, strides=2, padding="same", groups=6, use_bias=False, activation="relu", name="dw_x2")(x)
    x = L.Conv2D(12, 3, padding="same", groups=3, name="grouped")(x)
    x = L.Reshape((36, 12))(x)
    out = L.Conv1D(12, 5, padding="same", groups=12, dilation_rate=2, name="dw1d")(x)
    return perturb_statistics(keras.Model(inp, out))


def test_depthwise_convolutions_written_as_groups_are_served_as_depthwise(tmp_path):
    import onnxruntime as ort
    import tensorflow as tf

    from spa_keras.backends.fold import serving_model

    model = depthwise_as_groups()
    before = weights_hash(model)
    x = np.random.default_rng(1).standard_normal((2, 12, 12, 6)).astype("float32")
    want = np.asarray(model(x, training=False))
    tol = dict(rtol=1e-5, atol=1e-5 * np.abs(want).max())
    for fold in (True, False):
        served = serving_model(model, fold_batchnorm=fold)
        kinds = {layer.name: type(layer).__name__ for layer in served.layers}
        assert kinds["dw7"] == "DepthwiseConv2D" and kinds["dw_x2"] == "DepthwiseConv2D"
        assert kinds["dw1d"] == "DepthwiseConv1D" and kinds["grouped"] == "Conv2D"
        assert count_bn(served) == (0 if fold else 1)
        np.testing.assert_allclose(np.asarray(served(x)), want, **tol)
    assert weights_hash(model) == before
    assert [type(layer).__name__ for layer in model.layers].count("Conv2D") == 3
    sig = tf.saved_model.load(spa.export_for_serving(model, str(tmp_path / "serving"))).signatures["serving_default"]
    np.testing.assert_allclose(list(sig(image=tf.constant(x)).values())[0].numpy(), want, **tol)
    model = keras.Model(model.inputs, model.get_layer("dw_x2").output)  # tf2onnx converts no grouped Conv
    proto = spa.to_onnx(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": x})[0], np.asarray(model(x, training=False)), **tol)


def test_a_pruned_convnext_is_served_with_depthwise_layers():
    from spa_keras.backends.fold import serving_model
    from spa_keras.testing import build_zoo_model, random_inputs

    slim = spa.prune(build_zoo_model("ConvNeXtTiny", 32), ratio=0.5)
    served = serving_model(slim)
    grouped = [layer for layer in slim.layers if getattr(layer, "groups", 1) > 1]
    assert len(grouped) == 18
    kinds = {layer.name: type(layer).__name__ for layer in served.layers}
    assert {kinds[layer.name] for layer in grouped} == {"DepthwiseConv2D"}
    x = random_inputs(slim, 2)
    want = np.asarray(slim(x, training=False))
    np.testing.assert_allclose(np.asarray(served(x)), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_latency_is_measured_in_the_serving_path_and_eagerly():
    from spa_keras.metrics import measure_latency

    m = keras.Sequential([keras.Input((8,)), L.Dense(4)])
    served = measure_latency(m, batch_size=2, repeats=3, warmup=1)
    eager = measure_latency(m, batch_size=2, repeats=3, warmup=1, mode="eager")
    assert served["mode"] == "serving" and eager["mode"] == "eager" and served["repeats"] == 3
    assert served["median_s"] > 0 and "load" in served
    with pytest.raises(ValueError):
        measure_latency(m, mode="jit")


def small_convnet():
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, padding="same", use_bias=False)(inp)))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, padding="same", use_bias=False)(x)))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(4)(x))


def test_target_latency_measures_a_table_once_and_records_where_it_landed(tmp_path, monkeypatch):
    monkeypatch.setenv("SPA_KERAS_CACHE", str(tmp_path / "cache"))
    model = small_convnet()
    plan = spa.plan(model, target_latency=0.6, latency_batch_size=2)
    s = plan.settings
    assert s["target_latency"] == 0.6 and s["latency_batch_size"] == 2 and s["latency_before_s"] > 0
    assert s["latency_after_s"] == s["latency_rounds"][-1]["measured_s"] or len(s["latency_rounds"]) > 1
    assert s["latency_table"]["measured_now"] > 0 and (tmp_path / "cache" / "latency.json").exists()
    again = spa.plan(model, target_latency=0.6, latency_batch_size=2)
    assert again.settings["latency_table"]["measured_now"] == 0  # every layer timing came from the cache
    assert spa.apply(plan).count_params() <= model.count_params()


def test_target_latency_is_checked():
    with pytest.raises(spa.InvalidArgumentError, match="fraction"):
        spa.PruningConfig(target_latency=1.5)
    with pytest.raises(spa.InvalidArgumentError, match="only one of"):
        spa.PruningConfig(target_latency=0.5, target_macs=0.5)
