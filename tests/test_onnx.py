"""The ONNX bridge: ONNX graphs (built with onnx.helper, and exported from PyTorch where torch is
installed) pruned with the same channel graph, checked with the zero-channel oracle on onnxruntime."""

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa_keras as spa
from spa_keras.backends.onnx import run_onnx, verify_onnx
from spa_keras.frontends.onnx import from_onnx_model
from spa_keras.metrics import count_macs, count_params

RNG = np.random.default_rng(0)


def init(name, *shape, low=-0.5, high=0.5):
    return numpy_helper.from_array(RNG.uniform(low, high, shape).astype("float32"), name)


def make(nodes, inits, inputs, outputs, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def vin(name, *shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def conv_bn_relu(x, name, cin, cout, k=3, group=1, relu=True):
    nodes = [
        helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c"], pads=[k // 2] * 4, group=group),
        helper.make_node("BatchNormalization", [f"{name}_c", f"{name}_s", f"{name}_beta", f"{name}_m", f"{name}_v"],
                         [f"{name}_bn"]),
    ]
    inits = [init(f"{name}_w", cout, cin // group, k, k), init(f"{name}_b", cout), init(f"{name}_s", cout, low=0.2, high=1),
             init(f"{name}_beta", cout), init(f"{name}_m", cout), init(f"{name}_v", cout, low=0.5, high=2)]
    out = f"{name}_bn"
    if relu:
        nodes.append(helper.make_node("Relu", [out], [f"{name}_r"]))
        out = f"{name}_r"
    return nodes, inits, out


def check_onnx(model, ratio=0.5, **kw):
    before = model.SerializeToString()
    og = from_onnx_model(model)
    plan = spa.plan(og, ratio=ratio, **kw)
    slim = spa.apply(plan)
    onnx.checker.check_model(slim)
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.standard_normal(shape).astype("float32")
    v = verify_onnx(og, plan, slim, x)
    assert v["passed"], v
    assert [o.shape for o in run_onnx(slim, x)] == [o.shape for o in run_onnx(model, x)]
    params = sum(int(np.prod(i.dims)) for i in slim.graph.initializer if i.data_type == TensorProto.FLOAT)
    params += sum(int(np.prod(a.t.dims)) for n in slim.graph.node if n.op_type == "Constant" for a in n.attribute
                  if a.name == "value" and a.t.data_type == TensorProto.FLOAT)
    assert params == count_params(og.graph, plan)
    if plan.n_removed:
        assert count_macs(og.graph, plan) < count_macs(og.graph)
    assert model.SerializeToString() == before, "the input model was changed"
    return slim, plan


def test_residual_depthwise_grouped_concat_split_flatten_gemm():
    nodes, inits = [], []
    for args in (("x", "stem", 3, 16), ("stem_r", "a", 16, 16), ("a_r", "b", 16, 16, 3, 1, False)):
        n, i, _ = conv_bn_relu(*args)
        nodes += n
        inits += i
    nodes += [helper.make_node("Add", ["stem_r", "b_bn"], ["res"]), helper.make_node("Relu", ["res"], ["res_r"])]
    n, i, _ = conv_bn_relu("res_r", "dw", 16, 32, group=16)  # depthwise with multiplier 2
    nodes, inits = nodes + n, inits + i
    n, i, _ = conv_bn_relu("dw_r", "gr", 32, 24, group=4)  # grouped
    nodes, inits = nodes + n, inits + i
    inits.append(numpy_helper.from_array(np.array([8, 16], np.int64), "split_sizes"))
    nodes += [
        helper.make_node("Split", ["gr_r", "split_sizes"], ["s1", "s2"], axis=1),
        helper.make_node("Concat", ["s2", "res_r", "s1"], ["cat"], axis=1),
        helper.make_node("MaxPool", ["cat"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], transB=1),
        helper.make_node("Relu", ["fc"], ["fc_r"]),
        helper.make_node("Gemm", ["fc_r", "out_w", "out_b"], ["y"], transB=1),
    ]
    inits += [init("fc_w", 20, 40 * 4 * 4), init("fc_b", 20), init("out_w", 5, 20), init("out_b", 5)]
    model = make(nodes, inits, [vin("x", 2, 3, 8, 8)], [vin("y", 2, 5)])
    slim, plan = check_onnx(model)
    removed = plan.removed()
    np.testing.assert_array_equal(removed["stem_c"], removed["b_c"])  # one residual group
    assert len(removed["stem_c"]) == 8 and len(removed["dw_c"]) == 16
    widths = {i.name: list(i.dims) for i in slim.graph.initializer}
    assert widths["dw_w"] == [16, 1, 3, 3] and widths["gr_w"] == [12, 4, 3, 3]
    assert [a.i for n in slim.graph.node if n.op_type == "Conv" and n.input[1] == "dw_w" for a in n.attribute
            if a.name == "group"] == [8]
    split = [n for n in slim.graph.node if n.op_type == "Split"][0]
    sizes = numpy_helper.to_array([i for i in slim.graph.initializer if i.name == split.input[1]][0])
    og_tensors = {t.name: t.id for t in plan.graph.tensors.values()}
    assert list(sizes) == [plan.width(og_tensors["s1"]), plan.width(og_tensors["s2"])] and sum(sizes) == 12
    assert widths["fc_w"] == [10, 20 * 4 * 4]


def test_matmul_add_mlp_with_layernorm_and_reshape():
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["hr"]),
        helper.make_node("MatMul", ["hr", "w2"], ["o"]),
        helper.make_node("Add", ["o", "x"], ["res"]),
        helper.make_node("LayerNormalization", ["res", "ln_s", "ln_b"], ["ln"], axis=-1),
        helper.make_node("Transpose", ["ln"], ["t"], perm=[0, 2, 1]),
        helper.make_node("ReduceMean", ["t"], ["pooled"], axes=[2], keepdims=0),
        helper.make_node("Unsqueeze", ["pooled", "ax"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax"], ["sq"]),
        helper.make_node("MatMul", ["sq", "w3"], ["y"]),
    ]
    inits = [init("w1", 8, 32), init("b1", 32), init("w2", 32, 8), init("ln_s", 8), init("ln_b", 8), init("w3", 8, 3),
             numpy_helper.from_array(np.array([2], np.int64), "ax")]
    model = make(nodes, inits, [vin("x", 2, 5, 8)], [vin("y", 2, 3)], opset=17)
    slim, plan = check_onnx(model)
    assert set(plan.removed()) == {"h", "hb", "hr"}  # the stream through LayerNorm is held
    w1 = [i for i in slim.graph.initializer if i.name == "w1"][0]
    assert list(w1.dims) == [8, 16]


def test_instance_norm_pad_resize_slice_erf_reshape():
    n, i, out = conv_bn_relu("x", "c1", 3, 8)
    nodes = n + [
        helper.make_node("InstanceNormalization", [out, "in_s", "in_b"], ["inorm"]),
        helper.make_node("Pad", ["inorm", "pads"], ["padded"], mode="constant"),
        helper.make_node("Resize", ["padded", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Slice", ["up", "starts", "ends", "axes"], ["sl"]),
        helper.make_node("Div", ["sl", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["sl", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["gelu"]),
        helper.make_node("Conv", ["gelu", "c2_w"], ["c2"]),
        helper.make_node("Reshape", ["c2", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["y"]),
    ]
    inits = i + [
        init("in_s", 8, low=0.5, high=1.5), init("in_b", 8),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.array([1, 1], np.int64), "starts"),
        numpy_helper.from_array(np.array([9, 9], np.int64), "ends"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array(1.4142135, np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        init("c2_w", 6, 8, 1, 1),
        numpy_helper.from_array(np.array([1, 6 * 8 * 8], np.int64), "shape"),
        init("fc", 6 * 8 * 8, 4),
    ]
    model = make(nodes, inits, [vin("x", 1, 3, 6, 6)], [vin("y", 1, 4)])
    slim, plan = check_onnx(model)
    removed = plan.removed()
    assert len(removed["c1_c"]) == 4 and len(removed["c2"]) == 3
    shape = [numpy_helper.to_array(t) for t in slim.graph.initializer if t.name.startswith("shape")]
    assert [list(a) for a in shape] == [[1, 3 * 8 * 8]], "the explicit width in the Reshape was rewritten"


def test_prune_onnx_path_writes_and_onnxruntime_runs(tmp_path):
    n, i, out = conv_bn_relu("x", "c1", 3, 8)
    n2, i2, out2 = conv_bn_relu(out, "c2", 8, 4, relu=False)
    model = make(n + n2, i + i2, [vin("x", 1, 3, 6, 6)], [vin(out2, 1, 4, 6, 6)])
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    dst = tmp_path / "slim.onnx"
    slim = spa.prune(str(src), ratio=0.5, output=str(dst))
    assert isinstance(slim, onnx.ModelProto) and dst.exists()
    back = onnx.load(dst)
    assert run_onnx(back, np.zeros((1, 3, 6, 6), "float32"))[0].shape == (1, 4, 6, 6)
    with pytest.raises(spa.InvalidArgumentError, match="exists"):
        spa.prune(str(src), ratio=0.5, output=str(dst))
    assert "c1_c" in str(spa.inspect(str(src)))


def test_macs_by_hand_and_weights_behind_identity_nodes():
    n, i, out = conv_bn_relu("x", "c1", 3, 8)
    n2, i2, out2 = conv_bn_relu(out, "c2", 8, 4, relu=False)
    n2[0].input[1] = "c2_w_alias"  # PyTorch's TorchScript exporter passes some weights through Identity
    nodes = [helper.make_node("Identity", ["c2_w"], ["c2_w_alias"])] + n + n2
    model = make(nodes, i + i2, [vin("x", 1, 3, 6, 6)], [vin(out2, 1, 4, 6, 6)])
    og = from_onnx_model(model)
    assert count_macs(og.graph) == 36 * 9 * 3 * 8 + 36 * 9 * 8 * 4
    slim, plan = check_onnx(model)
    w = [t for t in slim.graph.initializer if t.name == "c2_w"][0]
    assert list(w.dims) == [4, 4, 3, 3]


def test_bad_onnx_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(spa.UnsupportedModelError, match="bad.onnx"):
        spa.prune(str(bad))
    with pytest.raises(spa.InvalidArgumentError, match="does not exist"):
        spa.prune(str(tmp_path / "missing.onnx"))


def test_unknown_op_is_held_fixed_and_reported():
    n, i, out = conv_bn_relu("x", "c1", 3, 8)
    nodes = n + [helper.make_node("LRN", [out], ["lrn"], size=3)]
    n2, i2, out2 = conv_bn_relu("lrn", "c2", 8, 8)
    n3, i3, out3 = conv_bn_relu(out2, "c3", 8, 2, relu=False)
    model = make(nodes + n2 + n3, i + i2 + i3, [vin("x", 1, 3, 6, 6)], [vin(out3, 1, 2, 6, 6)])
    slim, plan = check_onnx(model)
    report = spa.Report.from_plan(plan)
    assert any("LRN" in h["reason"] for h in report.held_fixed)
    assert "c1_c" not in plan.removed() and "c2_c" in plan.removed()


# ---- PyTorch exports (the CPU torch; these tests are skipped without it, the ones above are not) -------

try:
    import torch
except ImportError:  # the tests above need no torch
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def module(name):
    import torch_models

    return getattr(torch_models, name)()


def export(module, shape, dynamo):
    if dynamo:
        pytest.importorskip("onnxscript")
    module.eval()
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(*shape)
    f = io.BytesIO()
    torch.onnx.export(module, (x,), f, dynamo=dynamo, input_names=["x"], output_names=["y"],
                      **({} if dynamo else {"opset_version": 17}))
    model = onnx.load_from_string(f.getvalue())
    np.testing.assert_allclose(run_onnx(model, x.numpy())[0], module(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    return model


@needs_torch
@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("name,shape", [("Residual", (2, 3, 8, 8)), ("DepthwiseSE", (2, 3, 8, 8)),
                                        ("Attention", (2, 5, 6))])
def test_pytorch_exports_prune_and_pass_the_oracle(name, shape, dynamo):
    torch.manual_seed(0)
    model = export(module(name), shape, dynamo)
    slim, plan = check_onnx(model)
    assert plan.n_removed > 0


# ---- the bridge to Keras and back -------------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("name,shape", [("Residual", (2, 3, 8, 8)), ("DepthwiseSE", (2, 3, 8, 8)),
                                        ("Attention", (2, 5, 6))])
def test_from_onnx_matches_onnxruntime_saves_and_prunes(name, shape, dynamo, tmp_path):
    import keras

    torch.manual_seed(0)
    model = export(module(name), shape, dynamo)
    k = spa.from_onnx(model)
    x = RNG.standard_normal(shape).astype("float32")
    np.testing.assert_allclose(np.asarray(k(x)), run_onnx(model, x)[0], rtol=1e-4, atol=1e-5)
    path = str(tmp_path / "m.keras")
    k.save(path)
    back = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(k(x)), rtol=1e-6, atol=1e-6)
    slim = spa.prune(k, ratio=0.5)
    assert slim.count_params() < k.count_params()


@needs_torch
def test_pytorch_to_onnx_to_pruned_keras_to_savedmodel(tmp_path):
    import tensorflow as tf

    torch.manual_seed(0)
    net = module("DepthwiseSE")
    model = export(net, (2, 3, 8, 8), False)
    x = RNG.standard_normal((2, 3, 8, 8)).astype("float32")
    ref = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(run_onnx(model, x)[0], ref, rtol=1e-4, atol=1e-5)  # torch == onnx
    og = from_onnx_model(model)
    plan = spa.plan(og, ratio=0.5)
    slim_onnx = spa.apply(plan)
    assert verify_onnx(og, plan, slim_onnx, x)["passed"]  # pruned == zeroed, in onnxruntime
    k = spa.from_onnx(slim_onnx)
    np.testing.assert_allclose(np.asarray(k(x)), run_onnx(slim_onnx, x)[0], rtol=1e-4, atol=1e-5)  # keras == onnx
    k.export(str(tmp_path / "sm"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    out = list(served(tf.constant(x)).values())[0].numpy()
    np.testing.assert_allclose(out, np.asarray(k(x)), rtol=1e-5, atol=1e-6)  # savedmodel == keras


def test_to_onnx_handles_exact_gelu_and_matches():
    import keras
    from keras import layers as L

    inp = keras.Input((6,))
    x = L.Dense(16, activation=keras.activations.gelu)(inp)  # exact GELU: TensorFlow writes Erfc
    model = keras.Model(inp, L.Dense(3)(x))
    proto = spa.to_onnx(model)
    onnx.checker.check_model(proto)
    assert "Erf" in {n.op_type for n in proto.graph.node}, "Erfc was rewritten as 1 - Erf"
    data = RNG.standard_normal((4, 6)).astype("float32")
    np.testing.assert_allclose(run_onnx(proto, data)[0], np.asarray(model(data)), rtol=1e-4, atol=1e-5)


@needs_torch
def test_pruned_onnx_loads_back_into_pytorch_with_onnx2torch():
    onnx2torch = pytest.importorskip("onnx2torch")  # needs torchvision: torch 2.14.1 + torchvision 0.29.1
    torch.manual_seed(0)
    model = export(module("Residual"), (2, 3, 8, 8), False)
    slim = spa.prune(model, ratio=0.5)
    back = onnx2torch.convert(slim)
    x = RNG.standard_normal((2, 3, 8, 8)).astype("float32")
    np.testing.assert_allclose(back(torch.from_numpy(x)).detach().numpy(), run_onnx(slim, x)[0], rtol=1e-4, atol=1e-5)


@needs_torch
def test_obspa_prunes_an_onnx_resnet18_directly_and_passes_the_oracle_on_onnxruntime():
    torch.manual_seed(0)
    model = export(module("resnet18"), (4, 3, 32, 32), False)  # a fixed batch of 4; BatchNorm folded into the convs
    og = from_onnx_model(model)
    x = np.clip(RNG.standard_normal((64, 3, 32, 32)), -2, 2).astype("float32")
    plan = spa.plan(og, ratio=0.5, algorithm="obspa", calibration_data=x, verbose=False)
    assert plan.settings["algorithm"] == "obspa" and plan.compensation  # consumers were re-fitted
    assert all(k in og.arrays for k in plan.compensation)
    slim = spa.apply(plan)
    test = x[:4]
    assert verify_onnx(og, plan, slim, test)["passed"]  # pruned == compensated and zeroed, in onnxruntime
    plain_plan = spa.plan(og, ratio=0.5, verbose=False)
    ref = run_onnx(model, test)[0]
    err = lambda m: float(np.mean((run_onnx(m, test)[0] - ref) ** 2))  # noqa: E731
    assert err(slim) < err(spa.apply(plain_plan))


def test_the_tests_built_with_onnx_helper_run_without_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; import pytest; "  # as if torch were not installed
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-k', 'macs_by_hand or bad_onnx or "
            f"unknown_op or pytorch_exports', {__file__!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 passed" in r.stdout and "6 skipped" in r.stdout, r.stdout
