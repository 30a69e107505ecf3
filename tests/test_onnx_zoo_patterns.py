"""The patterns torchvision's models export, built with onnx.helper (and the CPU torch where it is
installed), each pruned and checked with the zero-channel oracle on onnxruntime: reshapes that keep,
merge or split the channel axis (window partitions, attention heads, channel shuffle), channel slices,
shape arithmetic that the TorchScript exporter leaves in the graph, and the check that runs every
pruned ONNX model before it is returned or written."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import spa_keras as spa
from spa_keras.backends.onnx import apply_onnx_plan, run_onnx
from spa_keras.frontends.onnx import from_onnx_model
from spa_keras.frontends.spec import reshape_move
from test_onnx import check_onnx, conv_bn_relu, init, make, vin

RNG = np.random.default_rng(1)


def ints(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def reasons(model):
    return [h["reason"] for h in spa.inspect(model).held_fixed]


def test_reshape_move_cases():
    assert reshape_move([1, 8, 4, 4], 1, [1, 8, 16]) == ("keep", 1, 1, 1)
    assert reshape_move([1, 8, 4, 4], 1, [1, 128]) == ("keep", 1, 1, 16)  # flatten: channel-major
    assert reshape_move([1, 4, 4, 8], 3, [1, 2, 2, 2, 2, 8]) == ("keep", 5, 1, 1)  # window partition
    assert reshape_move([1, 6, 4, 4], 1, [1, 2, 3, 4, 4]) == ("split", [1, 2], [2, 3])  # shuffle / heads
    assert reshape_move([1, 3, 2, 4], 2, [1, 3, 8]) == ("keep", 2, 1, 4)  # heads merged back
    assert reshape_move([1, 3, 2, 4], 2, [1, 24]) == ("keep", 1, 3, 4)
    assert reshape_move([1, 6, 4], 1, [1, 4, 6]) is None  # a reshape that is really a transpose


def test_channel_shuffle_prunes_channel_j_of_every_group():
    """ShuffleNet's reshape (B, g, C/g, H, W), transpose, reshape back: exact when channel j of
    every group goes together, so the groups stay equal."""
    n1, i1, a = conv_bn_relu("x", "c1", 3, 12)
    nodes = n1 + [
        helper.make_node("Reshape", [a, "s5"], ["r5"]),
        helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t5", "s4"], ["shuf"]),
    ]
    n2, i2, out = conv_bn_relu("shuf", "c2", 12, 4, relu=False)
    model = make(nodes + n2, i1 + i2 + [ints("s5", [1, 3, 4, 6, 6]), ints("s4", [1, 12, 6, 6])],
                 [vin("x", 1, 3, 6, 6)], [vin(out, 1, 4, 6, 6)])
    slim, plan = check_onnx(model)
    removed = plan.removed()["c1_c"]
    assert len(removed) == 6 and sorted(set(removed % 4)) == sorted(set(removed % 4)) and len(set(removed % 4)) == 2
    shapes = {n.input[1]: numpy_helper.to_array([i for i in slim.graph.initializer if i.name == n.input[1]][0]).tolist()
              for n in slim.graph.node if n.op_type == "Reshape"}
    assert sorted(shapes.values()) == [[1, 3, 2, 6, 6], [1, 6, 6, 6]]


def attention(batch=1, tokens=5, dim=16, heads=4, qkv_split="reshape"):
    """One attention layer as PyTorch's exporters write it: packed q|k|v projection, reshape to
    (T, B*H, hd), scores, softmax, product with v, merge back, output projection, residual."""
    hd = dim // heads
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["qkv0"]),
        helper.make_node("Add", ["qkv0", "b_in"], ["qkv"]),
        helper.make_node("Reshape", ["qkv", "s_qkv"], ["qkv4"]),  # (B, T, 3, D)
        helper.make_node("Gather", ["qkv4", "i0"], ["q0"], axis=2),
        helper.make_node("Gather", ["qkv4", "i1"], ["k0"], axis=2),
        helper.make_node("Gather", ["qkv4", "i2"], ["v0"], axis=2),
    ]
    for t in "qkv":
        nodes += [helper.make_node("Reshape", [f"{t}0", "s_heads"], [f"{t}h"]),  # (B, T, H, hd)
                  helper.make_node("Transpose", [f"{t}h"], [f"{t}t"], perm=[0, 2, 1, 3])]  # (B, H, T, hd)
    nodes += [
        helper.make_node("Transpose", ["kt"], ["kT"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["qt", "kT"], ["scores0"]),
        helper.make_node("Mul", ["scores0", "scale"], ["scores1"]),
        helper.make_node("Add", ["scores1", "bias"], ["scores"]),  # relative position bias (1, H, T, T)
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "vt"], ["o"]),
        helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ot", "s_merge"], ["om"]),
        helper.make_node("MatMul", ["om", "w_out"], ["proj"]),
        helper.make_node("Add", ["proj", "x"], ["y"]),
    ]
    inits = [init("w_in", dim, 3 * dim), init("b_in", 3 * dim), init("w_out", dim, dim),
             ints("s_qkv", [batch, tokens, 3, dim]), ints("s_heads", [batch, tokens, heads, hd]),
             ints("s_merge", [batch, tokens, dim]), ints("i0", 0), ints("i1", 1), ints("i2", 2),
             numpy_helper.from_array(np.array(hd ** -0.5, np.float32), "scale"), init("bias", 1, heads, tokens, tokens)]
    return make(nodes, inits, [vin("x", batch, tokens, dim)], [vin("y", batch, tokens, dim)])


def test_attention_heads_prune_whole_through_reshape_and_transpose():
    model = attention()
    slim, plan = check_onnx(model)
    removed = plan.removed()
    assert len(removed["qkv0"]) == 3 * 8, "two of four heads go, in q, k and v"
    q_removed = removed["qkv0"][removed["qkv0"] < 16]
    assert sorted(set(q_removed // 4)) == sorted(set(q_removed // 4)) and len(q_removed) == 8
    assert all(len(set(range(h * 4, h * 4 + 4)) & set(q_removed)) in (0, 4) for h in range(4)), "whole heads"
    bias = [i for i in slim.graph.initializer if i.name == "bias"][0]
    assert list(bias.dims) == [1, 2, 5, 5], "the relative position bias loses the heads"
    k = spa.from_onnx(slim)
    x = RNG.standard_normal((1, 5, 16)).astype("float32")
    np.testing.assert_allclose(np.asarray(k(x)), run_onnx(slim, x)[0], rtol=1e-4, atol=1e-5)


def test_window_partition_keeps_the_channel_axis_last():
    """Swin's window partition: (B, H, W, C) -> (B, H/w, w, W/w, w, C) -> transpose -> (B*nW, w*w, C)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr0"]),
        helper.make_node("Reshape", ["hr0", "s4"], ["hr"]),  # tokens (B, H*W, C) -> (B, H, W, C)
        helper.make_node("Reshape", ["hr", "s6"], ["h6"]),
        helper.make_node("Transpose", ["h6"], ["t6"], perm=[0, 1, 3, 2, 4, 5]),
        helper.make_node("Reshape", ["t6", "s3"], ["win"]),
        helper.make_node("MatMul", ["win", "w2"], ["y"]),
    ]
    inits = [init("w1", 6, 8), init("w2", 8, 3), ints("s4", [1, 4, 4, 8]), ints("s6", [1, 2, 2, 2, 2, 8]),
             ints("s3", [4, 4, 8])]
    model = make(nodes, inits, [vin("x", 1, 16, 6)], [vin("y", 4, 4, 3)])
    slim, plan = check_onnx(model)
    assert len(plan.removed()["h"]) == 4
    assert reasons(model) == []


