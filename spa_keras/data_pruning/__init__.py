"""Data pruning: keep the training samples that matter, scored on a small subset and extrapolated.

>>> from spa_keras import data_pruning as dp
>>> sorted(dp.select([0.3, 0.9, 0.1, 0.7], keep=0.5).tolist())
[1, 3]

The room of its own (it does not import the model-pruning code): scores recorded during training
(:class:`ScoreRecorder`; Dynamic Uncertainty, TDDS, EL2N, forgetting events in :mod:`.formulas`), the
full scoring run (:func:`scores`), the extrapolation from a scored subset by kNN or a graph network
(:func:`extrapolated_scores`, :func:`knn_extrapolate`, :func:`gcn_extrapolate`), selection
(:func:`select`: top, bottom, random, coverage-centric) and calibration-sample choice for post-training
pruning (:func:`calibration_subset`). See ``docs/data_pruning.md``.

Attributes load on first use, so that importing this package (and its command-line module) does not
import TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "scores": "pipeline", "extrapolated_scores": "pipeline",
    "ScoreRecorder": "recorder",
    "knn_extrapolate": "extrapolate", "gcn_extrapolate": "extrapolate", "knn_graph": "extrapolate",
    "select": "selection", "calibration_subset": "calibration",
    "embeddings": "models", "default_model": "models", "nearest_neighbors": "neighbors",
    "dynamic_uncertainty": "formulas", "tdds": "formulas", "kl_change": "formulas", "el2n": "formulas",
    "forgetting_events": "formulas", "SCORES": "formulas",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
