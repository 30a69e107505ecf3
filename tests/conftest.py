import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

import spa_keras as spa  # noqa: E402
from spa_keras.backends.keras import verify  # noqa: E402
from spa_keras.frontends.keras import from_keras  # noqa: E402
from spa_keras.metrics import count_macs, count_params  # noqa: E402
from spa_keras.testing import perturb_statistics as randomize_bn  # noqa: E402,F401
from spa_keras.testing import random_inputs, weights_hash  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_session():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


def check_pruned(model, ratio=0.5, oracle=True, **kwargs):
    """Prune ``model`` and assert the properties every pruned model must have. Returns (slim, plan)."""
    before = weights_hash(model)
    plan = spa.plan(from_keras(model), ratio=ratio, **kwargs)
    kg = plan.source
    slim = spa.apply(plan)
    x = random_inputs(model)
    out = slim(x)
    ref = model(x)
    for a, b in zip(keras.tree.flatten(out), keras.tree.flatten(ref)):
        assert tuple(a.shape) == tuple(b.shape), "outputs keep their shape"
    assert slim.count_params() == count_params(kg.graph, plan), "graph parameter count agrees with Keras"
    assert model.count_params() == count_params(kg.graph)
    if ratio > 0 and plan.n_removed:
        assert slim.count_params() < model.count_params()
        assert count_macs(kg.graph, plan) < count_macs(kg.graph)
    if oracle:
        v = verify(kg, plan, slim, x)
        assert v["passed"], v
    assert weights_hash(model) == before, "the input model was changed"
    return slim, plan
