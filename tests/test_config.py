"""PruningConfig validates every argument and round-trips; Pruner and the opt-in model.prune."""

import json

import keras
import numpy as np
import pytest
from keras import layers as L

import spa_keras as spa


def mlp():
    inp = keras.Input((8,))
    x = L.Dense(16, activation="relu", name="hidden")(inp)
    return keras.Model(inp, L.Dense(2, name="out")(x))


def test_round_trip_through_json():
    cfg = spa.PruningConfig(ratio=0.3, criterion="L1", global_pruning=True, ignored_layers=["hidden"], round_to=8,
                            max_ratio=0.8, group_reduction="max", normalization=None, ratio_per_layer={"h*": 0.2},
                            target_macs=0.5, residual_stream="slice", steps=2, algorithm="obspa",
                            calibration_samples=64, data_free="random")
    back = spa.PruningConfig.from_config(json.loads(json.dumps(cfg.get_config())))
    assert back == cfg and back.criterion == "l1"
    assert spa.PruningConfig() == spa.PruningConfig.from_config(spa.PruningConfig().get_config())


def test_data_is_held_but_not_stored():
    x = np.zeros((4, 8), "float32")
    cfg = spa.PruningConfig(criterion="taylor", data=x, calibration_data=x)
    config = cfg.get_config()
    assert config["data"] is None and config["calibration_data"] is None
    assert cfg.kwargs()["calibration_data"] is x


@pytest.mark.parametrize("bad, word", [
    (dict(ratio=1.0), "ratio"), (dict(ratio="half"), "ratio"), (dict(ratio=-0.1), "ratio"),
    (dict(criterion="l3"), "criterion"), (dict(global_pruning=1), "global_pruning"),
    (dict(ignored_layers="conv1"), "ignored_layers"), (dict(ignored_layers=[3]), "ignored_layers"),
    (dict(round_to=0), "round_to"), (dict(round_to=True), "round_to"), (dict(max_ratio=1.5), "max_ratio"),
    (dict(group_reduction="median"), "group_reduction"), (dict(normalization="z"), "normalization"),
    (dict(ratio_per_layer=[0.5]), "ratio_per_layer"), (dict(ratio_per_layer={"a": 2}), "ratio_per_layer"),
    (dict(target_macs=0), "target_macs"), (dict(target_params=float("nan")), "target_params"),
    (dict(target_macs=0.5, target_params=0.5), "not both"), (dict(residual_stream="no"), "residual_stream"), (dict(hidden_ratio=0.2), "residual_stream="),
    (dict(steps=0), "steps"), (dict(algorithm="obs"), "algorithm"),
    (dict(calibration_samples=-5), "calibration_samples"),
    (dict(calibration_samples=1.5), "calibration_samples"), (dict(data_free="zeros"), "data_free"),
    (dict(calibration_data="calib.npy"), "calibration_data"),
])
def test_every_argument_is_validated(bad, word):
    with pytest.raises(spa.InvalidArgumentError, match=word):
        spa.PruningConfig(**bad)


def test_algorithm_settings_reach_prune():
    kw = spa.PruningConfig(ratio=0.4).kwargs()
    assert kw["algorithm"] is None and kw["calibration_samples"] is None and kw["algorithm_options"] is None
    kw = spa.PruningConfig(algorithm="reconstruct", calibration_samples=128, data_free="random",
                           algorithm_options={"epochs": (2, 3)}).kwargs()
    assert kw["algorithm"] == "reconstruct" and kw["calibration_samples"] == 128 and kw["data_free"] == "random"
    assert kw["algorithm_options"] == {"epochs": (2, 3)}
    with pytest.raises(spa.InvalidArgumentError, match="no option 'damp'"):
        spa.PruningConfig(algorithm="reconstruct", algorithm_options={"damp": 0.1})
    with pytest.raises(spa.InvalidArgumentError, match="no algorithm"):
        spa.PruningConfig(algorithm_options={"damp": 0.1})
    with pytest.raises(spa.InvalidArgumentError, match="no option .rate.. Did you mean .ratio."):
        spa.PruningConfig.from_config({"ratio": 0.5, "rate": 0.5})


def test_pruner_prunes_and_reports():
    model = mlp()
    pruner = spa.Pruner(spa.PruningConfig(ratio=0.5), round_to=4)
    assert pruner.config.round_to == 4 and pruner.config.ratio == 0.5
    slim = pruner(model)
    assert slim.get_layer("hidden").units == 8 and model.get_layer("hidden").units == 16
    assert pruner.report.rows[0] == dict(layer="hidden", width_before=16, width_after=8, macs_before=128, macs_after=64)
    assert spa.Pruner.from_config(pruner.get_config()).config == pruner.config
    assert pruner.plan(model).n_removed == 8
    stepped = spa.Pruner(ratio=0.5, steps=2)
    assert stepped(model).get_layer("hidden").units == 8
    assert stepped.report.macs_after == 80 and stepped.report.rows[0]["width_after"] == 8


def test_model_prune_is_opt_in_and_mirrors_quantize():
    model = mlp()
    spa.disable_model_prune()
    assert not hasattr(model, "prune")
    spa.enable_model_prune()
    try:
        slim = model.prune(config=spa.PruningConfig(ratio=0.5))
        assert slim.get_layer("hidden").units == 8
        assert model.prune("l1", ratio=0.25).get_layer("hidden").units == 12
        seq = keras.Sequential([keras.Input((4,)), L.Dense(8), L.Dense(1)])
        assert seq.prune(ratio=0.5).layers[0].units == 4
        with pytest.raises(spa.InvalidArgumentError, match="ratio"):
            model.prune(ratio=2.0)
    finally:
        spa.disable_model_prune()
    assert not hasattr(model, "prune")
