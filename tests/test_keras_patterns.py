"""Hand-built models, one per coupling pattern, each checked with the zero-channel oracle."""

import keras
import numpy as np
import pytest
from keras import layers as L
from keras import ops

import spa_keras as spa
from spa_keras.frontends.keras import from_keras
from spa_keras.metrics import count_macs

from conftest import check_pruned, randomize_bn


def conv_bn(x, f, k=3, s=1, name=None):
    x = L.Conv2D(f, k, strides=s, padding="same", name=name)(x)
    x = L.BatchNormalization()(x)
    return L.ReLU()(x)


def test_residual_add_across_three_blocks():
    x = inp = keras.Input((16, 16, 3))
    x = conv_bn(x, 16, name="stem")
    for i in range(3):
        y = conv_bn(x, 8, name=f"b{i}_a")
        y = L.Conv2D(16, 3, padding="same", name=f"b{i}_b")(y)
        y = L.BatchNormalization()(y)
        x = L.ReLU()(L.Add()([x, y]))
    out = L.Dense(5)(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    randomize_bn(model)
    slim, plan = check_pruned(model, 0.5)
    removed = plan.removed()
    # the stream is one group: stem and every block's second conv lose the same channels
    for i in range(3):
        np.testing.assert_array_equal(removed["stem"], removed[f"b{i}_b"])
        assert len(removed[f"b{i}_a"]) == 4
    assert len(removed["stem"]) == 8
    assert slim.get_layer("b2_b").kernel.shape == (3, 3, 4, 8)


def test_concat_of_concats_offsets():
    inp = keras.Input((8, 8, 3))
    a = conv_bn(inp, 6, name="a")
    b = conv_bn(inp, 4, name="b")
    c = conv_bn(inp, 10, name="c")
    ab = L.Concatenate()([a, b])
    abc = L.Concatenate()([ab, c, a])
    y = L.Conv2D(7, 1, name="head")(abc)
    model = keras.Model(inp, L.GlobalMaxPooling2D()(y))
    randomize_bn(model)
    slim, plan = check_pruned(model, 0.5)
    assert slim.get_layer("head").kernel.shape[2] == 3 + 2 + 5 + 3
    removed = plan.removed()
    # the concat's removed channels are a's, b's and c's shifted by their offsets
    cat = removed[abc._keras_history[0].name]
    expect = np.concatenate([removed["a"], 6 + removed["b"], 10 + removed["c"], 20 + removed["a"]])
    np.testing.assert_array_equal(np.sort(cat), np.sort(expect))


def test_flatten_into_dense_blocks():
    inp = keras.Input((4, 4, 3))
    x = conv_bn(inp, 8, name="conv")
    x = L.Flatten()(x)
    x = L.Dense(10, activation="relu", name="fc1")(x)
    model = keras.Model(inp, L.Dense(3, name="fc2")(x))
    randomize_bn(model)
    slim, plan = check_pruned(model, 0.5)
    kept = np.setdiff1d(np.arange(8), plan.removed()["conv"])
    rows = (np.arange(16)[:, None] * 8 + kept[None, :]).ravel()
    cols = np.setdiff1d(np.arange(10), plan.removed()["fc1"])
    np.testing.assert_allclose(
        slim.get_layer("fc1").kernel.numpy(), model.get_layer("fc1").kernel.numpy()[rows][:, cols]
    )


def test_depthwise_and_separable():
    inp = keras.Input((12, 12, 3))
    x = conv_bn(inp, 8, name="expand")
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    x = L.SeparableConv2D(12, 3, padding="same", depth_multiplier=2, name="sep")(x)
    x = L.Activation("swish")(x)
    x = L.Conv2D(6, 1, name="project")(x)
    model = keras.Model(inp, L.GlobalAveragePooling2D()(x))
    randomize_bn(model)
    slim, plan = check_pruned(model, 0.5)
    assert slim.get_layer("dw").kernel.shape == (3, 3, 4, 2)
    assert slim.get_layer("sep").depthwise_kernel.shape == (3, 3, 8, 2)
    assert slim.get_layer("sep").pointwise_kernel.shape == (1, 1, 16, 6)


def test_grouped_conv_keeps_groups_equal():
    inp = keras.Input((8, 8, 3))
    x = conv_bn(inp, 16, name="pre")
    x = L.Conv2D(24, 3, padding="same", groups=4, name="grouped")(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.Conv2D(8, 1, name="post")(x)
    model = keras.Model(inp, L.GlobalAveragePooling2D()(x))
    randomize_bn(model)
    slim, plan = check_pruned(model, 0.5)
    g = slim.get_layer("grouped")
    assert g.groups == 4
    assert g.kernel.shape == (3, 3, 2, 12)
    # the same local index goes in every group, on the input side and on the output side
    for layer, width in (("pre", 4), ("grouped", 6)):
        removed = plan.removed()[layer]
        per_group = [set(removed[removed // width == q] % width) for q in range(4)]
        assert all(s == per_group[0] for s in per_group) and len(per_group[0]) == width // 2


def test_depthwise_as_grouped_conv():
    inp = keras.Input((8, 8, 3))
    x = conv_bn(inp, 8, name="pre")
    x = L.Conv2D(16, 3, padding="same", groups=8, name="dwg")(x)
    x = L.ReLU()(x)
    model = keras.Model(inp, L.Conv2D(4, 1)(x))
    randomize_bn(model)
    slim, _ = check_pruned(model, 0.5)
    assert slim.get_layer("dwg").groups == 4 and slim.get_layer("dwg").filters == 8


def test_squeeze_excite_multiply_with_reshape():
    inp = keras.Input((8, 8, 3))
    x = conv_bn(inp, 16, name="body")
    s = L.GlobalAveragePooling2D()(x)
    s = L.Reshape((1, 1, 16))(s)
    s = L.Conv2D(4, 1, activation="relu", name="squeeze")(s)
    s = L.Conv2D(16, 1, activation="sigmoid", name="excite")(s)
    x = L.Multiply()([x, s])
    model = keras.Model(inp, L.Conv2D(5, 1, name="out")(x))
    randomize_bn(model)
    slim, plan = check_pruned(model, 0.5)
    np.testing.assert_array_equal(plan.removed()["body"], plan.removed()["excite"])
    assert slim.get_layer("squeeze").kernel.shape == (1, 1, 8, 2)


def test_shared_layer_called_twice():
    inp_a, inp_b = keras.Input((6, 6, 3)), keras.Input((6, 6, 3))
    stem_a, stem_b = conv_bn(inp_a, 8, name="sa"), conv_bn(inp_b, 8, name="sb")
    shared = L.Conv2D(12, 3, padding="same", name="shared")
    ya, yb = L.ReLU()(shared(stem_a)), L.ReLU()(shared(stem_b))
    y = L.Concatenate()([ya, yb])
    model = keras.Model([inp_a, inp_b], L.Conv2D(4, 1)(y))
    randomize_bn(model)
    slim, plan = check_pruned(model, 0.5)
    removed = plan.removed()
    # the shared kernel reads both stems: they lose the same channels
    np.testing.assert_array_equal(removed["sa"], removed["sb"])
    assert slim.get_layer("shared").kernel.shape == (3, 3, 4, 6)


def test_nested_functional_and_sequential_models():
    inner_in = keras.Input((8, 8, 6))
    y = L.Conv2D(10, 3, padding="same", activation="relu", name="inner_conv")(inner_in)
    inner = keras.Model(inner_in, L.Conv2D(6, 1, name="inner_proj")(y), name="inner")
    seq = keras.Sequential(
        [keras.Input((8, 8, 6)), L.Conv2D(9, 3, padding="same", name="seq_conv"), L.ReLU()], name="seq"
    )
    inp = keras.Input((8, 8, 3))
    x = conv_bn(inp, 6, name="stem")
    x = L.Add()([x, inner(x)])
    x = L.Add()([x, inner(x)])  # the nested model called twice
    x = seq(x)
    model = keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling2D()(x)))
    randomize_bn(model)
    slim, plan = check_pruned(model, 0.5)
    new_inner = slim.get_layer("inner")
    assert new_inner.get_layer("inner_conv").kernel.shape == (3, 3, 3, 5)
    assert slim.get_layer("seq").get_layer("seq_conv").kernel.shape == (3, 3, 3, 5)
    assert new_inner is not model.get_layer("inner")


def test_keras_ops_inside_a_functional_model():
    inp = keras.Input((8, 8, 3))
    a = conv_bn(inp, 8, name="a")
    b = conv_bn(inp, 8, name="b")
    x = ops.relu(a + b)  # non-Layer operations
    x = x * 0.5
    pooled = ops.mean(x, axis=[1, 2])
    model = keras.Model(inp, L.Dense(4, name="head")(pooled))
    kinds = [n.kind for n in from_keras(model).graph.nodes]
    assert "merge" in kinds and "fixed" not in kinds
    randomize_bn(model)
    slim, plan = check_pruned(model, 0.5)
    np.testing.assert_array_equal(plan.removed()["a"], plan.removed()["b"])
    assert slim.get_layer("head").kernel.shape == (4, 4)


def test_sequential_model():
    model = keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            L.Conv2D(8, 3, name="c1"),
            L.BatchNormalization(),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Conv2D(16, 3, name="c2"),
            L.ReLU(),
            L.Flatten(),
            L.Dropout(0.2),
            L.Dense(12, activation="relu"),
            L.Dense(3),
        ]
    )
    randomize_bn(model)
    slim, _ = check_pruned(model, 0.5)
    assert isinstance(slim, keras.Sequential)
    assert slim.get_layer("c2").kernel.shape == (3, 3, 4, 8)


def test_ratio_zero_is_identity():
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classifier_activation=None)
    randomize_bn(model)
    slim = spa.prune(model, ratio=0.0)
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(slim(x)), np.asarray(model(x)))
    assert slim.count_params() == model.count_params()


