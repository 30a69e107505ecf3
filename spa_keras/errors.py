"""The exceptions spa_keras raises. Every message names what was wrong, where, and what to do.

Every class derives from :class:`PruningError` and from the builtin exception a caller would expect
(``ValueError`` for a bad argument, ``TypeError`` for an object that is not a model,
``FileExistsError`` for an output that exists), so ``except ValueError`` keeps working.

>>> import spa_keras as spa
>>> try:
...     spa.prune("missing.keras")
... except spa.PruningError as e:
...     print(type(e).__name__)
InvalidArgumentError
"""


class PruningError(Exception):
    """Base class of every error spa_keras raises on purpose."""


class UnsupportedModelError(PruningError, TypeError):
    """The object is not a model spa_keras can read (not a Keras model, or a subclassed model
    without a functional graph)."""


class InvalidArgumentError(PruningError, ValueError):
    """An argument of a public function is out of range or names something that does not exist."""


class CalibrationDataError(InvalidArgumentError):
    """Calibration data of the wrong shape or dtype (it does not fit the model's inputs)."""


class NonFiniteWeightsError(InvalidArgumentError):
    """A weight of the model holds NaN or Inf: no criterion can rank its channels. The message names the
    layer (or ONNX initializer) and the weight."""


class ModelFileError(UnsupportedModelError, ValueError):
    """A ``.keras``, ``.h5`` or ``.onnx`` file that cannot be read: corrupt, truncated, or not a model
    file at all. The message names the file."""


class OutputExistsError(InvalidArgumentError, FileExistsError):
    """The output path exists; spa_keras never overwrites a file unless told to (``overwrite=True``,
    ``--overwrite``)."""


class RebuildError(PruningError, RuntimeError):
    """The slim model could not be written (a layer could not be re-created from its config, or a
    sliced weight does not fit the rebuilt layer)."""


class MissingDependencyError(PruningError, ImportError):
    """A package that one feature needs is not installed; the message names it and the command that
    installs it."""


def require(module: str, package: str | None = None, why: str = ""):
    """Import ``module``, or raise :class:`MissingDependencyError` naming the pip package (``package``,
    by default the module's name) and what needs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = package or module
        raise MissingDependencyError(
            f"{why + ' needs' if why else 'this needs'} the package {package!r}, which is not installed: "
            f"pip install {package}"
        ) from None
