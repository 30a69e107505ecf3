"""The spa-keras console script, run for real in a subprocess on real files."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# this checkout's spa_keras comes first, whichever copy is installed
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
           PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))


def run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "spa_keras", *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT
    )


def test_the_installed_console_script_runs_this_checkout(model_file):
    import shutil

    script = shutil.which("spa-keras") or os.path.join(os.path.dirname(sys.executable), "spa-keras")
    if not os.path.exists(script):
        pytest.skip("the spa-keras console script is not installed (pip install -e .)")
    r = subprocess.run([script, "inspect", model_file], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "prunable groups" in r.stdout
    r = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, env=ENV)
    assert all(c in r.stdout for c in ("inspect", "prune", "export", "bench")), "an old copy of spa_keras was run"


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


def small_onnx(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype("float32"), n)
             for n, s in (("w1", (8, 3, 3, 3)), ("w2", (4, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def test_prune_an_onnx_file(tmp_path):
    import onnx

    src = small_onnx(str(tmp_path / "m.onnx"))
    out = str(tmp_path / "slim.onnx")
    r = run("prune", src, "-o", out, "--ratio", "0.5")
    assert r.returncode == 0, r.stderr
    w1 = [i for i in onnx.load(out).graph.initializer if i.name == "w1"][0]
    assert list(w1.dims) == [4, 3, 3, 3]
    assert os.path.exists(tmp_path / "slim.report.png")
    r = run("prune", src, "-o", str(tmp_path / "slim.keras"))
    assert r.returncode == 2 and "kind" in r.stderr
    # the slim ONNX model, served: through spa.from_onnx into a TF Serving version (NCHW input, as in ONNX)
    import tensorflow as tf

    from spa_keras.backends.onnx import run_onnx

    r = run("export", out, "--serving", str(tmp_path / "serving"))
    assert r.returncode == 0, r.stderr
    sig = tf.saved_model.load(str(tmp_path / "serving" / "1")).signatures["serving_default"]
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype("float32")
    served = list(sig(**{list(sig.structured_input_signature[1])[0]: tf.constant(x)}).values())[0].numpy()
    np.testing.assert_allclose(served, run_onnx(onnx.load(out), x)[0], atol=1e-4)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    from keras import layers as L

    inp = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    path = str(tmp_path_factory.mktemp("t") / "tiny.keras")
    keras.Model(inp, L.Dense(4, name="scores")(x), name="tiny").save(path)
    return path


def test_inspect_json_and_prune_report(tiny_file, tmp_path):
    import json

    r = run("inspect", tiny_file, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["model"] == "tiny" and info["macs"] > 0 and {"root", "channels", "ops"} <= set(info["groups"][0])
    out = str(tmp_path / "slim.keras")
    r = run("prune", tiny_file, "-o", out, "--ratio-per-layer", "c1=0.75", "--global-pruning", "--steps", "2")
    assert r.returncode == 0, r.stderr
    for ext in ("txt", "json", "png"):
        assert os.path.exists(tmp_path / f"slim.report.{ext}"), ext
    rows = {row["layer"]: row for row in json.loads((tmp_path / "slim.report.json").read_text())["layers"]}
    assert rows["c1"]["width_before"] == 8 and rows["c1"]["width_after"] < 8
    assert "c1" in r.stdout and "report:" in r.stdout
    r = run("prune", tiny_file, "-o", str(tmp_path / "other.keras"), "--report", str(tmp_path / "slim.report"))
    assert r.returncode == 2 and "exists" in r.stderr and not os.path.exists(tmp_path / "other.keras")


def test_bad_options_and_saved_model_input_exit_2(tiny_file, tmp_path):
    r = run("prune", tiny_file, "-o", str(tmp_path / "s.keras"), "--criterion", "l3")
    assert r.returncode == 2 and "criterion" in r.stderr and "Traceback" not in r.stderr
    r = run("prune", tiny_file, "-o", str(tmp_path / "s.keras"), "--algorithm", "obspa", "--calibration",
            str(tmp_path / "missing.npy"), "--no-report")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    r = run("inspect", str(tmp_path / "sm"))
    assert r.returncode == 2 and "SavedModel" in r.stderr and ".keras" in r.stderr


def test_export_serving_is_served_through_its_signature(tiny_file, tmp_path):
    import tensorflow as tf

    base = str(tmp_path / "serving" / "tiny")
    r = run("export", tiny_file, "--serving", base)
    assert r.returncode == 0, r.stderr
    sig = tf.saved_model.load(os.path.join(base, "1")).signatures["serving_default"]
    assert list(sig.structured_input_signature[1]) == ["image"]
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype("float32")
    out = sig(image=tf.constant(x))
    assert list(out) == ["scores"]
    np.testing.assert_allclose(out["scores"].numpy(), np.asarray(keras.saving.load_model(tiny_file)(x)), atol=1e-5)
    r = run("export", tiny_file, "--serving", base, "--version", "1")
    assert r.returncode == 2 and "never overwritten" in r.stderr
    r = run("export", os.path.join(base, "1"), "--serving", base)  # a SavedModel directory is copied in
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(base)) == ["1", "2"]
    r = run("bench", base, "--repeats", "2", "--json")  # the newest version, timed as it is
    assert r.returncode == 0, r.stderr
    import json

    assert json.loads(r.stdout)["original"]["samples_per_s"] > 0


def test_export_onnx_and_bench(tiny_file, tmp_path):
    import json

    import onnx

    out = str(tmp_path / "tiny.onnx")
    r = run("export", tiny_file, "--onnx", out)
    assert r.returncode == 0, r.stderr
    onnx.checker.check_model(onnx.load(out))
    r = run("bench", tiny_file, "--ratio", "0.5", "--repeats", "2", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert "original" in r.stdout and "slim" in r.stdout and "samples/s" in r.stdout and "speed-up" in r.stdout
    r = run("bench", small_onnx(str(tmp_path / "small.onnx")), "--repeats", "2", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["slim"]["macs"] < res["original"]["macs"] and res["slim"]["median_s"] > 0


def test_prune_with_calibration_data_and_obspa(tiny_file, tmp_path):
    import json

    x = np.random.default_rng(0).standard_normal((40, 16, 16, 3)).astype("float32")
    np.save(tmp_path / "cal.npy", x)
    out = str(tmp_path / "obspa.keras")
    r = run("prune", tiny_file, "-o", out, "--algorithm", "obspa", "--calibration", str(tmp_path / "cal.npy"),
            "--calibration-samples", "32", "--ratio", "0.5")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "OBSPA" in r.stderr  # its progress bars
    slim = keras.saving.load_model(out)
    assert slim.get_layer("c1").filters == 4 and slim.get_layer("c2").filters == 4
    report = json.loads((tmp_path / "obspa.report.json").read_text())
    assert report["settings"]["algorithm"] == "obspa" and report["settings"]["samples"] == 32
    bad = tmp_path / "bad.npy"
    np.save(bad, x[:, :8])
    r = run("-q", "prune", tiny_file, "-o", str(tmp_path / "b.keras"), "--calibration", str(bad), "--no-report")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "shape" in r.stderr