def test_one_d_three_d_transpose_and_misc_layers():
    inp = keras.Input((16, 4))
    x = L.Conv1D(8, 3, padding="same", name="c1d")(inp)
    x = L.ZeroPadding1D(1)(x)
    x = L.Cropping1D(1)(x)
    x = L.UpSampling1D(2)(x)
    x = L.Conv1D(6, 3, name="c1d_b")(x)
    x = L.LeakyReLU()(x)
    x = L.GlobalMaxPooling1D()(x)
    out1 = L.Dense(3)(x)
    inp3 = keras.Input((6, 6, 6, 2))
    y = L.Conv3D(8, 3, padding="same", name="c3d")(inp3)
    y = L.ELU()(y)
    y = L.AveragePooling3D(2)(y)
    y = L.Conv3D(4, 1, name="c3d_b")(y)
    out3 = L.GlobalAveragePooling3D()(y)
    inp2 = keras.Input((5, 5, 3))
    z = L.Conv2D(8, 3, padding="same", name="c2")(inp2)
    z = L.Conv2DTranspose(6, 3, strides=2, padding="same", name="tconv")(z)
    z = L.PReLU(shared_axes=[1, 2])(z)
    z = L.Cropping2D(1)(z)
    a, b = L.Conv2D(4, 1, name="p1")(z), L.Conv2D(4, 1, name="p2")(z)
    z = L.Concatenate()([L.Subtract()([a, b]), L.Average()([a, b]), L.Maximum()([a, b]), L.Minimum()([a, b])])
    out2 = L.Dense(2)(L.GlobalAveragePooling2D()(z))
    model = keras.Model([inp, inp3, inp2], [out1, out3, out2])
    slim, _ = check_pruned(model, 0.5)
    assert slim.get_layer("tconv").kernel.shape == (3, 3, 3, 4)
    assert slim.get_layer("c3d").kernel.shape == (3, 3, 3, 2, 4)


