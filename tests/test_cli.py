"""The spa-keras console script, run for real in a subprocess on real files."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "spa_keras", *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("m") / "mnv2.keras")
    keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10).save(path)
    return path


def test_demo_prints_the_before_after_table():
    r = run("demo", "--model", "MobileNetV2", "--size", "64")
    assert r.returncode == 0, r.stderr
    assert "MACs" in r.stdout and "->" in r.stdout and "fewer" in r.stdout


def test_inspect(model_file):
    r = run("inspect", model_file)
    assert r.returncode == 0, r.stderr
    assert "prunable groups" in r.stdout and "MACs" in r.stdout


def test_prune_writes_a_loadable_slim_model_and_refuses_to_overwrite(model_file, tmp_path):
    out = str(tmp_path / "slim.keras")
    r = run("prune", model_file, "-o", out, "--ratio", "0.5", "--round-to", "4")
    assert r.returncode == 0, r.stderr
    slim, orig = keras.saving.load_model(out), keras.saving.load_model(model_file)
    assert slim.count_params() < orig.count_params()
    x = np.zeros((1, 32, 32, 3), "float32")
    assert slim(x).shape == orig(x).shape
    again = run("prune", model_file, "-o", out)
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert keras.saving.load_model(out).count_params() == slim.count_params()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".spa-")], "no temporary file left"


def test_bad_input_exits_2_with_a_message(tmp_path):
    r = run("prune", str(tmp_path / "missing.keras"), "-o", str(tmp_path / "o.keras"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip file")
    r = run("inspect", str(bad))
    assert r.returncode == 2 and "bad.keras" in r.stderr
    r = run("demo", "--model", "MobileNetV2", "--size", "32", "--ratio", "1.5")
    assert r.returncode == 2 and "ratio" in r.stderr


def test_prune_an_onnx_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype("float32"), n)
             for n, s in (("w1", (8, 3, 3, 3)), ("w2", (4, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    src = str(tmp_path / "m.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), src)
    out = str(tmp_path / "slim.onnx")
    r = run("prune", src, "-o", out, "--ratio", "0.5")
    assert r.returncode == 0, r.stderr
    w1 = [i for i in onnx.load(out).graph.initializer if i.name == "w1"][0]
    assert list(w1.dims) == [4, 3, 3, 3]
    r = run("prune", src, "-o", str(tmp_path / "slim.keras"))
    assert r.returncode == 2 and "kind" in r.stderr
