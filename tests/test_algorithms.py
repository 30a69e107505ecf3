"""Post-training algorithms: OBSPA (with and without data) and the two-phase reconstruction."""

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
from spa_keras.algorithms.obspa import OBSPA, find_consumers
from spa_keras.algorithms.sources import synthetic_inputs
from spa_keras.backends.keras import verify
from spa_keras.frontends.keras import from_keras
from spa_keras.graph import analyse
from spa_keras.metrics import count_params
from spa_keras.testing import weights_hash


def rank_deficient(n=512, rank=8, width=16, seed=0):
    """Inputs whose ``width`` channels span only ``rank`` dimensions."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, rank)) @ rng.standard_normal((rank, width))).astype("float32")


def two_dense(width=16):
    x = keras.Input((width,))
    h = L.Dense(width, name="d1")(x)  # linear: its outputs keep the input's rank
    return keras.Model(x, L.Dense(10, name="d2")(h))


def convnet(seed=0):
    """BN without conv bias, a residual add, a depthwise conv, flatten into dense."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    x = L.ReLU()(L.BatchNormalization(name="bn0")(L.Conv2D(16, 3, padding="same", use_bias=False, name="c0")(inp)))
    y = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(16, 3, padding="same", use_bias=False, name="c1")(x)))
    y = L.Conv2D(16, 3, padding="same", name="c2")(y)
    x = L.ReLU()(L.Add()([x, y]))
    x = L.ReLU()(L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x))
    x = L.Conv2D(24, 1, activation="relu", name="pw")(x)
    x = L.Flatten()(x)
    x = L.Dense(32, activation="relu", name="fc")(x)
    return keras.Model(inp, L.Dense(5, name="out")(x))