def test_embedding_einsum_and_attention():
    tokens = keras.Input((6,), dtype="int32")
    x = L.Embedding(20, 16, name="emb")(tokens)
    x = L.EinsumDense("abc,cd->abd", output_shape=(None, 12), bias_axes="d", activation="relu", name="ed")(x)
    x = L.Dense(8, name="proj")(x)
    x = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    x = L.Dense(10, activation="gelu", name="mlp")(x)
    out = L.Dense(3)(L.GlobalAveragePooling1D()(x))
    model = keras.Model(tokens, out)
    slim, plan = check_pruned(model, 0.5)
    assert slim.get_layer("emb").embeddings.shape == (20, 8)
    assert slim.get_layer("ed").kernel.shape == (8, 6)
    # attention: heads and key/value widths are pruned; its output follows the query's width
    mha = slim.get_layer("mha").get_config()
    assert (mha["num_heads"], mha["key_dim"], mha["value_dim"]) == (1, 2, 2)
    assert slim.get_layer("proj").kernel.shape == (6, 4)
    assert not spa.inspect(model).held_fixed


def test_unknown_layer_is_held_fixed_and_reported():
    @keras.saving.register_keras_serializable("spa_test")
    class Mystery(L.Layer):
        def call(self, x):
            return x[..., ::-1]

    inp = keras.Input((8, 8, 3))
    a = conv_bn(inp, 8, name="before")
    b = Mystery(name="mystery")(a)
    c = conv_bn(b, 8, name="after")
    model = keras.Model(inp, L.Conv2D(2, 1)(c))
    randomize_bn(model)
    slim, plan = check_pruned(model, 0.5)
    assert "before" not in plan.removed()
    assert len(plan.removed()["after"]) == 4
    report = spa.Report.from_plan(plan)
    assert any(h["layer"] == "mystery" and "Mystery" in h["reason"] for h in report.held_fixed)