def test_channel_slices_move_with_the_kept_channels():
    """chunk / narrow along channels (ShuffleNetV2's split, written as two Slices): the bounds are
    rewritten to the kept channels, and no slice is ever emptied."""
    n1, i1, a = conv_bn_relu("x", "c1", 3, 8)
    nodes = n1 + [
        helper.make_node("Slice", [a, "st0", "en0", "ax"], ["lo"]),
        helper.make_node("Slice", [a, "st1", "en1", "ax"], ["hi"]),
    ]
    n2, i2, b = conv_bn_relu("hi", "c2", 4, 4)
    nodes += n2 + [helper.make_node("Concat", ["lo", b], ["cat"], axis=1)]
    n3, i3, out = conv_bn_relu("cat", "c3", 8, 2, relu=False)
    inits = i1 + i2 + i3 + [ints("st0", [0]), ints("en0", [4]), ints("st1", [4]), ints("en1", [9223372036854775807]),
                            ints("ax", [1])]
    model = make(nodes + n3, inits, [vin("x", 1, 3, 6, 6)], [vin(out, 1, 2, 6, 6)])
    slim, plan = check_onnx(model, ratio=0.75)
    assert "Slice along the channel axis" not in reasons(model)
    assert plan.n_removed > 0
    for n in slim.graph.node:
        if n.op_type == "Slice":
            start = int(numpy_helper.to_array([i for i in slim.graph.initializer if i.name == n.input[1]][0])[0])
            end = int(numpy_helper.to_array([i for i in slim.graph.initializer if i.name == n.input[2]][0])[0])
            assert min(end, 8) > start, "a slice kept a channel"


