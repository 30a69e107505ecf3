"""Random architectures nobody wrote by hand (spa_keras.fuzz), pruned with random settings and checked
with the zero-channel oracle. benchmarks/fuzz.py runs the same checks thousands of times."""

import importlib.util

import keras
import pytest
from hypothesis import HealthCheck, given, settings

from spa_keras import fuzz

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)


@FUZZ
@given(fuzz.keras_cases())
def test_random_keras_architectures_prune_and_pass_the_oracle(case):
    recipe, options = case
    r = fuzz.check_keras(recipe, options)
    assert r["passed"], (r["error"], recipe, options)


PREFERRED = {"nested": 1, "act": 1, "multiply": 0, "se": 0}  # Sequential, PReLU, Multiply layers


@settings(FUZZ, max_examples=20)
@given(fuzz.keras_cases())
def test_random_architectures_under_mixed_float16(case):
    recipe, options = case
    r = fuzz.check_keras(recipe, options, policy="mixed_float16")
    assert r["passed"], (r["error"], recipe, options)
    assert keras.mixed_precision.global_policy().name == "float32", "the policy was restored"


def _one(kind, i):
    """A recipe exercising op ``kind``: a stem, a conv as wide as the stem (a peer for merges), the op."""
    v = PREFERRED.get(kind, i % 4)
    rank = 1 if kind in fuzz.SEQ_OPS else [2, 1, 3, 2][i % 4]
    if kind in ("depthwise", "separable", "upsample") and rank == 3:
        rank = 2
    base = dict(a=0, b=1, k=3, act="relu")
    return {"rank": rank, "size": 8 if rank < 3 else 4, "cin": 3, "tokens": kind == "einsum", "stem": 8,
            "ops": [dict(base, op="conv", width=8, variant=1), dict(base, op=kind, width=6, variant=v),
                    dict(base, op="conv", width=5, variant=1)],
            "head": ["gap_dense", "flatten_dense", "conv", "two"][i % 4]}


KINDS = sorted(set(fuzz.CONV_OPS) | set(fuzz.SEQ_OPS))


def test_the_generator_builds_every_op_and_each_prunes():
    """Each op the generator knows, once (rank and variant vary), through the whole check."""
    classes = set()
    for i, kind in enumerate(KINDS):
        recipe = _one(kind, i)
        model, _ = fuzz.build_keras(recipe)
        names = [layer.name for layer in model.layers]
        assert len(model.operations) > 4, (kind, names)
        for layer in model.layers:
            classes.add(type(layer).__name__)
            classes.update(type(s).__name__ for s in getattr(layer, "layers", []))
        r = fuzz.check_keras(recipe, {"criterion": "l2", "ratio": 0.5, "round_to": 1, "global_pruning": False})
        assert r["passed"] and r["removed"] > 0, (kind, r, recipe)
    must = {"Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Concatenate",
            "Add", "Multiply", "BatchNormalization", "Flatten", "Dense", "LSTM", "GRU", "Bidirectional",
            "MultiHeadAttention", "EinsumDense", "Embedding", "Sequential", "PReLU"}  # Functional: next test
    assert must <= classes, must - classes


def test_shared_layers_and_nested_models_appear():
    recipe = {"rank": 2, "size": 6, "cin": 3, "tokens": False, "stem": 8, "head": "gap_dense",
              "ops": [dict(op="conv", a=0, b=0, width=8, k=3, act="relu", variant=1),
                      dict(op="nested", a=0, b=1, width=8, k=3, act="relu", variant=2),
                      dict(op="shared", a=0, b=1, width=4, k=1, act="relu", variant=0)]}
    model, zero_preserving = fuzz.build_keras(recipe)
    nested = model.get_layer("op1_nested")
    shared = model.get_layer("op2_shared")
    assert len(nested._inbound_nodes) == 2 and len(shared._inbound_nodes) == 2 and zero_preserving
    r = fuzz.check_keras(recipe, {"criterion": "l1", "ratio": 0.5, "round_to": 2, "global_pruning": True})
    assert r["passed"], r


def test_a_recipe_with_a_sigmoid_on_a_pruned_stream_is_checked_for_shapes_only():
    recipe = {"rank": 2, "size": 6, "cin": 3, "tokens": False, "stem": 8, "head": "gap_dense",
              "ops": [dict(op="conv", a=0, b=0, width=8, k=3, act="sigmoid", variant=1),
                      dict(op="conv", a=0, b=0, width=8, k=3, act="relu", variant=1)]}
    _, zero_preserving = fuzz.build_keras(recipe)
    assert not zero_preserving  # sigmoid(0) = 0.5: a zeroed channel is not a removed one
    r = fuzz.check_keras(recipe, {"criterion": "l2", "ratio": 0.5, "round_to": 1, "global_pruning": False})
    assert r["passed"] and not r["oracle"] and r["removed"] > 0


ONNX_FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@ONNX_FUZZ
@given(fuzz.onnx_cases())
def test_random_pytorch_modules_through_onnx_prune_and_pass_the_oracle(case):
    recipe, options = case
    r = fuzz.check_onnx(recipe, options)
    assert r["passed"], (r["error"], recipe, options)
    keras.backend.clear_session()