def test_normalization_layers():
    inp = keras.Input((8, 8, 3))
    x = L.Rescaling(1 / 255.0)(inp)
    x = L.Normalization(axis=-1)(x)
    x = conv_bn(x, 8, name="c1")
    ln = L.LayerNormalization(name="ln")(L.Conv2D(6, 1, name="to_ln")(x))
    gn = L.GroupNormalization(2, name="gn")(L.Conv2D(6, 1, name="to_gn")(x))
    y = L.Conv2D(4, 1, name="c2")(L.Concatenate()([ln, gn, x]))
    model = keras.Model(inp, y)
    randomize_bn(model)
    slim, plan = check_pruned(model, 0.5)
    removed = plan.removed()
    assert "to_ln" not in removed and "to_gn" not in removed
    assert len(removed["c1"]) == 4


def test_saves_and_loads_as_keras_file(tmp_path):
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3), classifier_activation=None)
    slim = spa.prune(model, ratio=0.5)
    path = str(tmp_path / "slim.keras")
    slim.save(path)
    back = keras.saving.load_model(path)
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(slim(x)), rtol=1e-5, atol=1e-5)


def test_macs_of_a_small_conv_net_by_hand():
    inp = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same")(inp)  # 10*10*9*3*8 = 21600
    x = L.DepthwiseConv2D(3, padding="same")(x)  # 10*10*9*8 = 7200
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(4)(x)  # 8*4 = 32
    assert count_macs(from_keras(keras.Model(inp, out)).graph) == 21600 + 7200 + 32


@pytest.mark.parametrize("options", [
    dict(global_pruning=True),
    dict(round_to=4),
    dict(max_ratio=0.25, ratio=0.75),
    dict(criterion="l1", group_reduction="sum"),
    dict(criterion="random", group_reduction="max", normalization="max"),
])  # fmt: skip
def test_selection_options(options):
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classifier_activation=None)
    ratio = options.pop("ratio", 0.5)
    slim, plan = check_pruned(model, ratio, **options)
    kg = plan.source
    for node in kg.graph.nodes:
        if node.kind == "linear" and node.outputs:
            before = kg.graph.tensors[node.outputs[0]].channels
            after = plan.width(node.outputs[0])
            assert after >= 1
            if options.get("round_to") and after != before:
                assert after % options["round_to"] == 0
            if "max_ratio" in options:
                assert before - after <= 0.25 * before


def test_ignored_layers_keep_their_channels():
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classifier_activation=None)
    plan = spa.plan(model, ratio=0.5, ignored_layers=["block_1_expand", model.get_layer("Conv1")])
    assert "block_1_expand" not in plan.removed() and "Conv1" not in plan.removed()
    assert "block_2_expand" in plan.removed()
    with pytest.raises(spa.InvalidArgumentError, match="block_1_expnad.*block_1_expand"):
        spa.plan(model, ignored_layers=["block_1_expnad"])


@pytest.mark.parametrize("ratio", [-0.1, 1.0, float("nan"), "half"])
def test_bad_ratio_is_refused(ratio):
    model = keras.Sequential([keras.Input((4,)), L.Dense(4), L.Dense(2)])
    with pytest.raises(spa.InvalidArgumentError, match="ratio"):
        spa.prune(model, ratio=ratio)


def test_not_a_model_and_subclassed_model():
    with pytest.raises(spa.UnsupportedModelError, match="keras.Model"):
        spa.prune(object())

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(3)

        def call(self, x):
            return self.d(x)

    m = Sub()
    m(np.zeros((1, 4), "float32"))
    with pytest.raises(spa.UnsupportedModelError, match="Functional API"):
        spa.prune(m)
