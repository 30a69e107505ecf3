"""spa_keras: structured pruning for Keras 3 that removes channels for real.

>>> import keras, spa_keras as spa
>>> model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
>>> slim = spa.prune(model, ratio=0.5, criterion="l2")

Names are imported on first use (``spa.prune`` loads Keras and TensorFlow; ``import spa_keras`` alone
loads neither, nor ONNX, tf2onnx or torch), so the ``spa-keras`` command answers ``--help`` at once.
"""

import os as _os
import sys as _sys

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported

from .errors import (  # noqa: E402 - errors are light and needed everywhere
    CalibrationDataError,
    InvalidArgumentError,
    MissingDependencyError,
    ModelFileError,
    NonFiniteWeightsError,
    OutputExistsError,
    PruningError,
    RebuildError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

#: public name -> (module, attribute); attribute None: the module itself
_LAZY = {
    "prune": ("api", "prune"), "plan": ("api", "plan"), "apply": ("api", "apply"), "inspect": ("api", "inspect"),
    "Inspection": ("api", "Inspection"), "Pruner": ("api", "Pruner"),
    "enable_model_prune": ("api", "enable_model_prune"), "disable_model_prune": ("api", "disable_model_prune"),
    "PruningConfig": ("config", "PruningConfig"), "PruningPlan": ("plan", "PruningPlan"),
    "Report": ("report", "Report"), "register_layer": ("frontends.keras", "register_layer"),
    "LayerSpec": ("frontends.spec", "Spec"), "AxisRef": ("graph", "AxisRef"),
    "callbacks": ("callbacks", None), "PruningCallback": ("callbacks", "PruningCallback"),
    "GroupSparsity": ("callbacks", "GroupSparsity"), "strip": ("callbacks", "strip"),
    "finetune": ("finetune", "finetune"), "from_onnx": ("io", "from_onnx"), "to_onnx": ("io", "to_onnx"),
    "export_for_serving": ("io", "export_for_serving"), "datasets": ("datasets", None),
}

__all__ = sorted(_LAZY) + [
    "PruningError", "InvalidArgumentError", "RebuildError", "UnsupportedModelError", "CalibrationDataError",
    "ModelFileError", "NonFiniteWeightsError", "OutputExistsError", "MissingDependencyError",
]


class _Package(type(_os)):
    """The package's module type: importing a submodule whose name is also a public function's
    (``spa_keras.plan``, ``spa_keras.finetune``) does not rebind ``spa.plan``/``spa.finetune`` to the
    module; they stay the functions, and the modules stay in ``sys.modules``."""

    def __setattr__(self, name, value):
        if name in _LAZY and _LAZY[name][1] is not None and isinstance(value, type(_os)):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'spa_keras' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = importlib.import_module(f".{module}", __name__)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
