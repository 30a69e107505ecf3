"""keras_hub transformers (GPT-2, Llama, Mistral, Gemma, BERT) pruned for real: tiny random configs,
checked with the zero-channel oracle, generate(), a .keras round trip and the parameter count."""

import warnings

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402

import spa_keras as spa  # noqa: E402
from spa_keras.backends.keras import verify, zeroed_copy  # noqa: E402
from spa_keras.metrics import count_params  # noqa: E402

V = 64


def _perturb_norms(model, seed=1):
    """Trained-looking norm scales (keras_hub initialises them to one, or to zero for Gemma)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "norm" in v.path:
            v.assign(v.numpy() + rng.normal(0, 0.3, v.shape).astype("float32"))


def build(family):
    keras.utils.set_random_seed(0)
    m = keras_hub.models
    if family == "llama":
        bb = m.LlamaBackbone(vocabulary_size=V, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32,
                             intermediate_dim=64)
        model = m.LlamaCausalLM(backbone=bb, preprocessor=None)
    elif family == "mistral":
        bb = m.MistralBackbone(vocabulary_size=V, num_layers=2, num_query_heads=4, num_key_value_heads=2,
                               hidden_dim=32, intermediate_dim=64, head_dim=8, sliding_window=None)
        model = m.MistralCausalLM(backbone=bb, preprocessor=None)
    elif family == "gpt2":
        bb = m.GPT2Backbone(vocabulary_size=V, num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=64,
                            max_sequence_length=16, dropout=0)
        model = m.GPT2CausalLM(backbone=bb, preprocessor=None)
    elif family == "gemma":
        bb = m.GemmaBackbone(vocabulary_size=V, num_layers=2, num_query_heads=4, num_key_value_heads=1, hidden_dim=32,
                             intermediate_dim=128, head_dim=8)
        model = m.GemmaCausalLM(backbone=bb, preprocessor=None)
    else:
        bb = m.BertBackbone(vocabulary_size=V, num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=64,
                            max_sequence_length=16, dropout=0)
        model = m.BertTextClassifier(backbone=bb, num_classes=3, preprocessor=None, dropout=0)
    _perturb_norms(model)
    return model


def inputs(family, n=2, t=12, seed=0):
    ids = np.random.default_rng(seed).integers(0, V, (n, t)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    if family == "bert":
        x["segment_ids"] = np.zeros_like(ids)
    return x


def weights_of(model):
    return {v.path: v.numpy().copy() for v in model.weights}


FAMILIES = ["gpt2", "llama", "mistral", "gemma", "bert"]


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_for_real_exact_against_the_oracle_and_saved(family, tmp_path):
    model = build(family)
    before = weights_of(model)
    x = inputs(family)
    plan = spa.plan(model, ratio=0.5)
    slim = spa.apply(plan)
    assert type(slim) is type(model) and type(slim.backbone) is type(model.backbone)
    v = verify(plan.source, plan, slim, x)
    assert v["passed"] and v["max_abs_diff"] < 1e-4 * max(v["scale"], 1), v
    assert slim.count_params() == count_params(plan.graph, plan) < model.count_params()
    cfg, old = slim.backbone.get_config(), model.backbone.get_config()
    assert cfg["intermediate_dim"] == old["intermediate_dim"] // 2  # uniform across blocks: one config key
    removed = plan.removed()
    if family in ("mistral", "gemma"):  # an explicit head size: heads go
        heads = [k for k in removed if k.endswith(":heads")]
        assert len(heads) == 2 and cfg["num_query_heads"] == 2
        assert cfg["num_key_value_heads"] == old["num_key_value_heads"]  # the generate() cache keeps its shape
    else:  # the head size is hidden_dim // heads: heads stay
        assert not any(k.endswith(":heads") for k in removed)
    path = str(tmp_path / "slim.keras")
    slim.save(path)
    back = keras.saving.load_model(path)  # keras_hub's own classes, nothing of spa_keras needed
    assert type(back) is type(model)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(slim(x)), atol=1e-6)
    assert all(np.array_equal(before[k], v) for k, v in weights_of(model).items()), "the input model changed"


@pytest.mark.parametrize("family", ["gpt2", "mistral", "gemma"])
def test_greedy_generate_of_the_pruned_model_equals_the_zeroed_reference(family):
    model = build(family)
    plan = spa.plan(model, ratio=0.5)
    slim, reference = spa.apply(plan), zeroed_copy(plan.source, plan)
    x = inputs(family, t=5, seed=3)
    prompt = {k: np.pad(a, ((0, 0), (0, 7))) for k, a in x.items()}  # right-padded to the output length
    out = []
    for m in (slim, reference):
        m.compile(sampler="greedy")
        out.append(m.generate(prompt, stop_token_ids=None)["token_ids"])
    assert out[0].shape == (2, 12) and np.array_equal(out[0], out[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_ratio_zero_changes_nothing(family):
    model = build(family)
    x = inputs(family)
    slim = spa.prune(model, ratio=0.0)
    assert slim.count_params() == model.count_params()
    np.testing.assert_array_equal(np.asarray(slim(x)), np.asarray(model(x)))


def test_grouped_query_heads_go_evenly_inside_each_key_value_group():
    model = build("mistral")  # 4 query heads in 2 groups of 2
    plan = spa.plan(model, ratio=0.5)
    for block in range(2):
        gone = plan.removed()[f"mistral_backbone/transformer_layer_{block}:heads"]
        assert len(gone) == 2 and sorted(g // 2 for g in gone) == [0, 1], gone  # one from each group
    slim = spa.apply(plan)
    shapes = {v.path: tuple(v.shape) for v in slim.weights}
    assert shapes["transformer_layer_0/self_attention/query/kernel"] == (32, 2, 8)
    assert shapes["transformer_layer_0/self_attention/key/kernel"] == (32, 2, 8)  # both key/value heads stay


def test_global_pruning_and_targets_keep_block_widths_uniform():
    model = build("gemma")
    for kw in (dict(ratio=0.4, global_pruning=True), dict(target_params=0.7)):
        plan = spa.plan(model, **kw)
        slim = spa.apply(plan)
        assert slim.count_params() == count_params(plan.graph, plan)
        widths = {k: len(v) for k, v in plan.removed().items()}
        mlp = {v for k, v in widths.items() if k.endswith(":mlp")}
        assert len(mlp) <= 1, widths  # every block loses the same number
    assert abs(plan.settings["reached"] / plan.settings["base"] - 0.7) < 0.01


def test_an_unknown_block_class_is_held_and_named():
    class Opaque(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], shape[-1]), name="w")

        def call(self, x):
            return x @ self.w

    inp = keras.Input((None, 8))
    x = keras.layers.Dense(8, name="up")(inp)
    model = keras.Model(inp, keras.layers.Dense(4)(Opaque(name="opaque_block")(x)))
    text = str(spa.inspect(model))
    assert "opaque_block: unknown layer class Opaque" in text
    assert spa.plan(model, ratio=0.5).n_removed == 0  # its input and output stay whole


# ---- the residual stream ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma"])
def test_slicing_the_stream_of_an_rms_norm_model_is_exact_where_the_channels_are_zero(family):
    model = build(family)
    plan = spa.plan(model, ratio=0.5, residual_stream="slice", hidden_ratio=0.25)
    slim = spa.apply(plan)
    hidden = slim.backbone.get_config()["hidden_dim"]
    assert hidden < 32 and (family != "llama" or hidden % 8 == 0)  # Llama: hidden_dim // heads stays the head size
    v = verify(plan.source, plan, slim, inputs(family))  # norm scales x sqrt(D/D'), epsilon x D/D'
    assert v["passed"] and v["max_abs_diff"] < 1e-4 * max(v["scale"], 1), v
    assert slim.count_params() == count_params(plan.graph, plan)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_fold_and_rotate_with_nothing_dropped_keeps_the_logits(family):
    model = build(family)
    x, calib = inputs(family, n=8, seed=5), inputs(family, n=48, seed=7)
    pruner = spa.Pruner(ratio=0.0, residual_stream="rotate", hidden_ratio=0.0, calibration_data=calib)
    slim = pruner.prune(model)
    assert pruner.last_plan.settings["rotation_exact"]
    ref = np.asarray(model(x))
    assert np.abs(np.asarray(slim(x)) - ref).max() < 1e-5 * max(1.0, np.abs(ref).max())
    rotated = {v.path: v.numpy() for v in slim.weights}
    assert not np.allclose(rotated["token_embedding/embeddings"], model.backbone.token_embedding.embeddings.numpy())


def test_rotating_a_vit_with_nothing_dropped_keeps_its_outputs_and_then_drops_width():
    from spa_keras.testing import build_vit

    keras.utils.set_random_seed(0)
    model = build_vit()
    _perturb_norms(model)
    rng = np.random.default_rng(0)
    x, calib = rng.standard_normal((4, 32, 32, 3)).astype("float32"), rng.standard_normal((48, 32, 32, 3))
    ref = np.asarray(model(x))
    same = spa.prune(model, ratio=0.0, residual_stream="rotate", hidden_ratio=0.0, calibration_data=calib)
    assert np.abs(np.asarray(same(x)) - ref).max() < 1e-5 * np.abs(ref).max()  # LayerNorm: centred, then rotated
    slim = spa.prune(model, ratio=0.0, residual_stream="rotate", hidden_ratio=0.25, calibration_data=calib)
    assert slim.get_layer("patch_embed").filters == 36 and slim.get_layer("final_ln").gamma.shape == (36,)


def test_tied_embeddings_rotate_approximately_and_say_so():
    model = build("gpt2")  # its output head is the token embedding, behind a final LayerNorm with a scale
    pruner = spa.Pruner(ratio=0.0, residual_stream="rotate", hidden_ratio=0.25, calibration_data=inputs("gpt2", 32))
    slim = pruner.prune(model)
    assert pruner.last_plan.settings["rotation_exact"] is False
    # head size hidden_dim // heads: every head gives up a quarter of its size, and the heads stay
    assert slim.backbone.get_config()["hidden_dim"] == 24 and slim.backbone.get_config()["num_heads"] == 4


def test_reshaping_every_head_with_nothing_dropped_keeps_the_logits():
    # GPT-2: queries and keys, values and outputs of each head turned onto their principal directions,
    # the value bias moved into the output bias; exact where the final norm before the tied head has a
    # scale of one and no offset (its embedding is centred as a writer of the stream, and read again)
    model = build("gpt2")
    model.backbone.get_layer("layer_norm").gamma.assign(np.ones(32, "float32"))
    model.backbone.get_layer("layer_norm").beta.assign(np.zeros(32, "float32"))
    x, calib = inputs("gpt2", n=8, seed=5), inputs("gpt2", n=48, seed=7)
    ref = np.asarray(model(x))
    same = spa.prune(model, ratio=0.0, residual_stream="rotate", hidden_ratio=0.0, calibration_data=calib)
    assert np.abs(np.asarray(same(x)) - ref).max() < 1e-5 * max(1.0, np.abs(ref).max())
    old = model.backbone.get_layer("transformer_layer_0")._self_attention_layer._query_dense.kernel.numpy()
    new = same.backbone.get_layer("transformer_layer_0")._self_attention_layer._query_dense.kernel.numpy()
    assert not np.allclose(np.abs(old).sum(0), np.abs(new).sum(0), rtol=0.1)  # each head's dimensions changed


def test_a_rotary_model_narrows_every_head_exactly_against_the_oracle(tmp_path):
    # Llama: hidden 32, 4 query heads of 8. A quarter of the stream takes one frequency pair of every head
    # (the heads stay); the rotary base follows so that the pairs kept turn as they did
    model = build("llama")
    x, calib = inputs("llama", n=4, seed=5), inputs("llama", n=48, seed=7)
    for hidden, size in ((0.25, 6), (0.5, 4)):
        pruner = spa.Pruner(ratio=0.0, residual_stream="rotate", hidden_ratio=hidden, calibration_data=calib)
        slim = pruner.prune(model)
        plan = pruner.last_plan
        cfg = slim.backbone.get_config()
        assert (cfg["hidden_dim"], cfg["num_query_heads"], cfg["num_key_value_heads"]) == (size * 4, 4, 2)
        kept = np.nonzero(plan.keep_mask(plan.analysis.layouts[[n for n in plan.graph.nodes
                                                                 if n.kind == "transformer"][0].outputs[-2]]))[0]
        stride = kept[1] - kept[0]
        assert list(kept) == [f + half for half in (0, 4) for f in range(0, size // 2 * stride, stride)]
        assert cfg["rope_max_wavelength"] == pytest.approx(10000 ** (stride * size / 8))
        v = verify(plan.source, plan, slim, x)
        assert v["passed"] and v["max_abs_diff"] < 1e-4 * max(v["scale"], 1), v
        assert slim.count_params() == count_params(plan.graph, plan)
    path = str(tmp_path / "slim.keras")
    slim.save(path)
    np.testing.assert_allclose(np.asarray(keras.saving.load_model(path)(x)), np.asarray(slim(x)), atol=1e-6)
    slim.compile(sampler="greedy")
    reference = zeroed_copy(plan.source, plan)
    reference.compile(sampler="greedy")
    prompt = {k: np.pad(a[:, :5], ((0, 0), (0, 7))) for k, a in x.items()}
    assert np.array_equal(slim.generate(prompt, stop_token_ids=None)["token_ids"],
                          reference.generate(prompt, stop_token_ids=None)["token_ids"])


def test_rotary_heads_can_only_lose_what_a_base_wavelength_can_write():
    from spa_keras.backends.keras_hub import _rope_base

    assert _rope_base(10000, np.arange(8), 8, None) == 10000
    assert _rope_base(10000, np.array([0, 1, 4, 5]), 8, None) == pytest.approx(100.0)  # pairs 0, 1: base^(4/8)
    assert _rope_base(10000, np.array([0, 2, 4, 6]), 8, None) == pytest.approx(10000.0)  # pairs 0, 2: base^(2*4/8)
    with pytest.raises(spa.RebuildError, match=r"frequency pairs \(f, f \+ 4\)"):
        _rope_base(10000, np.array([1, 2, 5, 6]), 8, build("llama").backbone)


def test_an_unreachable_hidden_ratio_warns_with_what_was_removed():
    # LlamaBackbone derives the head size (8) from hidden_dim: a rotated stream moves one frequency pair of
    # each of the 4 heads at a time, 8 channels, so a tenth of 32 cannot be removed; Mistral sets head_dim
    calib = inputs("llama", 16)
    with pytest.warns(UserWarning, match=r"hidden_ratio=0.1 removes 25% .*'llama_causal_lm[^']*'.*8 channels"):
        slim = spa.prune(build("llama"), ratio=0.0, residual_stream="rotate", hidden_ratio=0.1,
                         calibration_data=calib)
    assert slim.backbone.get_config()["hidden_dim"] == 24
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        slim = spa.prune(build("mistral"), ratio=0.0, residual_stream="rotate", hidden_ratio=0.25,
                         calibration_data=calib)
    assert slim.backbone.get_config()["hidden_dim"] == 24 and slim.backbone.get_config()["num_query_heads"] == 4


def test_bad_residual_stream_requests_are_clear_errors():
    bert = build("bert")
    with pytest.raises(spa.InvalidArgumentError, match="post-norm"):
        spa.prune(bert, residual_stream="rotate", hidden_ratio=0.25, calibration_data=inputs("bert", 8))
    with pytest.raises(spa.InvalidArgumentError, match="calibration_data"):
        spa.prune(build("llama"), residual_stream="rotate", hidden_ratio=0.25)
    with pytest.raises(spa.InvalidArgumentError, match="residual_stream"):
        spa.PruningConfig(hidden_ratio=0.25)
    with pytest.raises(spa.CalibrationDataError, match=r"keys \['token_ids'\].*padding_mask.*missing"):
        spa.prune(build("llama"), algorithm="obspa", calibration_data={"token_ids": inputs("llama")["token_ids"]})


# ---- OBSPA on transformers -------------------------------------------------------------------------------


def test_obspa_compensates_the_projections_that_read_heads_and_mlp_units():
    model = build("mistral")
    x, calib = inputs("mistral", n=8, seed=5), inputs("mistral", n=64, seed=7)
    ref = np.asarray(model(x))
    err = {}
    for update in ("none", "obs"):
        pruner = spa.Pruner(ratio=0.5, algorithm="obspa", calibration_data=calib, algorithm_options={"update": update})
        slim = pruner.prune(model, verbose=False)
        plan = pruner.last_plan
        err[update] = float(np.mean((np.asarray(slim(x)) - ref) ** 2))
        assert verify(plan.source, plan, spa.apply(plan), x)["passed"]  # the oracle, compensation included
    compensated = {k for k in plan.compensation}
    kernels = {p.key: p.name for n in plan.graph.nodes for p in n.params}
    names = {kernels[k] for k in compensated}
    assert any(n.endswith("attention_output/kernel") for n in names) and any(n.endswith("output_dense/kernel")
                                                                             for n in names)
    assert err["obs"] < 0.5 * err["none"], err


def _padded_twins(family, n):
    """Two calibration dicts padded after position 8, with different tokens only where they are padded."""
    calib = inputs(family, n=n, seed=7)
    calib["padding_mask"][:, 8:] = 0
    other = {k: v.copy() for k, v in calib.items()}
    other["token_ids"][:, 8:] = (other["token_ids"][:, 8:] + 17) % V
    return calib, other


def test_padded_positions_never_enter_a_hessian():
    model = build("gpt2")
    calib, other = _padded_twins("gpt2", 32)
    plans = [spa.plan(model, ratio=0.5, calibration_data=c, verbose=False) for c in (calib, other)]
    assert np.array_equal(plans[0].removed_classes, plans[1].removed_classes)
    for k, v in plans[0].compensation.items():
        np.testing.assert_allclose(v, plans[1].compensation[k], rtol=1e-5, atol=1e-7)


def test_padded_positions_never_enter_the_reconstruction_loss():
    from spa_keras.algorithms.reconstruct import _probes, _Trainer
    from spa_keras.frontends.keras import from_keras

    model = build("llama")
    calib, other = _padded_twins("llama", 8)
    plan = spa.plan(model, ratio=0.5)
    teacher = from_keras(model)
    trainer = _Trainer(teacher, from_keras(spa.apply(plan)), plan, _probes(teacher), sliced=True)
    order = [s.name for s in teacher.input_specs()]
    losses = [float(trainer.loss([c[k] for k in order])) for c in (calib, other)]
    assert losses[0] > 0 and losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_a_dead_head_is_reshaped_without_failing():
    model = build("gpt2")
    block = model.backbone.get_layer("transformer_layer_1")._self_attention_layer
    for dense in (block._query_dense, block._key_dense, block._value_dense):
        kernel = dense.kernel.numpy()
        kernel[:, 2, :] = 0.0  # head 2 reads nothing
        dense.kernel.assign(kernel)
    slim = spa.prune(model, ratio=0.0, residual_stream="rotate", hidden_ratio=0.25, calibration_data=inputs("gpt2", 32))
    assert slim.backbone.get_config()["hidden_dim"] == 24
    assert np.isfinite(np.asarray(slim(inputs("gpt2")))).all()
