"""The exceptions spa_keras raises. Every message names what was wrong, where, and what to do."""


class PruningError(Exception):
    """Base class of every error spa_keras raises on purpose."""


class UnsupportedModelError(PruningError, TypeError):
    """The object is not a model spa_keras can read (not a Keras model, or a subclassed model
    without a functional graph)."""


class InvalidArgumentError(PruningError, ValueError):
    """An argument of a public function is out of range or names something that does not exist."""


class RebuildError(PruningError, RuntimeError):
    """The slim model could not be written (a layer could not be re-created from its config, or a
    sliced weight does not fit the rebuilt layer)."""


class CalibrationDataError(InvalidArgumentError):
    """Calibration data of the wrong shape or dtype (or none to use)."""
