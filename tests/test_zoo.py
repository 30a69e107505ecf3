"""Every keras.applications constructor prunes at ratio 0.5 and passes the zero-channel oracle."""

import pytest

from spa_keras.testing import build_zoo_model, perturb_statistics, zoo_names

from conftest import check_pruned


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo_names())
def test_zoo_model_prunes_and_passes_the_oracle(name):
    model = perturb_statistics(build_zoo_model(name, size=64))
    slim, plan = check_pruned(model, 0.5)
    assert plan.n_removed > 0
    assert slim.count_params() < 0.75 * model.count_params()


def test_zoo_list_is_the_whole_of_keras_applications():
    names = zoo_names()
    assert len(names) >= 40 and {"ResNet50", "MobileNetV3Small", "ConvNeXtTiny", "NASNetMobile"} <= set(names)


# one of each family: residual, depthwise + squeeze-excite, dense concatenation, plain, LayerNorm + MLP
OBSPA_ZOO = ["ResNet50", "MobileNetV2", "EfficientNetB0", "DenseNet121", "VGG16", "ConvNeXtTiny"]


@pytest.mark.slow
@pytest.mark.parametrize("name", OBSPA_ZOO)
def test_zoo_model_prunes_with_obspa_and_passes_the_oracle(name):
    model = perturb_statistics(build_zoo_model(name, size=32))
    slim, plan = check_pruned(model, 0.5, algorithm="obspa", data_free="random", calibration_samples=4,
                              algorithm_options={"batch_size": 4}, verbose=False)
    assert plan.n_removed > 0
    assert plan.compensation, "no consumer was re-fitted"
