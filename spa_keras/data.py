"""Data as users have it (NumPy arrays, ``(x, y)`` tuples, ``tf.data.Dataset``, generators) as batches."""

from __future__ import annotations

import os

import numpy as np

from .errors import InvalidArgumentError


def _split(item):
    if isinstance(item, dict):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) in (1, 2, 3):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def _rebatch(x, y, batch_size):
    n = len(keras_tree_first(x))
    for i in range(0, n, batch_size):
        xs = _map(x, lambda a: a[i : i + batch_size])
        yield xs, (None if y is None else y[i : i + batch_size])


def _map(x, fn):
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(fn(v) for v in x)
    return fn(x)


def keras_tree_first(x):
    if isinstance(x, dict):
        return next(iter(x.values()))
    if isinstance(x, (list, tuple)):
        return x[0]
    return x


def iterate_batches(data, batch_size: int = 32, max_samples: int | None = None):
    """Yield ``(x, y)`` NumPy batches (``y`` is None for unlabeled data) from ``data``:

    - a NumPy array (inputs), a dict of arrays (named inputs), or a tuple ``(inputs, targets)`` of
      arrays: cut into ``batch_size``;
    - a ``tf.data.Dataset`` or any iterable of batches ``x`` or ``(x, y)``: taken as they come.

    Stops after ``max_samples`` samples.
    """
    if data is None:
        raise InvalidArgumentError("no data given")
    if isinstance(data, dict) and data and all(isinstance(a, np.ndarray) for a in data.values()):
        batches = _rebatch(data, None, batch_size)  # named inputs: {"token_ids": ..., "padding_mask": ...}
    elif isinstance(data, np.ndarray) or (
        isinstance(data, tuple) and len(data) == 2 and all(isinstance(a, np.ndarray) for a in data)
    ):
        x, y = (data, None) if isinstance(data, np.ndarray) else data
        batches = _rebatch(x, y, batch_size)
    else:
        try:
            it = iter(data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data)
        except TypeError:
            raise InvalidArgumentError(
                f"data of type {type(data).__name__} is not supported: pass a NumPy array, an (x, y) tuple, "
                "a tf.data.Dataset or an iterable of batches"
            ) from None
        batches = (_split(item) for item in it)
    seen = 0
    for x, y in batches:
        x = _map(x, np.asarray)
        n = len(keras_tree_first(x))
        if max_samples is not None and seen + n > max_samples:
            k = max_samples - seen
            x, y = _map(x, lambda a: a[:k]), (None if y is None else np.asarray(y)[:k])
            n = k
        if n <= 0:
            break
        yield x, (None if y is None else np.asarray(y))
        seen += n
        if max_samples is not None and seen >= max_samples:
            break


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def array_batches(arrays, batch_size: int):
    """``[a[i:i + batch_size] for a in arrays]`` for each batch in order: views, not copies.

    The algorithms' fixed passes over their samples use this instead of a ``tf.data`` pipeline. On the
    2-core machine, iterating ``from_tensor_slices(x).batch(32)`` (512 images at 224×224, each batch
    fed to a traced step that used both cores) stalled for 30 s at the end of the pass in 7 of 21 passes;
    with NumPy slices it never did in 14, nor with tf.data's autotuning and injected prefetch off
    (:func:`steady`) in 14 (``benchmarks/tfdata_stall.py`` and earlier probes). OBSPA's ResNet50 pass
    took 82–94 s instead of 48–54 s when it stalled."""
    n = len(arrays[0])
    for i in range(0, n, batch_size):
        yield [a[i:i + batch_size] for a in arrays]


def steady(dataset):
    """``dataset`` with tf.data's autotuning and its injected prefetch off, for in-memory pipelines that
    must be read through tf.data (shuffled epochs, ``tf.distribute``): see :func:`array_batches`."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    return dataset.with_options(options)


def _channels_first(input_shape) -> bool:
    """An image input laid out NCHW (an ONNX model's): few channels first, many last."""
    return len(input_shape) == 3 and input_shape[0] in (1, 3, 4) and input_shape[-1] not in (1, 3, 4)


def _check_shape(x, input_shape, source):
    shape = tuple(input_shape)
    if x.ndim == len(shape):  # one sample
        x = x[None]
    if x.ndim != len(shape) + 1 or any(d is not None and d != s for d, s in zip(shape, x.shape[1:])):
        want = "(N, " + ", ".join("?" if d is None else str(d) for d in shape) + ")"
        raise InvalidArgumentError(f"{source}: arrays of shape {x.shape} do not fit the model's input {want}")
    return x


def image_files(folder) -> list:
    """The image files under ``folder`` (recursively), sorted by path: the order of :func:`load_arrays`."""
    return sorted(
        os.path.join(root, f) for root, _, names in os.walk(folder)
        for f in names if f.lower().endswith(IMAGE_EXTENSIONS)
    )


def _load_images(folder, input_shape, scale):
    import keras

    files = image_files(folder)
    if not files:
        raise InvalidArgumentError(f"{folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise InvalidArgumentError(f"{folder!r}: images need a model with an image input (H, W, C); "
                                   f"this one takes {shape}")
    first = _channels_first(shape)
    h, w, c = (shape[1], shape[2], shape[0]) if first else shape
    if c not in (1, 3, 4):
        raise InvalidArgumentError(f"{folder!r}: the model's input has {c} channels; images give 1, 3 or 4")
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}[c]
    size = (h, w) if h is not None and w is not None else None
    arrays = []
    for f in files:
        try:
            img = keras.utils.load_img(f, color_mode=mode, target_size=size)
        except Exception as e:  # noqa: BLE001 - an unreadable image is bad input
            raise InvalidArgumentError(f"could not read image {f!r}: {e}") from e
        arrays.append(keras.utils.img_to_array(img, dtype="float32"))
    if len({a.shape for a in arrays}) > 1:
        raise InvalidArgumentError(f"{folder!r}: the images differ in size and the model's input has no fixed size")
    x = np.stack(arrays) * np.float32(scale)
    return np.transpose(x, (0, 3, 1, 2)) if first else x


