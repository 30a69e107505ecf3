"""Latency as a pruning target: ``target_latency=0.5`` is half the original's latency measured on this
machine, in the serving path.

As NetAdapt and HALP do, a per-layer latency table is measured on the machine: every convolution and
dense layer (and depthwise convolution) is timed on its own, traced in a ``tf.function`` as it is
served (with its bias; BatchNorm folded), at the batch size asked for, at a few input/output widths.
Per layer the time is modelled as ``t(cin, cout) = a + b·cin + c·cout + d·cin·cout`` (four widths,
fitted exactly); what the table does not see (pooling, adds, activations the convolutions do not fuse)
is the measured whole-model time minus the table's sum at full width, scaled with the activations'
total width. A plan is searched on that prediction (:func:`spa_keras.plan.search`), then written and
measured for real; the predicted goal is corrected by the measured ratio until the measured latency
lands within 3% of the target (a new measurement then lands within 5%). The table is cached in ``~/.cache/spa_keras/latency.json``
(``SPA_KERAS_CACHE`` moves it), keyed by the machine (CPU model, cores, TensorFlow version) and each
layer's signature, so a second model with the same layers measures nothing again.
"""

from __future__ import annotations

import json
import os
import platform

import numpy as np

from .errors import InvalidArgumentError

FRACTIONS = ((1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.5, 0.5))  # (cin, cout) fractions each layer is timed at


def cache_path() -> str:
    base = os.environ.get("SPA_KERAS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spa_keras")
    return os.path.join(base, "latency.json")


def machine_key() -> str:
    """What a latency table is valid for: the CPU model, the number of cores, TensorFlow's version and
    whether a GPU is visible."""
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpus = len(tf.config.list_physical_devices("GPU"))
    return f"{cpu}|{os.cpu_count()} cores|tf {tf.__version__}|{gpus} gpu"


class LatencyTable:
    """Measured seconds of single layers, by layer signature and widths; read from and written to the
    cache file."""

    def __init__(self, path: str | None = None):
        self.path = path or cache_path()
        self.key = machine_key()
        self.entries = {}
        self.measured = 0  # how many layer timings this table had to take (0: all from the cache)
        try:
            with open(self.path) as f:
                self.entries = json.load(f).get(self.key, {})
        except (OSError, ValueError):
            pass

    def seconds(self, signature: str, build, batch: int, repeats: int) -> float:
        if signature not in self.entries:
            from .metrics import measure_latency

            self.entries[signature] = measure_latency(build(), batch_size=batch, repeats=repeats, warmup=2)["best_s"]
            self.measured += 1
        return self.entries[signature]

    def save(self) -> None:
        from .io import atomic_write

        data = {}
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            pass
        data.setdefault(self.key, {}).update(self.entries)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        atomic_write(self.path, lambda tmp: _write_json(tmp, data), overwrite=True)


def _write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=0, sort_keys=True)


def _layer_model(layer, in_shape, cin, cout, depthwise):
    """A one-layer model: ``layer``'s configuration at widths ``cin`` -> ``cout``, with a bias (as served
    with BatchNorm folded)."""
    import keras

    cfg = layer.get_config()
    cfg.pop("name", None)
    if "use_bias" in cfg:
        cfg["use_bias"] = True
    if not depthwise:
        cfg["filters" if "filters" in cfg else "units"] = int(cout)
    x = keras.Input(tuple(in_shape[:-1]) + (int(cin),))
    y = type(layer).from_config(cfg)(x)
    # one element out: the whole output copied to NumPy would be timed too (a whole model copies only its last)
    return keras.Model(x, keras.ops.slice(y, [0] * len(y.shape), [1] * len(y.shape)))


def _overhead_model():
    """The cheapest model: what every single-layer timing pays besides the layer (the call itself)."""
    import keras

    x = keras.Input((1,))
    return keras.Model(x, keras.layers.Identity()(x))


