"""Selection: targets met within 1%, per-layer ratios, global limits, iterative steps."""

import warnings

import keras
import numpy as np
import pytest
from keras import layers as L

import spa_keras as spa
from spa_keras.metrics import count_macs, count_params
from spa_keras.testing import build_vit, build_zoo_model

TARGET_MODELS = ["ResNet50", "MobileNetV2", "EfficientNetB0", "DenseNet121", "vit"]


def _model(name):
    return build_vit() if name == "vit" else build_zoo_model(name, 64)


@pytest.mark.parametrize("global_pruning", [False, True])
@pytest.mark.parametrize("name", TARGET_MODELS)
def test_target_macs_lands_within_one_percent(name, global_pruning):
    model = _model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a missed target warns: make it fail here
        plan = spa.plan(model, target_macs=0.5, global_pruning=global_pruning)
    base, reached = count_macs(plan.graph), count_macs(plan.graph, plan)
    assert plan.settings["reached"] == reached
    assert abs(reached / base - 0.5) <= 0.01
    slim = spa.apply(plan)
    assert slim.count_params() == count_params(plan.graph, plan)


def test_target_params_absolute_and_bad_targets():
    model = build_zoo_model("MobileNetV2", 64)
    goal = 1_500_000
    plan = spa.plan(model, target_params=goal)
    assert abs(count_params(plan.graph, plan) - goal) <= 0.01 * goal
    with pytest.raises(spa.InvalidArgumentError, match="more than the model has"):
        spa.plan(model, target_params=10 * model.count_params())
    with pytest.raises(spa.InvalidArgumentError, match="not both"):
        spa.plan(model, target_params=0.5, target_macs=0.5)


def test_unreachable_target_warns_and_reports_where_it_landed():
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(2)(L.Dense(3, name="tiny")(inp)))
    with pytest.warns(UserWarning, match="could not be reached"):
        plan = spa.plan(model, target_macs=0.1)
    assert plan.settings["reached"] > 0.1 * plan.settings["base"]


def test_ratio_per_layer_patterns():
    model = build_zoo_model("MobileNetV2", 64)
    plan = spa.plan(model, ratio=0.0, ratio_per_layer={"block_1_expand": 0.5, "block_1[0-5]_*": 0.25})
    removed = plan.removed()
    assert len(removed["block_1_expand"]) == 48  # 96 channels, half
    assert len(removed["block_12_expand"]) == int(0.25 * 576)
    assert "block_2_expand" not in removed
    with pytest.raises(spa.InvalidArgumentError, match="matches no layer"):
        spa.plan(model, ratio_per_layer={"nope*": 0.5})


def test_global_pruning_honours_max_ratio():
    model = build_zoo_model("ResNet50", 32)
    plan = spa.plan(model, ratio=0.6, global_pruning=True, max_ratio=0.7)
    a = plan.analysis
    for g in a.groups:
        lost = plan.removed_classes[g.classes].sum()
        assert lost <= int(0.7 * g.size)
    sizes = [plan.removed_classes[g.classes].mean() for g in a.groups]
    assert max(sizes) > 0.6 > min(sizes), "global ranking removes unevenly across groups"


def test_iterative_steps_rescore_and_land_on_the_one_shot_target():
    model = build_zoo_model("ResNet50", 32)
    one_shot = spa.plan(model, ratio=0.5)
    target = count_macs(one_shot.graph, one_shot) / count_macs(one_shot.graph)
    slim = spa.prune(model, ratio=0.5, steps=3)
    reached = count_macs(spa.inspect(slim).graph) / count_macs(one_shot.graph)
    assert abs(reached - target) <= 0.01
    x = np.zeros((1, 32, 32, 3), "float32")
    assert slim(x).shape == model(x).shape
    with pytest.raises(spa.InvalidArgumentError, match="steps"):
        spa.prune(model, steps=0)
