"""Beyond CNNs: attention heads, ViT-style models, recurrent layers, custom layers."""

import keras
import numpy as np
from keras import layers as L

import spa_keras as spa
from spa_keras.metrics import count_params
from spa_keras.testing import build_vit

from conftest import check_pruned


def test_multi_head_attention_prunes_heads_and_widths():
    x = inp = keras.Input((6, 16))
    a = L.MultiHeadAttention(4, 8, value_dim=6, output_shape=12, name="mha")(x, x)
    out = L.Dense(3)(L.GlobalAveragePooling1D()(a))
    model = keras.Model(inp, out)
    slim, plan = check_pruned(model, 0.5)
    removed = plan.removed()
    assert len(removed["mha:heads"]) == 2 and len(removed["mha:key_dim"]) == 4
    assert len(removed["mha:value_dim"]) == 3 and len(removed["mha"]) == 6
    cfg = slim.get_layer("mha").get_config()
    assert (cfg["num_heads"], cfg["key_dim"], cfg["value_dim"], cfg["output_shape"]) == (2, 4, 3, (6,))


def test_cross_attention_with_separate_key_and_value():
    q_in, kv_in = keras.Input((5, 8)), keras.Input((7, 10))
    q = L.Dense(12, name="q_proj")(q_in)
    kv = L.Dense(14, name="kv_proj")(kv_in)
    k = L.Dense(9, name="k_proj")(kv_in)
    a = L.MultiHeadAttention(2, 6, name="xattn")(q, kv, key=k)
    model = keras.Model([q_in, kv_in], L.Dense(2)(L.Flatten()(a)))
    slim, plan = check_pruned(model, 0.5)
    assert {"q_proj", "kv_proj", "k_proj"} <= set(plan.removed())


def test_vit_prunes_heads_and_mlp_and_passes_the_oracle():
    model = build_vit()
    slim, plan = check_pruned(model, 0.5)
    removed = plan.removed()
    for i in range(3):
        assert len(removed[f"block{i}_attn:heads"]) == 2
        assert len(removed[f"block{i}_mlp1"]) == 48
    assert slim.get_layer("block0_attn").get_config()["num_heads"] == 2
    assert "patch_embed" not in removed  # LayerNorm holds the residual stream by default


def test_vit_residual_stream_sliced():
    model = build_vit()
    slim, plan = check_pruned(model, 0.5, residual_stream="slice", oracle=False)
    assert slim.get_layer("patch_embed").kernel.shape == (4, 4, 3, 24)
    assert slim.get_layer("cls_token").cls.shape == (1, 1, 24)
    assert slim.get_layer("block2_ln2").gamma.shape == (24,)


def _rnn_model(bidirectional_mode="concat"):
    inp = keras.Input((7, 5))
    x = L.Dense(12, name="embed")(inp)
    x = L.LSTM(10, return_sequences=True, name="lstm1")(x)
    x = L.LSTM(8, return_sequences=True, name="lstm2")(x)
    x = L.Bidirectional(L.GRU(6, return_sequences=True), merge_mode=bidirectional_mode, name="bigru")(x)
    x = L.Bidirectional(L.LSTM(4), merge_mode="sum", name="bilstm")(x)
    return keras.Model(inp, L.Dense(3)(x))


def test_stacked_and_bidirectional_rnns_prune_units():
    model = _rnn_model()
    slim, plan = check_pruned(model, 0.5)
    assert slim.get_layer("lstm1").cell.units == 5
    assert slim.get_layer("lstm2").cell.kernel.shape == (5, 16)
    big = slim.get_layer("bigru")
    assert big.forward_layer.cell.units == big.backward_layer.cell.units == 3
    assert slim.get_layer("bilstm").forward_layer.cell.kernel.shape == (6, 8)


