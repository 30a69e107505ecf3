"""MACs and parameter counts from the standard channel graph, and latency measurement.

MACs count the multiply-accumulates of convolutions, dense and einsum layers and attention (per
sample); element-wise ops, normalisation and pooling are not counted. Parameters count every weight
once, trainable or not, as ``keras.Model.count_params()`` does.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .graph import Graph


def _width_fn(graph: Graph, plan=None):
    if plan is None:
        return lambda t: graph.tensors[t].channels
    return plan.width


def node_macs(graph: Graph, node, plan=None) -> float:
    width = _width_fn(graph, plan)
    total = 0.0
    for const, refs in node.macs:
        v = float(const)
        for ref in refs:
            tensors = node.inputs if ref.side == "in" else node.outputs
            v *= width(tensors[ref.index])
        total += v
    return total


def count_macs(graph: Graph, plan=None) -> int:
    """Multiply-accumulates of one sample, before pruning or (with ``plan``) after."""
    return int(round(sum(node_macs(graph, n, plan) for n in graph.nodes)))


def count_params(graph: Graph, plan=None) -> int:
    """Number of weights (shared weights once), before pruning or (with ``plan``) after."""
    total = 0
    seen = set()
    for node in graph.nodes:
        for p in node.params:
            if p.key in seen:
                continue
            seen.add(p.key)
            total += int(np.prod(plan.param_shape(node, p) if plan is not None else p.shape, dtype=np.int64))
    return total


def _random(shape, dtype, rng):
    dtype = str(dtype)
    if "int" in dtype:
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype if "float" in dtype else "float32")


def _runner(model, batch_size, input_data, mode="serving"):
    """``(call, batch_size)``: a function running ``model`` once on a fixed batch (a Keras model traced
    once in a ``tf.function`` for ``mode="serving"``, called eagerly for ``"eager"``)."""
    rng = np.random.default_rng(0)
    if is_onnx(model):
        from onnx import helper

        from .frontends.onnx.runtime import session as ort_session

        session = ort_session(model)
        feeds = {}
        for i in session.get_inputs():
            dims = [d if isinstance(d, int) else None for d in i.shape]
            if dims and dims[0] is not None:
                batch_size = dims[0]  # a fixed batch axis decides
            shape = [batch_size] + [d or 1 for d in dims[1:]]
            np_type = helper.tensor_dtype_to_np_dtype(
                {"tensor(float)": 1, "tensor(double)": 11, "tensor(int64)": 7, "tensor(int32)": 6}.get(i.type, 1))
            feeds[i.name] = _random(shape, np_type, rng)
        if input_data is not None:
            feeds = dict(zip(feeds, keras_flatten(input_data)))
        return (lambda: session.run(None, feeds)), batch_size
    if hasattr(model, "structured_input_signature"):  # a SavedModel signature (ConcreteFunction)
        import tensorflow as tf

        specs = model.structured_input_signature[1]
        for spec in specs.values():
            if spec.shape.rank and spec.shape[0] is not None:
                batch_size = spec.shape[0]
        feeds = {k: tf.constant(_random((batch_size,) + tuple(d or 1 for d in spec.shape[1:]), spec.dtype.name, rng))
                 for k, spec in specs.items()}
        if input_data is not None:
            feeds = {k: tf.constant(v) for k, v in zip(feeds, keras_flatten(input_data))}

        def call():
            return {k: v.numpy() for k, v in model(**feeds).items()}

        return call, batch_size
    import keras

    if input_data is None:
        input_data = [_random((batch_size,) + tuple(int(d or 1) for d in x.shape[1:]), x.dtype, rng)
                      for x in model.inputs]
        input_data = input_data[0] if len(input_data) == 1 else input_data
    else:
        batch_size = len(keras.tree.flatten(input_data)[0])
    x = keras.tree.map_structure(keras.ops.convert_to_tensor, input_data)
    if mode == "serving":
        fn = serving_function(model, x)
    elif mode == "eager":
        fn = lambda x: model(x, training=False)  # noqa: E731
    else:
        raise ValueError(f"mode must be 'serving' or 'eager', got {mode!r}")

    def call():
        keras.tree.map_structure(lambda y: np.asarray(y), fn(x))

    return call, batch_size


def serving_function(model, example):
    """``model`` traced once in a ``tf.function`` for inputs shaped like ``example`` (what a SavedModel
    signature or ``predict`` runs: one graph, no per-layer Python)."""
    import tensorflow as tf

    spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), example)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], autograph=False)
    return fn.get_concrete_function()


def keras_flatten(data):
    return list(data.values()) if isinstance(data, dict) else list(data) if isinstance(data, (list, tuple)) else [data]


def measure_latency(model, batch_size: int = 8, repeats: int = 20, warmup: int = 3, input_data=None,
                    progress=None, mode: str = "serving") -> dict:
    """Median and best wall time of one batch on this machine, in seconds, and the throughput.

    ``model``: a ``keras.Model``, an ``onnx.ModelProto`` (run in onnxruntime on the CPU) or a SavedModel
    signature (``tf.saved_model.load(d).signatures[...]``). A Keras model runs in the serving path by
    default (``mode="serving"``: traced once in a ``tf.function``, as TF Serving or ``predict`` run it);
    ``mode="eager"`` calls ``model(x, training=False)``, which adds per-layer Python overhead that does
    not shrink with the channels. Inputs are random unless ``input_data`` is given; a model whose batch
    axis is fixed runs at that batch size. ``progress``: a callable told after each timed run.
    Returns ``{"median_s", "best_s", "batch_size", "samples_per_s", "repeats", "mode", "load"}``
    (throughput at the median; ``load``: the 1-minute load average when the timing started, since a
    figure taken on a busy machine says little).

    >>> import keras
    >>> from spa_keras.metrics import measure_latency
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> r = measure_latency(m, batch_size=4, repeats=3)
    >>> r["batch_size"], r["samples_per_s"] > 0
    (4, True)
    """
    call, batch_size = _runner(model, batch_size, input_data, mode)
    load = load_average()
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if progress is not None:
            progress()
    median = float(np.median(times))
    return {"median_s": median, "best_s": float(np.min(times)), "batch_size": int(batch_size),
            "samples_per_s": float(batch_size / median) if median > 0 else float("inf"), "repeats": int(repeats),
            "mode": mode if is_keras(model) else ("onnxruntime" if is_onnx(model) else "signature"),
            "load": load}


def is_onnx(model) -> bool:
    """An ``onnx.ModelProto`` (checked by module, so that ONNX is not imported for Keras models)."""
    return type(model).__module__.startswith("onnx")


def is_keras(model) -> bool:
    """A Keras model (not ONNX, not a SavedModel signature)."""
    return not is_onnx(model) and not hasattr(model, "structured_input_signature")


def load_average() -> float | None:
    """The 1-minute load average of this machine (None where the system does not say)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def wait_for_quiet(max_load: float = 1.5, timeout: float = 600.0, poll: float = 15.0) -> float | None:
    """Wait until the 1-minute load average is below ``max_load`` (at most ``timeout`` seconds) and
    return it: latency is only worth recording on a quiet machine. Benchmarks record what it returns
    next to each figure, and say when the wait ran out."""
    deadline = time.monotonic() + timeout
    load = load_average()
    while load is not None and load >= max_load and time.monotonic() < deadline:
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        load = load_average()
    return load