class LatencyModel:
    """Predicted serving latency of a Keras model under a plan (see the module's docstring)."""

    def __init__(self, view, batch_size: int, repeats: int = 10, table: LatencyTable | None = None,
                 measured_full: float | None = None):
        from .backends.fold import as_depthwise, depthwise_grouped

        self.view, self.batch = view, batch_size
        self.table = table or LatencyTable()
        graph = view.graph
        self.layers = []  # (node, in tensor, out tensor, depthwise, coefficients a, b, c, d)
        for node in graph.nodes:
            op = view.layer(node)
            if op is not None and depthwise_grouped(op):
                op = as_depthwise(op)  # as served
            depthwise = node.kind == "depthwise" and op is not None
            if not (view.linear(node) is not None or depthwise) or not node.inputs or not node.outputs:
                continue
            in_t, out_t = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
            if any(d is None for d in in_t.shape):
                continue
            cin, cout = in_t.channels, out_t.channels
            times = []
            overhead = self.table.seconds(f"overhead|b{batch_size}", _overhead_model, batch_size, repeats)
            for fi, fo in FRACTIONS:
                ci = max(1, int(round(cin * fi)))
                co = ci * (cout // max(cin, 1)) if depthwise else max(1, int(round(cout * fo)))
                sig = (f"{type(op).__name__}|{json.dumps(_signature_config(op), sort_keys=True)}|in{tuple(in_t.shape)}"
                       f"|{ci}->{co}|b{batch_size}")
                times.append((ci, co, self.table.seconds(
                    sig, lambda ci=ci, co=co: _layer_model(op, in_t.shape, ci, co, depthwise), batch_size, repeats)
                    - overhead))
            a = np.array([[1.0, ci, co, ci * co] for ci, co, _ in times])
            coef = np.linalg.lstsq(a, np.array([t for *_, t in times]), rcond=None)[0]
            self.layers.append((node, node.inputs[0], node.outputs[0], coef))
        if self.table.measured:
            self.table.save()
        self.activations = [(t, float(np.prod([d for d in graph.tensors[t].shape[:-1] if d]) or 1.0))
                            for n in graph.nodes for t in n.outputs if graph.tensors[t].channels > 0]
        full = self.layer_sum(None)
        self.measured_full = measured_full
        self.rest = (measured_full or full) - full  # what the table does not see (negative: it overcounts)

    def _act(self, plan) -> float:
        width = (lambda t: self.view.graph.tensors[t].channels) if plan is None else plan.width
        return sum(s * width(t) for t, s in self.activations)

    def layer_sum(self, plan) -> float:
        width = (lambda t: self.view.graph.tensors[t].channels) if plan is None else plan.width
        total = 0.0
        for _, i, o, (a, b, c, d) in self.layers:
            ci, co = width(i), width(o)
            total += max(a + b * ci + c * co + d * ci * co, 0.0)
        return total

    def predict(self, plan) -> float:
        """Predicted seconds of one batch under ``plan`` (``None``: the original)."""
        rest = self.rest * (self._act(plan) / max(self._act(None), 1e-12) if plan is not None else 1.0)
        return self.layer_sum(plan) + rest


def _signature_config(layer) -> dict:
    """The parts of a layer's configuration that decide its cost (not its name, widths or initializers)."""
    cfg = layer.get_config()
    keep = ("kernel_size", "strides", "padding", "dilation_rate", "groups", "depth_multiplier", "activation",
            "data_format")
    return {k: cfg[k] for k in keep if k in cfg}


def serving_latency(model, batch_size: int, repeats: int = 20, warmup: int = 3) -> dict:
    """The measured serving latency of a Keras model as exported (:func:`~.backends.fold.serving_model`:
    BatchNorm folded, depthwise-grouped convolutions as ``DepthwiseConv``; traced once)."""
    from .backends.fold import serving_model
    from .metrics import measure_latency

    return measure_latency(serving_model(model), batch_size=batch_size, repeats=repeats, warmup=warmup)


def paired_ratio(model, reference, batch_size: int, rounds: int = 5, repeats: int = 8) -> dict:
    """``model``'s latency over ``reference``'s (both callables ``measure_latency`` takes, as served),
    timed in alternation: ``rounds`` pairs of medians of ``repeats`` runs, and the median of the pairs'
    ratios. On a shared machine the speed drifts by 10% within a minute (measured here); alternating
    cancels what drifts slower than one pair. Returns ``{"ratio", "model_s", "reference_s", "ratios"}``."""
    from .metrics import measure_latency

    pairs = []
    for i in range(rounds):
        warmup = 3 if i == 0 else 1
        a = measure_latency(model, batch_size=batch_size, repeats=repeats, warmup=warmup)["median_s"]
        b = measure_latency(reference, batch_size=batch_size, repeats=repeats, warmup=warmup)["median_s"]
        pairs.append((a, b))
    ratios = [a / b for a, b in pairs]
    return dict(ratio=float(np.median(ratios)), model_s=float(np.median([a for a, _ in pairs])),
                reference_s=float(np.median([b for _, b in pairs])), ratios=[round(r, 4) for r in ratios])


def search_latency(view, analysis, scores, fraction: float, batch_size: int, options: dict,
                   tolerance: float = 0.03, rounds: int = 6):
    """The plan whose slim model, measured in the serving path, takes ``fraction`` of the original's
    time (within ``tolerance``: 3%, so that a new measurement lands within 5%), searched on the latency
    table's prediction and corrected by measuring. Each candidate is judged by :func:`paired_ratio`
    against the original (timed in alternation): with one early timing of the original, a fresh
    measurement put MobileNetV2 and ResNet50 at 0.53 where the search had seen 0.51."""
    from .backends.fold import serving_model
    from .backends.keras import apply_plan
    from .metrics import measure_latency
    from .plan import search

    if view.kind != "Keras":
        raise InvalidArgumentError("target_latency measures Keras models in the TensorFlow serving path; for an "
                                   "ONNX model, convert it with spa.from_onnx first (or use target_macs)")
    original = serving_model(view.model)  # as exported; timed again beside every candidate (the machine drifts)
    full = measure_latency(original, batch_size=batch_size)
    model = LatencyModel(view, batch_size, measured_full=full["median_s"])
    goal, best, history = fraction * full["median_s"], None, []
    below, above = None, None  # (goal, measured ratio) pairs bracketing the target
    for _ in range(rounds):
        plan = search(analysis, scores, model.predict, min(goal, model.predict(None)), **options)
        pair = paired_ratio(serving_model(apply_plan(view, plan)), original, batch_size)
        ratio, measured, reference = pair["ratio"], pair["model_s"], pair["reference_s"]
        history.append(dict(goal_s=goal, predicted_s=float(model.predict(plan)), measured_s=measured,
                            original_s=reference, ratio=ratio))
        if best is None or abs(ratio - fraction) < abs(best[1] - fraction):
            best = (plan, ratio, measured, reference)
        if abs(ratio - fraction) <= tolerance * fraction:
            break
        if ratio < fraction:
            below = (goal, ratio)
        else:
            above = (goal, ratio)
        if below is not None and above is not None and above[1] > below[1]:  # secant between the bracket
            goal = below[0] + (fraction - below[1]) * (above[0] - below[0]) / (above[1] - below[1])
        else:
            goal *= fraction / ratio
    plan, ratio, measured, reference = best
    if abs(ratio - fraction) > tolerance * fraction:
        import warnings

        warnings.warn(f"target_latency: the closest plan measured {ratio:.3f} of the original's latency against a "
                      f"target of {fraction:.3f} (more than {tolerance:.0%} off; the machine may be busy: load "
                      f"average {full['load']})")
    return plan.record(target_latency=fraction, latency_batch_size=batch_size, latency_before_s=reference,
                       latency_after_s=measured, latency_reached=ratio,
                       latency_load=full["load"], latency_rounds=history,
                       latency_table=dict(path=model.table.path, measured_now=model.table.measured))