def test_gru_without_reset_after_and_simple_rnn_with_states():
    inp = keras.Input((6, 4))
    seq, state = L.GRU(8, reset_after=False, return_sequences=True, return_state=True, name="gru")(inp)
    y = L.SimpleRNN(6, name="srnn")(seq, initial_state=None)
    out = L.Dense(2)(L.Concatenate()([y, state]))
    model = keras.Model(inp, out)
    slim, _ = check_pruned(model, 0.5)
    assert slim.get_layer("gru").cell.units == 4 and slim.get_layer("srnn").cell.units == 3


def test_embedding_feeds_an_lstm():
    tokens = keras.Input((9,), dtype="int32")
    x = L.Embedding(30, 16, name="emb")(tokens)
    x = L.LSTM(8, name="lstm")(x)
    model = keras.Model(tokens, L.Dense(2)(x))
    slim, _ = check_pruned(model, 0.5)
    assert slim.get_layer("emb").embeddings.shape == (30, 8)


@keras.saving.register_keras_serializable("spa_test")
class ChannelScale(L.Layer):
    def build(self, shape):
        self.scale = self.add_weight(shape=(shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


@keras.saving.register_keras_serializable("spa_test")
class MyDense(L.Layer):
    def __init__(self, units, **kw):
        super().__init__(**kw)
        self.units = units

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], self.units), name="w")
        self.b = self.add_weight(shape=(self.units,), initializer="zeros", name="b")

    def call(self, x):
        return keras.ops.relu(keras.ops.matmul(x, self.w) + self.b)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_custom_layers_registered_through_the_public_api():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = ChannelScale(name="scale")(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    x = MyDense(10, name="mine")(x)
    model = keras.Model(inp, L.Dense(2)(x))
    before = spa.plan(model, ratio=0.5).removed()
    assert "conv" not in before and "mine" not in before, "unregistered layers are held fixed"

    spa.register_layer(ChannelScale, kind="identity", params={"scale": {0: "out"}})
    spa.register_layer(MyDense, kind="linear", params={"w": {0: "in", 1: "out"}, "b": {0: "out"}},
                       config={"units": "out"})
    rng = np.random.default_rng(0)
    model.get_layer("scale").scale.assign(rng.uniform(0.5, 2, 8).astype("float32"))
    model.get_layer("mine").b.assign(rng.normal(0, 0.1, 10).astype("float32"))
    slim, plan = check_pruned(model, 0.5)
    assert slim.get_layer("scale").scale.shape == (4,)
    assert slim.get_layer("mine").w.shape == (4, 5) and slim.get_layer("mine").units == 5


def test_register_layer_refuses_a_bad_kind():
    import pytest

    with pytest.raises(spa.InvalidArgumentError, match="kind"):
        spa.register_layer(ChannelScale, kind="attention")


def test_einsum_dense_into_heads_and_back():
    inp = keras.Input((5, 12))
    x = L.EinsumDense("abc,cde->abde", output_shape=(None, 3, 8), bias_axes="e", name="to_heads")(inp)
    x = L.ReLU()(x)
    x = L.EinsumDense("abde,ef->abdf", output_shape=(None, 3, 6), name="per_head")(x)
    x = L.Reshape((5, 18))(x)
    model = keras.Model(inp, L.Dense(2)(x))
    slim, plan = check_pruned(model, 0.5)
    assert slim.get_layer("to_heads").kernel.shape == (12, 3, 4)
    assert slim.get_layer("per_head").kernel.shape == (4, 6)


def test_vit_reaches_half_its_macs_with_the_residual_stream_sliced():
    model = build_vit()
    plan = spa.plan(model, target_macs=0.5, residual_stream="slice")  # what docs/transformers.md recommends
    assert abs(plan.settings["reached"] / plan.settings["base"] - 0.5) < 0.01
    slim = spa.apply(plan)
    assert slim.count_params() == count_params(plan.graph, plan)
    assert "patch_embed" in plan.removed()  # the residual stream itself narrowed
