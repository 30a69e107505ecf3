"""The op-by-op interpreter of a Keras model's graph: the values of any graph tensors for a batch."""

from __future__ import annotations

import contextlib

import keras

from ...errors import InvalidArgumentError
from .graph import fill_in, functional_of, is_model, topological_nodes


def run(kg, inputs, keep=None, training: bool = False) -> dict:
    """Execute ``kg.model`` op by op on ``inputs`` and return ``{graph tensor id: value}`` for the
    tensors in ``keep`` (every tensor when None). Traceable: the algorithms call it inside
    ``tf.function`` and ``GradientTape``. ``training`` is passed to every layer that takes it
    (BatchNorm normalises with the batch's statistics, and updates its moving ones, only then).

    >>> import keras, numpy as np, spa_keras.frontends.keras as fk
    >>> x = keras.Input((4,)); m = keras.Model(x, keras.layers.Dense(2)(x))
    >>> kg = fk.from_keras(m); out = kg.run(np.ones((1, 4), "float32"), keep=kg.graph.outputs)
    >>> tuple(out[kg.graph.outputs[0]].shape)
    (1, 2)
    """
    fmodel = functional_of(kg.model)
    flat = keras.tree.flatten(inputs)
    if len(flat) != len(fmodel.inputs):
        raise InvalidArgumentError(f"model {kg.model.name!r} takes {len(fmodel.inputs)} inputs, got {len(flat)}")
    keep = None if keep is None else set(keep)
    values = {}
    tmap = {}
    for x, v, tid in zip(keras.tree.flatten(fmodel._inputs_struct), flat, kg.graph.inputs):
        tmap[id(x)] = v
        if keep is None or tid in keep:
            values[tid] = v
    probes = [k for k in keep or () if isinstance(k, tuple) and k[:1] == ("probe",)]
    with _recording(kg, probes, values):
        _run(fmodel, tmap, iter(kg.graph.nodes), values, keep, training)
    return values


@contextlib.contextmanager
def _recording(kg, probes, values):
    """While the model runs, the layers that ``probes`` name (``("probe", node name, name)``: a sublayer
    of a transformer block, see its ``attrs["probes"]``) record their first input in ``values``."""
    patched = []
    try:
        for key in probes:
            _, name, which = key
            node = next(n for n in kg.graph.nodes if n.name == name)
            layer = node.ref[0]
            path = f"{layer.path}/{node.attrs['probes'][which][0]}"
            sub = next((s for s in layer._flatten_layers(include_self=False) if s.path == path), None)
            if sub is None:
                raise InvalidArgumentError(f"{name}: no layer {path!r} inside it to read")
            original = sub.call

            def call(*args, _key=key, _call=original, **kwargs):
                values[_key] = args[0]
                return _call(*args, **kwargs)

            sub.call = call
            patched.append(sub)
        yield
    finally:
        for sub in patched:
            del sub.call  # the class's own call again


def _run(fmodel, tmap, nodes, values, keep, training):
    for knode in topological_nodes(fmodel):
        op = knode.operation
        if is_model(op):
            inner = functional_of(op)
            inner_map = {id(x): tmap[id(t)] for x, t in zip(inner.inputs, knode.input_tensors)}
            _run(inner, inner_map, nodes, values, keep, training)
            for t, inner_t in zip(knode.output_tensors, inner.outputs):
                tmap[id(t)] = inner_map[id(inner_t)]
            continue
        node = next(nodes)
        args, kwargs = fill_in(knode, tmap)
        if getattr(op, "_call_has_training_arg", False):
            kwargs["training"] = training
        out = keras.tree.flatten(op(*args, **kwargs))
        for t, v, tid in zip(knode.output_tensors, out, node.outputs):
            tmap[id(t)] = v
            if keep is None or tid in keep:
                values[tid] = v
