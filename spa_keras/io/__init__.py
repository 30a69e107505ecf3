"""Loading and saving models, never leaving a half-written file behind."""

from __future__ import annotations

import numbers
import os
import tempfile

from ..errors import InvalidArgumentError, ModelFileError, OutputExistsError


def load_model(path: str):
    """Load a ``.keras`` or ``.h5`` file into a ``keras.Model`` (no custom objects needed for models
    built from Keras' own layers)."""
    import keras

    if not os.path.exists(path):
        raise InvalidArgumentError(f"model file {path!r} does not exist")
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise InvalidArgumentError(f"{path!r}: expected a .keras or .h5 file")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - a bad file is bad input, whatever Keras raised
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(
            f"could not read {path!r} as a Keras model ({first}); the file is corrupt, truncated or not a "
            "model saved by Keras 3: save it again with model.save(...)"
        ) from None
    if not isinstance(model, keras.Model):
        raise ModelFileError(f"{path!r} holds a {type(model).__name__}, not a keras.Model")
    return model


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write, overwrite: bool = False, suffixes=None) -> str:
    """Call ``write(tmp_path)`` for a temporary file in ``path``'s folder, then rename it to ``path``:
    ``path`` is either absent, the old file, or complete, whatever happens during the write (an
    exception, Ctrl-C, or the process killed: the rename is atomic on one file system). An exception
    or Ctrl-C removes the temporary file; a killed process can leave a ``.spa-*`` file beside ``path``,
    never a partial file at ``path``. Raises :class:`OutputExistsError` if ``path`` exists and not
    ``overwrite``."""
    if suffixes and not path.endswith(tuple(suffixes)):
        raise InvalidArgumentError(f"{path!r}: the output must end in {' or '.join(suffixes)}")
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(f"{path!r} exists; pass overwrite=True (--overwrite) to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".spa-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # on disk before it takes the final name
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it private; a saved file is as readable as any other
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_model(model, path: str, overwrite: bool = False) -> str:
    """Save ``model`` to ``path`` (``.keras`` or ``.h5``) atomically (see :func:`atomic_write`)."""
    return atomic_write(path, model.save, overwrite, (".keras", ".h5"))


def save_onnx(model, path: str, overwrite: bool = False) -> str:
    """Write an ``onnx.ModelProto`` to ``path`` atomically (see :func:`atomic_write`); a model over
    protobuf's 2 GiB keeps its large weights in ``<name>.data`` beside it (written in place)."""
    from ..frontends.onnx.runtime import save

    path = os.fspath(path)
    return atomic_write(path, lambda tmp: save(model, tmp, os.path.basename(path) + ".data"), overwrite, (".onnx",))


def from_onnx(path_or_model, channels_last_inputs: bool = False):
    """A Keras model computing what an ONNX model computes (a path or an ``onnx.ModelProto``).

    Built from Keras' own layers and ``keras.ops``: it saves and loads as ``.keras`` with no custom
    objects, exports as a SavedModel, and prunes like any Keras model. It takes and returns tensors in
    the ONNX model's layout (NCHW); ``channels_last_inputs=True`` makes its image inputs NHWC.

    >>> # keras_model = spa.from_onnx("resnet18.onnx")
    """
    from ..frontends.onnx import load_onnx
    from .onnx_to_keras import onnx_to_keras

    return onnx_to_keras(load_onnx(path_or_model), channels_last_inputs)


def to_onnx(model, path: str | None = None, opset: int = 17, overwrite: bool = False, fold_batchnorm: bool = True):
    """Convert a Keras model to ONNX (tf2onnx); saved atomically to ``path`` when given. Returns the
    ``onnx.ModelProto``. ``fold_batchnorm``: every BatchNorm right after a convolution or dense layer is
    folded into it first (:func:`spa_keras.backends.fold.fold_batchnorm`; the outputs agree to float
    rounding); pass ``False`` to keep them, e.g. to prune the ONNX file later with OBSPA's ``"bn"`` source.
    Depthwise convolutions written as grouped ``Conv`` layers are converted as the ``DepthwiseConv`` layers
    they are (:func:`spa_keras.backends.fold.serving_model`): tf2onnx cannot convert Keras' grouped
    convolutions.

    >>> # spa.to_onnx(slim, "slim.onnx")
    """
    from ..backends.fold import serving_model
    from .keras_to_onnx import keras_to_onnx

    model = serving_model(model, fold_batchnorm=fold_batchnorm)
    proto = keras_to_onnx(model, opset)
    if path is not None:
        save_onnx(proto, path, overwrite)
    return proto


def _version_dir(base_dir: str, version) -> str:
    """``base_dir/<version>``: the next version by default; an existing one is an error."""
    os.makedirs(base_dir, exist_ok=True)
    versions = [int(d) for d in os.listdir(base_dir) if d.isdigit()]
    if version is None:
        version = max(versions, default=0) + 1
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or version < 1:
        raise InvalidArgumentError(f"version must be a positive integer, got {version!r}")
    target = os.path.join(base_dir, str(int(version)))
    if os.path.exists(target):
        raise OutputExistsError(f"{target!r} exists: TF Serving versions are never overwritten; pick another")
    return target


def _publish(base_dir: str, target: str, write) -> str:
    """``write(tmp)`` into a temporary folder in ``base_dir``, then rename it to ``target``."""
    import shutil

    tmp = tempfile.mkdtemp(prefix=".spa-", dir=base_dir)
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it private; TF Serving may run as another user
        os.rename(tmp, target)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return target


def export_for_serving(model, base_dir: str, version: int | None = None, fold_batchnorm: bool = True) -> str:
    """Export ``model`` as a SavedModel in the TF Serving layout, ``base_dir/<version>/``.

    ``fold_batchnorm`` (default): every BatchNorm right after a convolution or dense layer is folded into
    its kernel and bias (:func:`spa_keras.backends.fold.fold_batchnorm`), which saves a multiply and an
    add over each of those activations per request; the outputs agree with the model's to float
    rounding. ``False`` keeps the BatchNorms. Either way, a depthwise convolution written as a grouped
    ``Conv`` layer (ConvNeXt's) is exported as the ``DepthwiseConv`` layer it is, with the same outputs:
    TensorFlow has no grouped convolution kernel for the CPU, and Keras' XLA fallback ran ConvNeXt's 7×7
    ones 15-130x slower (:func:`spa_keras.backends.fold.serving_model`).

    The version defaults to one more than the largest already there (1 for a new folder); an existing
    version is never overwritten. The ``serving_default`` signature takes the model's input names and
    returns its output names. Written under a temporary name, then renamed. Returns the version folder.
    ``model`` may also be the path of a SavedModel directory, which is checked (it must load and have
    a ``serving_default`` signature) and copied in as the new version.

    >>> import os, tempfile, keras, spa_keras as spa
    >>> inp = keras.Input((4,), name="features")
    >>> m = keras.Model(inp, keras.layers.Dense(2, name="scores")(inp))
    >>> base = os.path.join(tempfile.mkdtemp(), "my_model")
    >>> os.path.basename(spa.export_for_serving(m, base))      # base/1, then base/2, ...
    '1'
    """
    import keras
    import tensorflow as tf

    base_dir = os.fspath(base_dir)
    if isinstance(model, (str, os.PathLike)):
        return _copy_saved_model(os.fspath(model), base_dir, version)
    target = _version_dir(base_dir, version)
    from ..backends.fold import serving_model

    model = serving_model(model, fold_batchnorm=fold_batchnorm)
    in_names = [x.name.split(":")[0] for x in model.inputs]
    out_names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])
    spec = [tf.TensorSpec(x.shape, x.dtype, name=n) for x, n in zip(model.inputs, in_names)]

    def serve(*args):
        outs = model(list(args) if len(args) > 1 else args[0], training=False)
        return dict(zip(out_names, keras.tree.flatten(outs)))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=spec)
    return _publish(base_dir, target, lambda tmp: archive.write_out(tmp, verbose=False))


def _copy_saved_model(src: str, base_dir: str, version) -> str:
    import shutil

    import tensorflow as tf

    if not os.path.exists(os.path.join(src, "saved_model.pb")):
        raise InvalidArgumentError(f"{src!r} is not a SavedModel directory (no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(src)
    except Exception as e:  # noqa: BLE001 - an unreadable directory is bad input
        raise InvalidArgumentError(f"could not load {src!r} as a SavedModel: {e}") from e
    if "serving_default" not in loaded.signatures:
        raise InvalidArgumentError(f"{src!r} has no serving_default signature (it has {list(loaded.signatures)}); "
                                   "TF Serving would not know what to call")
    target = _version_dir(base_dir, version)

    def copy(tmp):
        os.rmdir(tmp)
        shutil.copytree(src, tmp)

    return _publish(base_dir, target, copy)
