"""``PruningConfig``: every setting of :func:`spa_keras.prune`, validated once, stored and reused.

It lives in its own small module (not in ``api.py``) because it is pure validation and serialisation:
the CLI checks its arguments with it before importing TensorFlow, and nothing in it touches a model.
Like Keras' ``GPTQConfig`` it validates every argument in ``__init__`` and round-trips through
``get_config``/``from_config``; data (``data``, ``loss``, ``calibration_data``) is held for the call
but not saved in the config, as Keras does with a calibration dataset.
"""

from __future__ import annotations

import math
import numbers

from . import algorithms
from .criteria.base import NORMALIZATIONS, REDUCTIONS
from .errors import InvalidArgumentError

ALGORITHMS = (None,) + algorithms.ALGORITHMS
DATA_FREE = algorithms.SOURCES
_RUNTIME = ("data", "loss", "calibration_data")


def _fraction(name, value, closed=False, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v > 1 if closed else v >= 1):
        raise InvalidArgumentError(f"{name} must be in [0, {'1]' if closed else '1)'}, got {value!r}")
    return v


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or int(value) != value or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _boolean(name, value):
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")
    return value


def _choice(name, value, choices):
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise InvalidArgumentError(f"{name} must be one of {shown}; got {value!r}")
    return value


def _target(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive number (a fraction like 0.5 or an absolute count), "
                                   f"got {value!r}")
    return float(value) if value <= 1 else value