def load_arrays(path, input_shape, max_samples: int | None = None, scale: float = 1.0):
    """``(x, y)`` from a file or folder, ``x`` float32 shaped ``(N, *input_shape)``; ``y`` is None
    unless a ``.npz`` holds ``y``. See :func:`load_calibration` for what is read."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InvalidArgumentError(f"data {path!r} does not exist")
    y = None
    if os.path.isdir(path):
        x = _load_images(path, input_shape, scale)
    elif path.endswith((".npy", ".npz")):
        try:
            loaded = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise InvalidArgumentError(f"could not read {path!r} as NumPy data: {e}") from e
        if path.endswith(".npz"):
            keys = list(loaded.keys())
            if not keys:
                raise InvalidArgumentError(f"{path!r} holds no arrays")
            key = "x" if "x" in keys else keys[0]
            x = loaded[key]
            y = loaded["y"] if "y" in keys else None
        else:
            x = loaded
        if not np.issubdtype(x.dtype, np.number):
            raise InvalidArgumentError(f"{path!r}: expected numbers, got an array of {x.dtype}")
        x = x.astype("float32") * np.float32(scale) if scale != 1.0 else x.astype("float32")
    else:
        raise InvalidArgumentError(f"{path!r}: expected a .npy or .npz file, or a folder of images")
    x = _check_shape(x, input_shape, path)
    if y is not None and len(y) != len(x):
        raise InvalidArgumentError(f"{path!r}: x has {len(x)} samples but y has {len(y)}")
    if max_samples is not None:
        x = x[:max_samples]
        y = None if y is None else y[:max_samples]
    return x, y


def load_calibration(path, input_shape, max_samples: int | None = None, scale: float = 1.0) -> np.ndarray:
    """Calibration inputs from a file or folder, as a float32 array ``(N, *input_shape)``.

    - ``.npy``: an array of samples (or one sample);
    - ``.npz``: the array named ``x``, else the first one;
    - a folder (searched recursively, sorted by path) of ``.png``/``.jpg``/``.bmp``/``.gif`` images,
      resized to the input's height and width, with its channels (1: grayscale, 3: RGB, 4: RGBA);
      an NCHW input (an ONNX model's, ``(3, H, W)``) gets NCHW arrays. Pixels are 0-255 as
      ``keras.utils.load_img`` reads them, times ``scale`` (``1/255`` for 0-1).

    ``input_shape`` is the model's input shape without the batch axis (``None`` matches any size).
    At most ``max_samples`` samples are kept.

    >>> import numpy as np, tempfile, os
    >>> from spa_keras.data import load_calibration
    >>> path = os.path.join(tempfile.mkdtemp(), "calib.npy")
    >>> np.save(path, np.zeros((4, 8, 8, 3)))
    >>> load_calibration(path, (8, 8, 3)).shape
    (4, 8, 8, 3)
    """
    return load_arrays(path, input_shape, max_samples, scale)[0]


def replica_slices(data, ctx):
    """The input of one worker: for every batch of ``data``, the contiguous slices of it that its replicas
    take (replica ``k`` of ``n`` takes rows ``[size*k//n, size*(k+1)//n)``), one after the other. Every
    sample is then in the step it is in without a strategy, which tf.data's automatic sharding does not
    promise."""
    import tensorflow as tf

    n = ctx.num_replicas_in_sync
    local = n // ctx.num_input_pipelines
    first = ctx.input_pipeline_id * local

    def cut(batch, k):
        size, k = tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0], tf.cast(k, tf.int64)
        lo, hi = size * k // n, size * (k + 1) // n
        return tf.nest.map_structure(lambda t: t[lo:hi], batch)

    def split(*batch):
        batch = batch[0] if len(batch) == 1 else batch
        return tf.data.Dataset.range(first, first + local).map(lambda k: cut(batch, k))

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return data.flat_map(split).with_options(options)
