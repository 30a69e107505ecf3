"""The runnable examples in the docstrings of the user-facing modules run."""

import doctest
import importlib

import pytest

MODULES = ["spa_keras.config", "spa_keras.report", "spa_keras.data", "spa_keras.io", "spa_keras.metrics", "spa_keras.api"]
MODULES += [f"spa_keras.data_pruning{m}" for m in ("", ".formulas", ".recorder", ".pipeline", ".extrapolate", ".neighbors",
                                                   ".selection", ".calibration", ".models", ".report")]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