def images(n=256, seed=1, shape=(12, 12, 3)):
    rng = np.random.default_rng(seed)
    # smooth, correlated channels: a realistic Hessian, not the identity
    base = rng.standard_normal((n, shape[0] // 3, shape[1] // 3, 1))
    base = np.repeat(np.repeat(base, 3, axis=1), 3, axis=2)
    return (base + 0.3 * rng.standard_normal((n,) + shape)).astype("float32")


def test_rank_deficient_input_is_pruned_with_zero_output_error():
    model = two_dense()
    x = rank_deficient()
    before = weights_hash(model)
    plan = spa.plan(model, ratio=0.5, calibration_data=x, algorithm_options={"damp": 1e-10}, verbose=False)
    slim = spa.apply(plan)
    assert slim.get_layer("d1").units == 8
    ref = model(x).numpy()
    err = np.abs(slim(x).numpy() - ref).max() / np.abs(ref).max()
    assert err < 1e-4, err
    plain = spa.prune(model, ratio=0.5, criterion="l2")
    assert np.abs(plain(x).numpy() - ref).max() / np.abs(ref).max() > 0.05  # removal alone loses a lot
    assert weights_hash(model) == before


def test_compensation_never_worse_than_plain_removal():
    model = convnet()
    x = images()
    kg = from_keras(model)
    analysis = analyse(kg.graph)
    obs = OBSPA(kg, analysis, [x], damp=1e-6)
    assert {c.mode for c in obs.consumers} >= {"patches", "dense"}
    for ratio in (0.25, 0.5, 0.75):
        plan = spa.plan(kg, ratio=ratio, criterion="l1")  # any removal, not OBSPA's own choice
        comp, plain = obs.layer_error(plan, True), obs.layer_error(plan, False)
        assert comp.keys() == plain.keys() and len(comp) >= 4
        for layer in comp:
            assert comp[layer] <= plain[layer] * (1 + 1e-6) + 1e-9, (layer, comp[layer], plain[layer])
        assert sum(comp.values()) < 0.9 * sum(plain.values())


def test_channel_covariance_mode_for_large_convs():
    model = convnet()
    kg = from_keras(model)
    modes = {c.node.layer: c.mode for c in find_consumers(kg, analyse(kg.graph), max_dim=64)}
    assert modes["c1"] == "channels" and modes["fc"] == "channels" and modes["out"] == "dense"
    plan = spa.plan(model, ratio=0.5, calibration_data=images(), verbose=False,
                    algorithm_options={"max_dim": 64, "recalibrate_bn": False})  # the oracle needs BN as it was
    slim = spa.apply(plan)
    assert verify(plan.source, plan, slim, images(4, seed=3))["passed"]


@pytest.mark.parametrize("source", ["bn", "random"])
def test_obspa_without_data_passes_the_oracle(source):
    model = convnet()
    before = weights_hash(model)
    plan = spa.plan(model, ratio=0.5, algorithm="obspa", data_free=source, calibration_samples=32,
                    algorithm_options={"synthetic_steps": 20}, verbose=False)
    slim = spa.apply(plan)
    assert plan.settings["algorithm"] == "obspa" and plan.settings["source"] == source
    assert slim.count_params() == count_params(plan.graph, plan) < model.count_params()
    x = images(8, seed=5)
    assert slim(x).shape == model(x).shape
    assert verify(plan.source, plan, slim, x)["passed"]  # the oracle with the compensation applied
    assert weights_hash(model) == before


def test_obspa_beats_magnitude_on_layer_outputs_with_calibration_data():
    model = convnet()
    x = images(512)
    plan = spa.plan(model, ratio=0.5, calibration_data=x, verbose=False)
    obspa = spa.apply(plan)
    l2 = spa.prune(model, ratio=0.5, criterion="l2")
    ref = model(x).numpy()
    err = lambda m: float(np.mean((m(x).numpy() - ref) ** 2))  # noqa: E731
    assert err(obspa) < err(l2)


def test_batchnorm_statistics_are_re_estimated_on_calibration_data():
    model = convnet()
    x = images(128) * 2 + 1  # unlike the statistics the model holds
    slim = spa.prune(model, ratio=0.5, calibration_data=x, verbose=False)
    kept = spa.prune(model, ratio=0.5, calibration_data=x, verbose=False, algorithm_options={"recalibrate_bn": False})
    probe = keras.Model(slim.input, slim.get_layer("bn0").input)
    mean = probe(x).numpy().reshape(-1, slim.get_layer("bn0").moving_mean.shape[0]).mean(0)
    np.testing.assert_allclose(slim.get_layer("bn0").moving_mean.numpy(), mean, rtol=1e-3, atol=1e-4)
    assert not np.allclose(kept.get_layer("bn0").moving_mean.numpy(), mean, atol=1e-2)


def test_bn_matched_synthetic_inputs_match_the_statistics_better_than_noise():
    from spa_keras.algorithms.sources import _bn_inputs

    model = convnet()
    kg = from_keras(model)
    # the model "remembers" data unlike standard-normal noise: its BN statistics come from that data
    real = images(256) * 0.5 + 1.5
    values = kg.run(real)
    for node in kg.graph.nodes:
        op = node.ref[0]
        if isinstance(op, L.BatchNormalization):
            a = np.asarray(values[node.inputs[0]]).reshape(-1, op.moving_mean.shape[0])
            op.moving_mean.assign(a.mean(0))
            op.moving_variance.assign(a.var(0))

    def gap(x):
        vals = kg.run(x)
        return sum(float(np.mean((np.asarray(vals[t]).reshape(-1, len(m)).mean(0) - m) ** 2))
                   + float(np.mean((np.asarray(vals[t]).reshape(-1, len(m)).std(0) - s) ** 2))
                   for t, m, s, _ in _bn_inputs(kg))

    noise = synthetic_inputs(kg, 32, "random", steps=0)
    synth = synthetic_inputs(kg, 40, "bn", steps=60, batch_size=20)  # two batches
    assert gap(synth[0]) < 0.25 * gap(noise[0])


def test_reconstruction_recovers_more_than_removal():
    model = convnet()
    x = images(256)
    pruner = spa.Pruner(ratio=0.5, algorithm="reconstruct", calibration_data=x, algorithm_options={"epochs": (4, 4)})
    slim = pruner.prune(model, verbose=False)  # phase 1 while planning, phase 2 on the written model
    history = pruner.last_plan.settings["reconstruction_loss"]
    assert pruner.report.settings["reconstruction_loss"] == history
    assert len(history["phase1"]) == 4 and len(history["phase2"]) == 4
    assert history["phase2"][-1] < history["phase2"][0]
    plain = spa.prune(model, ratio=0.5, criterion="l2")
    assert slim.count_params() == plain.count_params()  # same channels (criterion l2), other weights
    ref = model(x).numpy()
    err = lambda m: float(np.mean((m(x).numpy() - ref) ** 2))  # noqa: E731
    assert err(slim) < err(plain)


def test_calibration_data_forms_are_accepted():
    import tensorflow as tf

    model = two_dense()
    x = rank_deficient(64)
    opts = dict(ratio=0.5, calibration_samples=48, verbose=False)
    gen = (x[i:i + 16] for i in range(0, 64, 16))
    for data in (x, (x, np.zeros(64)), tf.data.Dataset.from_tensor_slices(x).batch(16), gen):
        p = spa.plan(model, calibration_data=data, **opts)
        assert p.settings["samples"] == 48 and p.settings["source"] == "calibration"


@pytest.mark.parametrize("bad, words", [
    (np.zeros((8, 15), "float32"), ["(8, 15)", "(batch, 16)"]),
    (np.zeros((8, 4, 16), "float32"), ["(8, 4, 16)"]),
    (np.array([["a"] * 16] * 8), ["dtype"]),
    (np.full((8, 16), np.nan, "float32"), ["NaN"]),
])
def test_bad_calibration_data_is_named(bad, words):
    model = two_dense()
    with pytest.raises(spa.CalibrationDataError) as e:
        spa.plan(model, ratio=0.5, calibration_data=bad, verbose=False)
    msg = str(e.value)
    assert "input" in msg
    for w in words:
        assert w in msg, msg


def test_algorithm_arguments_are_checked(tmp_path):
    model = two_dense()
    with pytest.raises(spa.InvalidArgumentError, match="algorithm"):
        spa.plan(model, algorithm="sparsegpt")
    with pytest.raises(spa.InvalidArgumentError, match="no option 'epochs'"):
        spa.plan(model, algorithm="obspa", algorithm_options={"epochs": 3})
    with pytest.raises(spa.InvalidArgumentError, match="calibration_samples"):
        spa.plan(model, algorithm="obspa", calibration_samples=0)
    with pytest.raises(spa.InvalidArgumentError, match="data_free"):
        spa.plan(model, algorithm="obspa", data_free="imagenet")


MIRRORED = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np, spa_keras as spa
    from keras import layers as L

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", use_bias=False)(inp)))
    x = L.Conv2D(16, 3, padding="same", activation="relu")(x)
    model = keras.Model(inp, L.Dense(4)(L.GlobalAveragePooling2D()(x)))
    x = np.random.default_rng(0).standard_normal((64, 8, 8, 3)).astype("float32")
    out = {}
    for name, strategy in (("single", None), ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        plan = spa.plan(model, ratio=0.5, calibration_data=x, verbose=False,
                        algorithm_options={"strategy": strategy, "batch_size": 16})
        out[name] = {"removed": {k: v.tolist() for k, v in plan.removed().items()},
                     "weights": [w.tolist() for w in spa.apply(plan).get_weights()]}
    out["replicas"] = strategy.num_replicas_in_sync
    json.dump(out, sys.stdout)
""")


def test_obspa_under_mirrored_strategy_matches_a_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["single"]["removed"] == out["mirrored"]["removed"]
    for a, b in zip(out["single"]["weights"], out["mirrored"]["weights"]):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)


def test_reconstruction_refuses_onnx_models_that_cannot_train():
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    with pytest.raises(spa.InvalidArgumentError, match="ONNX models cannot be trained.*obspa"):
        spa.plan(helper.make_model(g, ir_version=10), algorithm="reconstruct", verbose=False)


def test_wide_dense_after_flatten_uses_the_channel_covariance():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c")(inp)
    x = L.Dense(7, name="fc")(L.Flatten()(x))
    model = keras.Model(inp, L.Dense(3, name="out")(L.ReLU()(x)))
    kg = from_keras(model)
    fc = {c.node.layer: c for c in find_consumers(kg, analyse(kg.graph), max_dim=100)}["fc"]
    assert fc.mode == "channels" and fc.cin == 8 and fc.dim == 8 + 1
    plan = spa.plan(model, ratio=0.5, calibration_data=images(64, shape=(6, 6, 3)),
                    algorithm_options={"max_dim": 100, "recalibrate_bn": False}, verbose=False)
    slim = spa.apply(plan)
    assert slim.get_layer("c").filters == 4
    assert verify(plan.source, plan, slim, images(4, seed=2, shape=(6, 6, 3)))["passed"]


def test_reconstruction_can_start_from_obspa():
    model = convnet()
    x = images(128)
    pruner = spa.Pruner(ratio=0.5, algorithm="reconstruct", calibration_data=x,
                        algorithm_options={"start": "obspa", "epochs": (3, 3)})
    slim = pruner.prune(model, verbose=False)
    plan = pruner.last_plan
    assert plan.compensation  # OBSPA chose the channels and re-fitted the consumers
    history = plan.settings["reconstruction_loss"]
    assert history["phase1"] == [] and len(history["phase2"]) == 3
    assert slim.count_params() == count_params(plan.graph, plan)


def test_row_cap_samples_hessians_and_repeats_exactly():
    """``rows_per_dim`` draws each Hessian from a random subset of its rows: a cap above the row count
    changes nothing, a cap below it repeats exactly, stays close to the full sum, and still passes the
    oracle."""
    from spa_keras.algorithms.obspa import accumulate_hessians

    model, x = convnet(), images()
    kg = from_keras(model)
    consumers = find_consumers(kg, analyse(kg.graph), 2048)
    full = accumulate_hessians(kg, consumers, [x], 32)
    same = accumulate_hessians(kg, consumers, [x], 32, rows_per_dim=10**9)
    capped = accumulate_hessians(kg, consumers, [x], 32, rows_per_dim=16)
    again = accumulate_hessians(kg, consumers, [x], 32, rows_per_dim=16)
    sampled = 0
    for c in consumers:
        np.testing.assert_array_equal(same[c.key], full[c.key])
        np.testing.assert_array_equal(capped[c.key], again[c.key])
        rel = np.linalg.norm(capped[c.key] - full[c.key]) / np.linalg.norm(full[c.key])
        sampled += rel > 0
        assert rel < 0.5, (c.node.layer, rel)
    assert sampled >= 2  # the 3x3 convolutions' 36,864 rows are more than 16 · dim
    plan = spa.plan(model, ratio=0.5, calibration_data=x, verbose=False,
                    algorithm_options={"rows_per_dim": 16, "recalibrate_bn": False})
    assert verify(plan.source, plan, spa.apply(plan), images(4, seed=3))["passed"]


@pytest.mark.parametrize("rows,dim,many", [(600, 300, True), (700, 520, True), (900, 1100, True),
                                           (40, 1100, False), (60, 100, True)])
def test_gram_computes_the_upper_blocks_and_mirrors_them(rows, dim, many):
    """``gram`` equals ``fᵀf``, block by block (2 to 4 column blocks of at least 256 columns, or one)."""
    import tensorflow as tf

    from spa_keras.algorithms.obspa import gram

    f = np.random.default_rng(dim).standard_normal((rows, dim)).astype("float32")
    want = f.astype(np.float64).T @ f.astype(np.float64)
    got = gram(tf.constant(f), many).numpy()
    assert got.shape == (dim, dim)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    k = min(4, dim // 256) if many else 1
    if k > 1:  # the blocks below the diagonal are exact transposes of those above
        edges = [dim * i // k for i in range(k + 1)]
        np.testing.assert_array_equal(got[edges[1]:, :edges[1]], got[:edges[1], edges[1]:].T)


@pytest.mark.parametrize("kernel,strides,dilation,padding", [
    (3, 1, 1, "same"), (3, 2, 1, "same"), (3, 2, 1, "valid"), (3, 1, 2, "same"), (3, 3, 1, "same"),
    (1, 2, 1, "same"), ((1, 3), 1, 1, "valid")])
def test_sampled_patches_are_the_unfolded_patches(kernel, strides, dilation, padding):
    """With a cap above the row count every row is kept: the patches gathered at the sampled positions
    are exactly those ``tf.image.extract_patches`` unfolds, in the same order, and those rows times the
    kernel are the convolution's outputs; traced with unknown spatial sizes, the same rows are drawn."""
    import tensorflow as tf

    from spa_keras.algorithms.obs_solver import matrix
    from spa_keras.algorithms.obspa import features, sampled_features

    inp = keras.Input((11, 10, 3))
    x = L.Conv2D(4, 3, padding="same", name="c0")(inp)
    model = keras.Model(inp, L.Conv2D(5, kernel, strides=strides, dilation_rate=dilation, padding=padding,
                                      name="c1")(x))
    kg = from_keras(model)
    (c,) = [c for c in find_consumers(kg, analyse(kg.graph), 2048) if c.node.layer == "c1"]
    assert c.mode == "patches"
    a = np.random.default_rng(0).standard_normal((2, 11, 10, 4)).astype("float32")
    full = features(c, c.views[0], a).numpy()
    w = matrix(c, c.view.canonical(kg.weight(c.key)), kg.weight(c.bias.key))  # the rows times the kernel
    ref = model.get_layer("c1")(a).numpy().reshape(-1, 5)  # are the convolution's outputs
    np.testing.assert_allclose(full @ w, ref, rtol=1e-4, atol=1e-4)
    kept, p = sampled_features(c, c.views[0], a, 10**9, tf.constant([0, 1]))
    assert float(p) == 1.0
    np.testing.assert_array_equal(kept.numpy(), full)
    some, p = sampled_features(c, c.views[0], a, 20, tf.constant([0, 1]))
    rows = {tuple(r) for r in full}
    assert 0 < some.shape[0] < full.shape[0] and all(tuple(r) in rows for r in some.numpy())
    traced = tf.function(lambda t: sampled_features(c, c.views[0], t, 20, tf.constant([0, 1]))[0],
                         input_signature=[tf.TensorSpec((None, None, None, 4))], autograph=False)
    np.testing.assert_array_equal(traced(a).numpy(), some.numpy())
