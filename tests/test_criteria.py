"""Each criterion on a case whose right answer is known."""

import keras
import numpy as np
import pytest
from keras import layers as L

import spa_keras as spa
from spa_keras.criteria import CRITERIA

from conftest import check_pruned


def small_net(width=8, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(width, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(4, 3, padding="same", name="c2")(x)
    out = L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


def removed_c1(model, criterion, n=1, **kw):
    plan = spa.plan(model, ratio=n / 8 + 1e-6, criterion=criterion, ignored_layers=["c2"], **kw)
    return set(plan.removed().get("c1", []))


@pytest.mark.parametrize("criterion", ["l1", "l2", "lamp", "fpgm"])
def test_dead_channel_goes_first(criterion):
    model = small_net()
    k = model.get_layer("c1").kernel
    w = k.numpy()
    if criterion == "fpgm":
        others = [i for i in range(8) if i != 5]
        w[..., 5] = w[..., others].mean(axis=-1)  # the geometric centre of the others: redundant
    else:
        w[..., 5] = 0.0
        model.get_layer("c2").kernel.assign(np.where(np.arange(8)[None, None, :, None] == 5, 0.0,
                                                     model.get_layer("c2").kernel.numpy()))
    k.assign(w)
    assert removed_c1(model, criterion) == {5}


def test_bn_scale_prefers_the_smallest_gamma():
    model = small_net()
    gamma = np.ones(8, "float32")
    gamma[2] = 1e-3
    model.get_layer("bn1").gamma.assign(gamma)
    assert removed_c1(model, "bn_scale") == {2}


def test_bn_scale_without_any_batchnorm_is_an_error_not_a_silent_no_op():
    inp = keras.Input((8,))
    out = L.Dense(3)(L.Dense(8, activation="relu", name="d1")(inp))
    with pytest.raises(spa.InvalidArgumentError, match="bn_scale.*'no_bn' has no such scale.*l2"):
        spa.plan(keras.Model(inp, out, name="no_bn"), ratio=0.5, criterion="bn_scale")


def test_bn_scale_keeps_the_channels_it_cannot_score():
    inp = keras.Input((6, 6, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(8, 3, name="c")(inp))
    x = L.Dense(8, activation="relu", name="d1")(L.GlobalAveragePooling2D()(L.ReLU()(x)))
    plan = spa.plan(keras.Model(inp, L.Dense(3)(x)), ratio=0.5, criterion="bn_scale")
    removed = plan.removed()
    assert len(removed["c"]) == 4 and "d1" not in removed


def test_random_is_seeded_and_counts_right():
    model = small_net()
    a = removed_c1(model, "random", n=3)
    assert len(a) == 3 and a == removed_c1(model, "random", n=3)


def _unread_channel_model():
    """Channel 6 of c1 has the largest weights of all but c2 never reads it: the loss cannot depend on it."""
    model = small_net()
    w = model.get_layer("c1").kernel.numpy()
    w[..., 6] *= 10.0
    model.get_layer("c1").kernel.assign(w)
    c2 = model.get_layer("c2").kernel.numpy()
    c2[:, :, 6, :] = 0.0
    model.get_layer("c2").kernel.assign(c2)
    return model


@pytest.mark.parametrize("criterion", ["taylor", "hessian", "snip"])
def test_gradient_criteria_find_the_channel_the_loss_ignores(criterion):
    model = _unread_channel_model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6, 6, 3)).astype("float32")
    y = rng.integers(0, 3, 32)
    assert removed_c1(model, criterion, data=(x, y)) == {6}
    assert 6 not in removed_c1(model, "l2"), "magnitude alone would keep it: the test tells them apart"


def test_gradient_criteria_without_labels_and_from_a_dataset():
    import tensorflow as tf

    model = _unread_channel_model()
    x = np.random.default_rng(1).standard_normal((16, 6, 6, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4)
    assert removed_c1(model, "taylor", data=ds) == {6}
    assert removed_c1(model, "snip", data=x) == {6}


def test_gradient_criterion_without_data_is_refused():
    with pytest.raises(spa.InvalidArgumentError, match="needs data"):
        spa.plan(small_net(), criterion="taylor")


def test_callable_criterion_and_unknown_name():
    def prefer_channel_zero(analysis, weight, **_):
        scores = np.ones(analysis.n_classes)
        for node in analysis.graph.nodes:
            if node.layer == "c1":
                scores[analysis.class_of[analysis.layouts[node.outputs[0]][0]]] = 0.0
        return scores

    assert removed_c1(small_net(), prefer_channel_zero) == {0}
    with pytest.raises(spa.InvalidArgumentError, match="criterion must be one of"):
        spa.plan(small_net(), criterion="l3")


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_every_criterion_prunes_resnet_style_model(criterion):
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classifier_activation=None)
    data = np.random.default_rng(0).standard_normal((8, 32, 32, 3)).astype("float32")
    kw = dict(data=data) if criterion in ("taylor", "hessian", "snip") else {}
    slim, plan = check_pruned(model, 0.3, criterion=criterion, global_pruning=True, **kw)
    assert plan.n_removed > 0


def test_lamp_and_l2_give_different_plans_under_global_pruning():
    keras.utils.set_random_seed(0)
    m = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    widths = {c: spa.plan(m, ratio=0.5, global_pruning=True, criterion=c).widths() for c in ("l2", "lamp")}
    assert widths["l2"] != widths["lamp"]
    # LAMP normalises within each group by the scores above it; asking for mean normalisation gives L2's plan
    same = spa.plan(m, ratio=0.5, global_pruning=True, criterion="lamp", normalization="mean").widths()
    assert same == widths["l2"]


@pytest.mark.parametrize("shape,axes", [((3, 3, 16, 32), (2, 3)), ((3, 3, 16, 1), (2,)), ((16, 32), (0, 1)),
                                        ((7,), (0,)), ((100, 8), (1,)), ((5, 5, 4, 6), (3,)),
                                        ((2, 3, 4, 5), (1, 2, 3)), ((64, 3, 3, 3), (0, 1))])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sums_of_squares_per_axis_equal_the_squared_copys(shape, axes, dtype):
    from spa_keras.criteria.base import per_axis_sum, per_axis_sum_squares

    a = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    want, got = per_axis_sum(np.square(a), axes), per_axis_sum_squares(a, axes)
    assert sorted(got) == sorted(axes)
    for ax in axes:
        assert got[ax].dtype == np.float64
        np.testing.assert_allclose(got[ax], want[ax], rtol=1e-6 if dtype == "float32" else 1e-12)
