"""spa_keras: structured pruning for Keras 3 that removes channels for real.

>>> import keras, spa_keras as spa
>>> model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
>>> slim = spa.prune(model, ratio=0.5, criterion="l2")
"""

from . import callbacks
from .api import Inspection, Pruner, apply, disable_model_prune, enable_model_prune, inspect, plan, prune
from .config import PruningConfig
from .callbacks import GroupSparsity, PruningCallback, strip
from . import datasets
from .io import export_for_serving, from_onnx, to_onnx
from .finetune import finetune
from .frontends.keras import Spec as LayerSpec
from .frontends.keras import register_layer
from .graph import AxisRef
from .errors import (
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
from .plan import PruningPlan
from .report import Report

__version__ = "0.1.0"

__all__ = [
    "prune", "plan", "apply", "inspect", "Inspection", "Pruner", "PruningConfig", "enable_model_prune",
    "disable_model_prune", "PruningPlan", "Report", "register_layer", "LayerSpec",
    "AxisRef", "callbacks", "PruningCallback", "GroupSparsity", "strip", "finetune", "from_onnx", "to_onnx", "export_for_serving", "datasets",
    "PruningError", "InvalidArgumentError", "RebuildError", "UnsupportedModelError", "CalibrationDataError",
    "ModelFileError", "NonFiniteWeightsError", "OutputExistsError", "MissingDependencyError",
]
