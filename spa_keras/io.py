"""Loading and saving models, never leaving a half-written file behind."""

from __future__ import annotations

import os
import tempfile

from .errors import InvalidArgumentError, UnsupportedModelError


def load_model(path: str):
    """Load a ``.keras`` or ``.h5`` file into a ``keras.Model`` (no custom objects needed for models
    built from Keras' own layers)."""
    import keras

    if not os.path.exists(path):
        raise InvalidArgumentError(f"model file {path!r} does not exist")
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise InvalidArgumentError(f"{path!r}: expected a .keras or .h5 file")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - a bad file is bad input, whatever Keras raised
        raise UnsupportedModelError(f"could not load {path!r} as a Keras model: {e}") from e


def save_model(model, path: str, overwrite: bool = False) -> str:
    """Save ``model`` to ``path`` (``.keras`` or ``.h5``) atomically: written under a temporary name
    in the same folder, then renamed, so ``path`` is either absent, the old file, or complete."""
    if os.path.exists(path) and not overwrite:
        raise InvalidArgumentError(f"{path!r} exists; pass overwrite=True (--force) to replace it")
    if not path.endswith((".keras", ".h5")):
        raise InvalidArgumentError(f"{path!r}: the output must end in .keras or .h5")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".spa-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
