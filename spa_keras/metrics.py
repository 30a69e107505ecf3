"""MACs and parameter counts from the standard channel graph, and latency measurement.

MACs count the multiply-accumulates of convolutions, dense and einsum layers and attention (per
sample); element-wise ops, normalisation and pooling are not counted. Parameters count every weight
once, trainable or not, as ``keras.Model.count_params()`` does.
"""

from __future__ import annotations

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


def measure_latency(model, batch_size: int = 8, repeats: int = 10, warmup: int = 2, input_data=None) -> dict:
    """Median and best wall time of ``model(x, training=False)`` on this machine, in seconds.

    >>> # measure_latency(keras.applications.ResNet50(weights=None), batch_size=8)["median_s"]
    """
    import keras

    if input_data is None:
        rng = np.random.default_rng(0)
        input_data = [
            rng.standard_normal((batch_size,) + tuple(int(d or 1) for d in x.shape[1:])).astype(
                x.dtype if "float" in str(x.dtype) else "float32"
            )
            for x in model.inputs
        ]
        input_data = input_data[0] if len(input_data) == 1 else input_data
    x = keras.tree.map_structure(keras.ops.convert_to_tensor, input_data)
    for _ in range(warmup):
        model(x, training=False)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = model(x, training=False)
        keras.tree.map_structure(lambda y: np.asarray(y), out)
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "best_s": float(np.min(times)), "batch_size": batch_size}