class PruningConfig:
    """The settings of one pruning recipe: what :func:`spa_keras.prune` takes, checked up front.

    Args are those of :func:`spa_keras.plan` and :func:`spa_keras.prune`:
    ``ratio``, ``criterion`` (a name or a callable), ``global_pruning``, ``ignored_layers`` (names),
    ``round_to``, ``max_ratio``, ``group_reduction``, ``normalization``, ``ratio_per_layer``,
    ``target_macs``, ``target_params``, ``prune_layer_norm``, ``steps``; data for the gradient
    criteria (``data``, ``loss``); and the post-training algorithms' settings: ``algorithm``
    (``None``, ``"obspa"``, ``"reconstruct"``), ``calibration_data`` (``tf.data.Dataset``, NumPy array
    or generator of input batches), ``calibration_samples`` (how many samples to use) and
    ``data_free`` (``"bn"`` or ``"random"``: OBSPA's synthetic source when no calibration data is given)
    and ``algorithm_options`` (checked against ``spa_keras.algorithms.OPTIONS``).

    Every argument is validated here, with a message naming it; ``get_config()`` is a JSON-able dict
    (data left out, as ``None``) and ``from_config`` rebuilds an equal config.

    >>> import spa_keras as spa
    >>> cfg = spa.PruningConfig(ratio=0.3, criterion="l1", round_to=8)
    >>> spa.PruningConfig.from_config(cfg.get_config()) == cfg
    True
    >>> spa.PruningConfig(ratio=1.5)
    Traceback (most recent call last):
    ...
    spa_keras.errors.InvalidArgumentError: ratio must be in [0, 1), got 1.5
    """

    def __init__(
        self,
        ratio: float = 0.5,
        criterion="l2",
        *,
        global_pruning: bool = False,
        ignored_layers=None,
        round_to: int = 1,
        max_ratio: float = 1.0,
        group_reduction: str = "mean",
        normalization="mean",
        ratio_per_layer: dict | None = None,
        target_macs: float | None = None,
        target_params: float | None = None,
        prune_layer_norm: bool = False,
        steps: int = 1,
        data=None,
        loss=None,
        algorithm: str | None = None,
        calibration_data=None,
        calibration_samples: int | None = None,
        data_free: str = "bn",
        algorithm_options: dict | None = None,
    ):
        from .criteria import CRITERIA

        self.ratio = _fraction("ratio", ratio)
        if isinstance(criterion, dict):  # a serialised callable (get_config)
            import keras

            criterion = keras.saving.deserialize_keras_object(criterion)
        if not callable(criterion):
            if not isinstance(criterion, str) or criterion.lower() not in CRITERIA:
                raise InvalidArgumentError(
                    f"criterion must be one of {sorted(CRITERIA)} or a callable, got {criterion!r}"
                )
            criterion = criterion.lower()
        self.criterion = criterion
        self.global_pruning = _boolean("global_pruning", global_pruning)
        if ignored_layers is not None:
            if isinstance(ignored_layers, str) or not hasattr(ignored_layers, "__iter__"):
                raise InvalidArgumentError(f"ignored_layers must be a list of layer names, got {ignored_layers!r}")
            names = []
            for item in ignored_layers:
                name = item if isinstance(item, str) else getattr(item, "name", None)
                if not isinstance(name, str) or not name:
                    raise InvalidArgumentError(f"ignored_layers: {item!r} is neither a layer name nor a layer")
                names.append(name)
            ignored_layers = names or None
        self.ignored_layers = ignored_layers
        self.round_to = _positive_int("round_to", round_to)
        self.max_ratio = _fraction("max_ratio", max_ratio, closed=True)
        self.group_reduction = _choice("group_reduction", group_reduction, REDUCTIONS)
        self.normalization = _choice("normalization", normalization, NORMALIZATIONS)
        if ratio_per_layer is not None:
            if not isinstance(ratio_per_layer, dict):
                raise InvalidArgumentError(f"ratio_per_layer must be a dict {{layer name or pattern: ratio}}, "
                                           f"got {ratio_per_layer!r}")
            for k in ratio_per_layer:
                if not isinstance(k, str):
                    raise InvalidArgumentError(f"ratio_per_layer keys must be layer names or patterns, got {k!r}")
            ratio_per_layer = {k: _fraction(f"ratio_per_layer[{k!r}]", v) for k, v in ratio_per_layer.items()} or None
        self.ratio_per_layer = ratio_per_layer
        self.target_macs = _target("target_macs", target_macs)
        self.target_params = _target("target_params", target_params)
        if self.target_macs is not None and self.target_params is not None:
            raise InvalidArgumentError("give target_macs or target_params, not both")
        self.prune_layer_norm = _boolean("prune_layer_norm", prune_layer_norm)
        self.steps = _positive_int("steps", steps)
        self.data = data
        self.loss = loss
        self.algorithm = _choice("algorithm", algorithm, ALGORITHMS)
        if calibration_data is not None and isinstance(calibration_data, (str, bytes, numbers.Number)):
            raise InvalidArgumentError(
                "calibration_data must be a tf.data.Dataset, a NumPy array or a generator of input batches, got "
                f"{type(calibration_data).__name__} (load a file with spa_keras.data.load_calibration)"
            )
        self.calibration_data = calibration_data
        self.calibration_samples = (None if calibration_samples is None
                                    else _positive_int("calibration_samples", calibration_samples))
        self.data_free = _choice("data_free", data_free, DATA_FREE)
        if algorithm_options is not None:
            if not isinstance(algorithm_options, dict):
                raise InvalidArgumentError(f"algorithm_options must be a dict, got {algorithm_options!r}")
            if algorithm_options and self.algorithm is None and calibration_data is None:
                raise InvalidArgumentError("algorithm_options are given but no algorithm: set algorithm='obspa' "
                                           "or 'reconstruct'")
            algorithms.check(self.algorithm or "obspa", algorithm_options)
            algorithm_options = dict(algorithm_options) or None
        self.algorithm_options = algorithm_options

    def get_config(self) -> dict:
        """A JSON-able dict of the settings; data (``data``, ``loss``, ``calibration_data``) is only
        needed for one call and is stored as ``None``. A callable criterion is stored with
        ``keras.saving.serialize_keras_object`` (register it to load it elsewhere)."""
        config = {k: getattr(self, k) for k in _fields()}
        if callable(self.criterion):
            import keras

            config["criterion"] = keras.saving.serialize_keras_object(self.criterion)
        for k in _RUNTIME:
            config[k] = None
        if config["ignored_layers"] is not None:
            config["ignored_layers"] = list(config["ignored_layers"])
        if config["ratio_per_layer"] is not None:
            config["ratio_per_layer"] = dict(config["ratio_per_layer"])
        return config

    @classmethod
    def from_config(cls, config: dict) -> "PruningConfig":
        """The config that ``get_config`` described."""
        if not isinstance(config, dict):
            raise InvalidArgumentError(f"from_config needs the dict get_config returned, got {type(config).__name__}")
        unknown = set(config) - set(_fields())
        if unknown:
            raise InvalidArgumentError(f"unknown PruningConfig settings: {sorted(unknown)}")
        return cls(**config)

    def prune_kwargs(self) -> dict:
        """The keyword arguments for :func:`spa_keras.prune`."""
        return {k: getattr(self, k) for k in _fields()}

    def plan_kwargs(self) -> dict:
        """The keyword arguments for :func:`spa_keras.plan` (``prune_kwargs`` without ``steps``)."""
        out = self.prune_kwargs()
        out.pop("steps")
        return out

    def replace(self, **changes) -> "PruningConfig":
        """A copy with some settings changed (validated again).

        >>> import spa_keras as spa
        >>> spa.PruningConfig(ratio=0.5).replace(ratio=0.25).ratio
        0.25
        """
        values = {k: getattr(self, k) for k in _fields()}
        values.update(changes)
        return type(self)(**values)

    def __eq__(self, other):
        if not isinstance(other, PruningConfig):
            return NotImplemented
        return all(_same(getattr(self, k), getattr(other, k)) for k in _fields())

    def __repr__(self):
        shown = []
        defaults = PruningConfig.__init__.__kwdefaults__ | {"ratio": 0.5, "criterion": "l2"}
        for k in _fields():
            v = getattr(self, k)
            if k in _RUNTIME:
                if v is not None:
                    shown.append(f"{k}=<{type(v).__name__}>")
            elif not _same(v, defaults.get(k)):
                shown.append(f"{k}={getattr(v, '__name__', v)!r}" if callable(v) else f"{k}={v!r}")
        return f"PruningConfig({', '.join(shown)})"


def _same(a, b):
    if a is b:
        return True
    if type(a).__module__.startswith(("numpy", "tensorflow")) or type(b).__module__.startswith(("numpy", "tensorflow")):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - uncomparable values are different
        return False


def _fields():
    import inspect

    return [p for p in inspect.signature(PruningConfig.__init__).parameters if p != "self"]