def test_shape_arithmetic_is_folded_so_reshapes_prune():
    """The TorchScript exporter computes some Reshape targets from Shape: folded to a constant where
    every shape is static, so the Reshape's explicit widths can be rewritten."""
    n1, i1, a = conv_bn_relu("x", "c1", 3, 8)
    nodes = n1 + [
        helper.make_node("Shape", [a], ["shp"]),
        helper.make_node("Gather", ["shp", "i0"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
        helper.make_node("Concat", ["b1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", [a, "target"], ["flat"]),  # (B, 8*36)
        helper.make_node("MatMul", ["flat", "fc"], ["y"]),
    ]
    inits = i1 + [ints("i0", 0), ints("ax0", [0]), ints("rest", [8 * 36]), init("fc", 8 * 36, 3)]
    model = make(nodes, inits, [vin("x", 1, 3, 6, 6)], [vin("y", 1, 3)])
    slim, plan = check_onnx(model)
    assert len(plan.removed()["c1_c"]) == 4
    assert "Shape" not in {n.op_type for n in slim.graph.node}


def test_grouped_conv_on_a_tensor_whose_channels_cannot_be_followed_is_held():
    """Conv-attention hybrids' position encodings: tokens reshaped into an image in a way the frontend
    cannot follow, then a depthwise conv. Its group count must not be touched ('Conv group must be
    greater than 0' in onnxruntime)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),  # (1, 16, 8): tokens
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Reshape", ["hr", "s"], ["img"]),  # (1, 8, 4, 4) straight from (1, 16, 8): mixed
        helper.make_node("Conv", ["img", "dw"], ["pe"], group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["pe", "img"], ["y"]),
    ]
    inits = [init("w1", 6, 8), ints("s", [1, 8, 4, 4]), init("dw", 8, 1, 3, 3)]
    model = make(nodes, inits, [vin("x", 1, 16, 6)], [vin("y", 1, 8, 4, 4)])
    assert "grouped Conv whose input channels cannot be followed" in reasons(model)
    slim, plan = check_onnx(model)
    dw = [n for n in slim.graph.node if n.op_type == "Conv"][0]
    assert [a.i for a in dw.attribute if a.name == "group"] == [8]


def test_a_pruned_model_onnxruntime_refuses_is_never_returned(monkeypatch):
    """Run before you write: a pruned model that onnxruntime refuses raises RebuildError naming the node."""
    n1, i1, a = conv_bn_relu("x", "c1", 3, 8)
    n2, i2, b = conv_bn_relu(a, "dw", 8, 8, group=8)
    n3, i3, out = conv_bn_relu(b, "c3", 8, 2, relu=False)
    model = make(n1 + n2 + n3, i1 + i2 + i3, [vin("x", 1, 3, 6, 6)], [vin(out, 1, 2, 6, 6)])
    og = from_onnx_model(model)
    dw = [n for n in og.graph.nodes if og.protos[n.name].op_type == "Conv" and n.kind == "depthwise"][0]
    spec = og.specs[dw.name]

    def wrong_group(proto, w_, backend):  # a bug of the kind the check is there for
        from spa_keras.frontends.onnx.ops import set_attr as _set_attr

        _set_attr(proto, "group", 3)

    monkeypatch.setattr(spec, "resize", wrong_group)
    plan = spa.plan(og, ratio=0.5)
    with pytest.raises(spa.RebuildError, match="onnxruntime refuses the pruned ONNX model at node"):
        apply_onnx_plan(og, plan)


def test_a_pruned_model_that_differs_from_the_oracle_is_never_returned(monkeypatch):
    n1, i1, a = conv_bn_relu("x", "c1", 3, 8)
    n2, i2, out = conv_bn_relu(a, "c2", 8, 2, relu=False)
    model = make(n1 + n2, i1 + i2, [vin("x", 1, 3, 6, 6)], [vin(out, 1, 2, 6, 6)])
    og = from_onnx_model(model)
    plan = spa.plan(og, ratio=0.5)
    good = apply_onnx_plan(og, plan)
    assert good is not None
    removed = plan.removed()["c1_c"]
    keep = [c for c in range(8) if c not in removed]
    real = plan.keep_indices

    def shifted(node, p):  # keep the wrong channels in the consumer: shapes fit, values do not
        out = real(node, p)
        if p.key == "c2_w" and 1 in out:
            out[1] = np.array(sorted(set(range(8)) - set(keep)))
        return out

    monkeypatch.setattr(plan, "keep_indices", shifted)
    with pytest.raises(spa.RebuildError, match="oracle"):
        apply_onnx_plan(og, plan)


def test_even_split_of_opset_18_gets_explicit_sizes():
    """The dynamo exporter writes torch.chunk as Split(num_outputs=2): after pruning the halves may keep
    different widths, so the sizes are written out (ShuffleNetV2 split its stream this way)."""
    n1, i1, a = conv_bn_relu("x", "c1", 3, 8)
    nodes = n1 + [helper.make_node("Split", [a], ["s1", "s2"], axis=1, num_outputs=2)]
    n2, i2, b = conv_bn_relu("s2", "c2", 4, 4)
    nodes += n2 + [helper.make_node("Concat", ["s1", b], ["cat"], axis=1)]
    n3, i3, out = conv_bn_relu("cat", "c3", 8, 2, relu=False)
    model = make(nodes + n3, i1 + i2 + i3, [vin("x", 1, 3, 6, 6)], [vin(out, 1, 2, 6, 6)], opset=18)
    slim, plan = check_onnx(model)
    split = [n for n in slim.graph.node if n.op_type == "Split"][0]
    assert "num_outputs" not in [a.name for a in split.attribute] and len(split.input) == 2


def test_from_onnx_converts_channel_slices_and_ceil_mode_max_pool():
    """GoogLeNet and SqueezeNet pool with ceil_mode=1; ShuffleNetV2 (TorchScript) slices its stream."""
    n1, i1, a = conv_bn_relu("x", "c1", 3, 8)
    nodes = n1 + [
        helper.make_node("MaxPool", [a], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("Slice", ["p", "st", "en", "ax"], ["lo"]),
        helper.make_node("Slice", ["p", "st2", "en2", "ax2", "sp2"], ["hi"]),  # every other row, channels 4:
        helper.make_node("ReduceMean", ["lo"], ["mlo"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceMean", ["hi"], ["mhi"], axes=[2, 3], keepdims=0),
        helper.make_node("Concat", ["mlo", "mhi"], ["y"], axis=1),
    ]
    inits = i1 + [ints("st", [0]), ints("en", [4]), ints("ax", [1]), ints("st2", [4, 0]),
                  ints("en2", [9223372036854775807, 9223372036854775807]), ints("ax2", [1, 2]), ints("sp2", [1, 2])]
    model = make(nodes, inits, [vin("x", 1, 3, 8, 8)], [vin("y", 1, 8)])
    k = spa.from_onnx(model)
    x = RNG.standard_normal((1, 3, 8, 8)).astype("float32")
    np.testing.assert_allclose(np.asarray(k(x)), run_onnx(model, x)[0], rtol=1e-5, atol=1e-6)
    slim, plan = check_onnx(model)
    np.testing.assert_allclose(np.asarray(spa.from_onnx(slim)(x)), run_onnx(slim, x)[0], rtol=1e-5, atol=1e-6)


def test_shapes_inference_cannot_work_out_are_read_from_one_run():
    """Swin's window padding (TorchScript) computes its pads from shapes that ONNX shape inference
    leaves unknown; in a static graph they are read from one onnxruntime run, then folded, so the Pad
    is understood and the channels through it prune. from_onnx converts the Pad."""
    n1, i1, a = conv_bn_relu("x", "c1", 3, 8)
    nodes = n1 + [
        helper.make_node("NonZero", ["mask"], ["nz"]),  # (2, 3): known only by running it
        helper.make_node("Shape", ["nz"], ["nz_shape"]),
        helper.make_node("Gather", ["nz_shape", "i1"], ["k"], axis=0),
        helper.make_node("Unsqueeze", ["k", "ax0"], ["k1"]),
        helper.make_node("Concat", ["zeros6", "k1", "k1"], ["pads"], axis=0),
        helper.make_node("Pad", [a, "pads"], ["padded"], mode="constant"),
    ]
    n2, i2, out = conv_bn_relu("padded", "c2", 8, 2, relu=False)
    inits = i1 + i2 + [numpy_helper.from_array(np.array([[1, 0, 1, 1]], np.float32), "mask"), ints("i1", 1),
                       ints("ax0", [0]), ints("zeros6", [0] * 6)]
    model = make(nodes + n2, inits, [vin("x", 1, 3, 6, 6)], [vin(out, 1, 2, 9, 9)])
    assert not any("Pad" in r for r in reasons(model))
    slim, plan = check_onnx(model)
    assert len(plan.removed()["c1_c"]) == 4
    x = RNG.standard_normal((1, 3, 6, 6)).astype("float32")
    np.testing.assert_allclose(np.asarray(spa.from_onnx(slim)(x)), run_onnx(slim, x)[0], rtol=1e-5, atol=1e-6)


def test_einsum_attention_prunes_whole_heads_and_converts():
    """MaxViT writes its attention as Einsum (``B G H I D, B G H J D -> B G H I J``, upper case)."""
    dim, heads, hd, tokens = 8, 2, 4, 3
    nodes = [helper.make_node("MatMul", ["x", "w_qkv"], ["qkv"]),
             helper.make_node("Split", ["qkv", "sizes"], ["q0", "k0", "v0"], axis=2)]
    for t in "qkv":
        nodes += [helper.make_node("Reshape", [f"{t}0", "s_heads"], [f"{t}h"]),
                  helper.make_node("Transpose", [f"{t}h"], [f"{t}t"], perm=[0, 2, 1, 3])]
    nodes += [
        helper.make_node("Einsum", ["qt", "kt"], ["scores"], equation="B H I D, B H J D -> B H I J"),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("Einsum", ["p", "vt"], ["o"], equation="B H I J, B H J D -> B H I D"),
        helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ot", "s_merge"], ["om"]),
        helper.make_node("MatMul", ["om", "w_out"], ["y"]),
    ]
    inits = [init("w_qkv", dim, 3 * dim), init("w_out", dim, 5), ints("sizes", [dim] * 3),
             ints("s_heads", [1, tokens, heads, hd]), ints("s_merge", [1, tokens, dim])]
    model = make(nodes, inits, [vin("x", 1, tokens, dim)], [vin("y", 1, tokens, 5)])
    assert reasons(model) == []
    slim, plan = check_onnx(model)
    assert plan.n_removed > 0
    x = RNG.standard_normal((1, tokens, dim)).astype("float32")
    np.testing.assert_allclose(np.asarray(spa.from_onnx(slim)(x)), run_onnx(slim, x)[0], rtol=1e-5, atol=1e-6)


def test_from_onnx_converts_reductions_where_tile_expand_dropout():
    """Ops torchvision's exports use around attention (Swin V2's ReduceL2-normalised q and k, masks)."""
    nodes = [
        helper.make_node("ReduceL2", ["x", "axes"], ["n"], keepdims=1),
        helper.make_node("Div", ["x", "n"], ["xn"]),
        helper.make_node("Dropout", ["xn"], ["d"]),
        helper.make_node("ReduceMax", ["d", "axes"], ["mx"], keepdims=1),
        helper.make_node("Equal", ["mx", "zero"], ["is0"]),
        helper.make_node("Where", ["is0", "d", "mx"], ["w"]),
        helper.make_node("Tile", ["w", "reps"], ["t"]),
        helper.make_node("Expand", ["bias", "eshape"], ["b"]),
        helper.make_node("Add", ["t", "b"], ["s"]),
        helper.make_node("ReduceSum", ["s", "axes"], ["y"], keepdims=0),
    ]
    inits = [ints("axes", [-1]), numpy_helper.from_array(np.array(0.0, np.float32), "zero"), ints("reps", [1, 1, 1]),
             init("bias", 1, 1, 6), ints("eshape", [1, 4, 6])]
    model = make(nodes, inits, [vin("x", 1, 4, 6)], [vin("y", 1, 4)], opset=18)
    x = RNG.standard_normal((1, 4, 6)).astype("float32")
    np.testing.assert_allclose(np.asarray(spa.from_onnx(model)(x)), run_onnx(model, x)[0], rtol=1e-5, atol=1e-6)


def test_models_over_the_protobuf_limit_run_prune_and_save_with_external_weights(monkeypatch, tmp_path):
    """ViT-H/14 and RegNetY-128GF hold more than the 2 GiB a serialised ModelProto can: their large
    initializers go to onnxruntime as OrtValues and to disk in one ``.data`` file beside the model.
    Exercised here with the limits lowered to a few kilobytes."""
    from spa_keras.frontends.onnx import runtime

    n1, i1, a = conv_bn_relu("x", "c1", 3, 16)
    n2, i2, out = conv_bn_relu(a, "c2", 16, 8, relu=False)
    model = make(n1 + n2, i1 + i2, [vin("x", 1, 3, 8, 8)], [vin(out, 1, 8, 8, 8)])
    x = RNG.standard_normal((1, 3, 8, 8)).astype("float32")
    want = run_onnx(model, x)[0]
    monkeypatch.setattr(runtime, "INLINE_LIMIT", 1024)
    monkeypatch.setattr(runtime, "LARGE_TENSOR", 256)
    s = runtime.session(model)
    assert s._spa_keras_values, "the large weights did not go in as OrtValues"
    np.testing.assert_allclose(s.run(None, {"x": x})[0], want, rtol=1e-6)
    path = tmp_path / "big.onnx"
    slim = spa.prune(model, ratio=0.5, output=path)  # runs beside the oracle before writing
    assert (tmp_path / "big.onnx.data").exists() and all(i.HasField("raw_data") for i in slim.graph.initializer
                                                         if int(np.prod(i.dims)) > 64)
    back = onnx.load(str(path))  # the external data is read back from beside the file
    np.testing.assert_allclose(run_onnx(back, x)[0], run_onnx(slim, x)[0], rtol=1e-6)
