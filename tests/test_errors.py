"""Every bad input ends in a spa.PruningError that names the culprit; nothing is lost or overwritten."""

import hashlib
import os
import subprocess
import sys
import time

import keras
import numpy as np
import onnx
import pytest
from keras import layers as L
from onnx import TensorProto, helper, numpy_helper

import spa_keras as spa
from spa_keras.backends.keras import verify
from spa_keras.frontends.keras import from_keras
from spa_keras.testing import perturb_statistics, random_inputs, weights_hash

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def small(name="small"):
    inp = keras.Input((8, 8, 3), name="x")
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    return keras.Model(inp, L.Dense(3, name="head")(L.GlobalAveragePooling2D(name="gap")(x)), name=name)


def small_onnx():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype("float32"), n)
             for n, s in (("w1", (8, 3, 3, 3)), ("w2", (4, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r"]), helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "spa_keras", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


# ---- the hierarchy -------------------------------------------------------------------------------


def test_every_error_is_a_pruning_error_and_the_matching_builtin():
    assert issubclass(spa.InvalidArgumentError, ValueError)
    assert issubclass(spa.UnsupportedModelError, TypeError)
    assert issubclass(spa.CalibrationDataError, spa.InvalidArgumentError)
    assert issubclass(spa.NonFiniteWeightsError, ValueError)
    assert issubclass(spa.ModelFileError, spa.UnsupportedModelError) and issubclass(spa.ModelFileError, ValueError)
    assert issubclass(spa.OutputExistsError, FileExistsError) and issubclass(spa.OutputExistsError, ValueError)
    assert issubclass(spa.RebuildError, RuntimeError)
    for name in ("PruningError", "InvalidArgumentError", "UnsupportedModelError", "RebuildError",
                 "CalibrationDataError", "ModelFileError", "NonFiniteWeightsError", "OutputExistsError"):
        assert name in spa.__all__ and issubclass(getattr(spa, name), spa.PruningError)


# ---- not a model ---------------------------------------------------------------------------------


def test_a_non_model_object():
    with pytest.raises(spa.UnsupportedModelError, match="expected a keras.Model, got dict"):
        spa.prune({"not": "a model"})
    with pytest.raises(spa.UnsupportedModelError, match="got Dense"):
        spa.inspect(L.Dense(3))


def test_a_subclassed_model_says_what_to_do():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="my_net")
            self.d = L.Dense(4)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(spa.UnsupportedModelError, match="my_net") as e:
        spa.prune(net)
    assert "Functional API" in str(e.value) and "register_layer" in str(e.value)


def test_unknown_layers_are_held_fixed_and_listed_not_raised():
    class Mystery(L.Layer):
        def call(self, x):
            return x * 2.0

    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = Mystery(name="mystery")(x)
    x = L.Conv2D(8, 3, padding="same", name="conv2")(x)
    model = keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    plan = spa.plan(model, ratio=0.5)
    slim = spa.apply(plan)
    fixed = {h["layer"]: h["reason"] for h in spa.inspect(model).held_fixed}
    assert "mystery" in fixed and "Mystery" in fixed["mystery"]
    assert "conv1" not in plan.removed() and "conv2" in plan.removed()
    assert "mystery" in spa.Report.from_plan(plan).table() or "mystery" in str(spa.inspect(model))
    assert slim.get_layer("conv1").filters == 8


# ---- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, float("nan"), float("inf"), "half"])
def test_a_ratio_outside_0_1(ratio):
    with pytest.raises(spa.InvalidArgumentError, match="ratio") as e:
        spa.prune(small(), ratio=ratio)
    assert repr(ratio) in str(e.value) or str(ratio) in str(e.value)


def test_ignored_layers_naming_a_layer_that_does_not_exist():
    with pytest.raises(spa.InvalidArgumentError, match="'conv_1'.*not a layer.*Did you mean 'conv1'"):
        spa.prune(small(), ignored_layers=["conv_1"])


def test_round_to_and_max_ratio_are_checked():
    with pytest.raises(spa.InvalidArgumentError, match="round_to"):
        spa.prune(small(), round_to=0)
    with pytest.raises(spa.InvalidArgumentError, match="max_ratio"):
        spa.prune(small(), max_ratio=2)


# ---- weights -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_weights_name_the_layer_and_the_weight(bad):
    model = small()
    kernel = model.get_layer("conv2").kernel
    value = kernel.numpy()
    value[0, 0, 0, 3] = bad
    kernel.assign(value)
    with pytest.raises(spa.NonFiniteWeightsError, match=r"layer 'conv2' \(Conv2D\): weight 'kernel'"):
        spa.prune(model)
    with pytest.raises(spa.NonFiniteWeightsError, match="conv2"):
        spa.inspect(model)


def test_nan_in_an_onnx_initializer_names_the_node_and_the_initializer():
    model = small_onnx()
    w = numpy_helper.to_array(model.graph.initializer[1]).copy()
    w[1, 2, 0, 0] = np.nan
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(w, "w2"))
    with pytest.raises(spa.NonFiniteWeightsError, match=r"'conv2' \(Conv\): initializer 'w2'"):
        spa.prune(model)


def test_mixed_float16_models_prune_and_pass_the_oracle():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((8, 8, 3))
        x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", name="c1")(inp)))
        y = L.BatchNormalization()(L.Conv2D(8, 3, padding="same", name="c2")(x))
        x = L.ReLU()(L.Add()([x, y]))
        x = L.Concatenate()([L.DepthwiseConv2D(3, padding="same")(x), L.Conv2D(4, 1)(x)])
        out = L.Dense(4, dtype="float32")(L.Flatten()(L.Conv2D(6, 1)(x)))
        model = keras.Model(inp, out)
        perturb_statistics(model)
        before = weights_hash(model)
        plan = spa.plan(from_keras(model), ratio=0.5, round_to=2)
        slim = spa.apply(plan)
        assert slim.get_layer("c1").dtype_policy.name == "mixed_float16"
        assert slim.get_layer("c1").filters == 4
        x = random_inputs(model)
        v = verify(plan.source, plan, slim, x, rtol=1e-2)  # float16 compute: about 3 significant digits
        assert v["passed"], v
        assert slim(x).shape == model(x).shape and weights_hash(model) == before
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ---- files ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    keras_path, h5_path, onnx_path = str(d / "m.keras"), str(d / "m.h5"), str(d / "m.onnx")
    model = small()
    model.save(keras_path)
    model.save(h5_path)
    onnx.save(small_onnx(), onnx_path)
    return d, keras_path, h5_path, onnx_path


@pytest.mark.parametrize("kind", ["keras", "h5", "onnx"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_or_truncated_file_names_the_file(files, kind, damage):
    d, *paths = files
    src = {"keras": paths[0], "h5": paths[1], "onnx": paths[2]}[kind]
    data = open(src, "rb").read()
    bad = str(d / f"{damage}_{kind}.{kind}")
    with open(bad, "wb") as f:
        f.write({"truncated": data[: len(data) // 2], "garbage": b"\x00junk" * 50, "empty": b""}[damage])
    for fn in (spa.prune, spa.inspect):
        with pytest.raises(spa.ModelFileError, match=os.path.basename(bad)):
            fn(bad)


def test_the_cli_reports_a_truncated_file_with_exit_2_and_no_traceback(files):
    d, keras_path, _, onnx_path = files
    for src in (keras_path, onnx_path):
        data = open(src, "rb").read()
        bad = str(d / ("cut_" + os.path.basename(src)))
        open(bad, "wb").write(data[: len(data) // 2])
        for args in (("inspect", bad), ("prune", bad, "-o", str(d / ("out_" + os.path.basename(src))))):
            r = cli(*args)
            assert r.returncode == 2, r.stderr
            assert os.path.basename(bad) in r.stderr and "Traceback" not in r.stderr


def test_an_existing_output_is_never_overwritten_without_force(files, tmp_path):
    _, keras_path, _, onnx_path = files
    out = tmp_path / "out.keras"
    out.write_bytes(b"precious")
    with pytest.raises(spa.OutputExistsError, match="out.keras"):
        spa.prune(keras_path, output=str(out))
    onnx_out = tmp_path / "out.onnx"
    onnx_out.write_bytes(b"precious")
    with pytest.raises(spa.OutputExistsError, match="out.onnx"):
        spa.prune(onnx_path, output=str(onnx_out))
    assert out.read_bytes() == b"precious" and onnx_out.read_bytes() == b"precious"
    r = cli("prune", keras_path, "-o", str(out))
    assert r.returncode == 2 and str(out) in r.stderr and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    assert out.read_bytes() == b"precious"
    before = sha(keras_path)
    r = cli("prune", keras_path, "-o", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert keras.saving.load_model(str(out)).count_params() < small().count_params()
    assert sha(keras_path) == before, "the input file was changed"


def test_a_failed_write_leaves_nothing_at_the_output(tmp_path):
    from spa_keras.io import atomic_write

    path = str(tmp_path / "m.keras")

    def crash(tmp):
        open(tmp, "wb").write(b"half a model")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert os.listdir(tmp_path) == []


def _killed_run(src, out, delay):
    """Start the console script, wait ``delay`` seconds (or, with ``delay=None``, until its temporary file
    appears beside the output), then SIGKILL it. Returns "finished" (it ended by itself), "mid-save" (killed
    while its temporary file was there) or "killed"."""
    p = subprocess.Popen([sys.executable, "-m", "spa_keras", "prune", src, "-o", out, "--ratio", "0.5", "--no-report"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    folder = os.path.dirname(out)
    t0 = time.monotonic()
    seen = False
    while p.poll() is None and time.monotonic() - t0 < 120:
        seen = any(f.startswith(".spa-") for f in os.listdir(folder))
        if (delay is None and seen) or (delay is not None and time.monotonic() - t0 >= delay):
            break
        time.sleep(0.002)
    if p.poll() is not None:
        return "finished"
    p.kill()
    p.wait()
    return "mid-save" if seen else "killed"


def test_killing_the_cli_during_a_save_leaves_the_output_absent_or_complete(tmp_path):
    src = str(tmp_path / "in.keras")
    inp = keras.Input((16, 16, 3))
    x = inp
    for i in range(6):  # big enough that the save takes a moment
        x = L.Conv2D(64, 3, padding="same", activation="relu", name=f"c{i}")(x)
    keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling2D()(x))).save(src)
    before = sha(src)
    how = []
    for i, delay in enumerate([None, None, None, 1.0, 2.5, 600]):
        folder = tmp_path / f"run{i}"  # one folder per run: a killed run's temporary file stays behind
        folder.mkdir()
        out = str(folder / "out.keras")
        how.append(_killed_run(src, out, delay))
        assert sha(src) == before, "the input file was changed"
        if os.path.exists(out):  # complete: it loads and has the slim width
            assert keras.saving.load_model(out).get_layer("c0").filters == 32
        assert not [f for f in os.listdir(folder) if f not in ("out.keras",) and not f.startswith(".spa-")]
        if how[-1] == "finished":
            assert os.path.exists(out) and not [f for f in os.listdir(folder) if f.startswith(".spa-")]
    assert "mid-save" in how and how[-1] == "finished", how


def test_ctrl_c_during_a_save_exits_130_and_leaves_no_temporary_file(tmp_path):
    import signal

    src = str(tmp_path / "in.keras")
    inp = keras.Input((16, 16, 3))
    x = inp
    for i in range(6):
        x = L.Conv2D(64, 3, padding="same", activation="relu", name=f"c{i}")(x)
    keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling2D()(x))).save(src)
    folder = tmp_path / "out"
    folder.mkdir()
    out = str(folder / "out.keras")
    p = subprocess.Popen([sys.executable, "-m", "spa_keras", "prune", src, "-o", out], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=ENV)
    t0 = time.monotonic()
    writing = lambda: any(f.startswith(".spa-") for f in os.listdir(folder))  # noqa: E731
    while p.poll() is None and time.monotonic() - t0 < 120 and not writing():
        time.sleep(0.002)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode in (0, 130), err
    if p.returncode == 130:
        assert "interrupted" in err and "Traceback" not in err
        assert not os.path.exists(out)
    else:
        keras.saving.load_model(out)
    assert not [f for f in os.listdir(folder) if f.startswith(".spa-")], "the temporary file was removed"


def test_nan_in_a_bfloat16_weight_is_found():
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(3, name="head")(L.Dense(8, dtype="bfloat16", name="mid")(inp)))
    kernel = model.get_layer("mid").kernel
    value = np.array(kernel.numpy())
    value[1, 2] = np.nan
    kernel.assign(value)
    with pytest.raises(spa.NonFiniteWeightsError, match=r"'mid' \(Dense\): weight 'kernel' \(mid/kernel\) holds 1 NaN"):
        spa.inspect(model)
