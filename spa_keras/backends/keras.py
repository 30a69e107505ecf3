"""Write a plan out as a new, physically slimmer Keras model.

Every layer is re-created from its config, edited for its new widths by the frontend registry's
``resize`` (filters, units, a Reshape's hard-coded target shape, ...); the graph is replayed on new
inputs, nested models rebuilt with their new input widths and shared layers kept shared; then every
weight is copied with the removed channels sliced out. The input model is only read.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

from ..errors import RebuildError
from ..frontends import keras as fk
from ..frontends.keras import KerasGraph
from ..plan import PruningPlan
from .oracle import compare


def _new_input(x, width: int | None):
    shape = list(x.shape)
    if width is not None and len(shape) >= 2 and shape[-1] is not None:
        shape[-1] = int(width)
    return keras.Input(batch_shape=tuple(shape), dtype=x.dtype, name=x.name.split(":")[0])


def _drop_build_configs(cfg):
    """Wrapper layers (Bidirectional, TimeDistributed) serialise their inner layer with the input shape
    it was built for; drop it so that the inner layer builds for its new width."""
    if isinstance(cfg, dict):
        cfg.pop("build_config", None)
        for v in cfg.values():
            _drop_build_configs(v)
    elif isinstance(cfg, list):
        for v in cfg:
            _drop_build_configs(v)


class _Rebuilder:
    def __init__(self, kg: KerasGraph, plan: PruningPlan):
        self.kg = kg
        self.plan = plan
        self.new_ops: dict = {}  # id(old layer or model) -> new
        self.pairs: list = []  # (old layer, new layer)

    def width_fn(self, node):
        """``width(ref)``: the new width of the tensor an AxisRef of ``node`` names."""
        return lambda ref: self.plan.width((node.inputs if ref.side == "in" else node.outputs)[ref.index])

    # ---- layers ----------------------------------------------------------------------------------
    def layer(self, layer):
        if id(layer) in self.new_ops:
            return self.new_ops[id(layer)]
        if fk.is_model(layer):
            new = self.model(layer, self.kg.model_inputs.get(id(layer)))
        else:
            node = self.kg.layer_nodes.get(id(layer))
            cfg = layer.get_config()
            spec = self.kg.specs[node.name] if node is not None else None
            if spec is not None and spec.resize is not None:
                spec.resize(cfg, self.width_fn(node))
            _drop_build_configs(cfg)
            try:
                new = layer.__class__.from_config(cfg)
            except Exception as e:  # noqa: BLE001 - any failure here is the layer's own
                raise RebuildError(
                    f"layer {layer.name!r} ({type(layer).__name__}) could not be re-created from its "
                    f"config: {e}. Give the class a get_config/from_config that round-trips, or keep it "
                    "out of the pruned path with ignored_layers"
                ) from e
            self.pairs.append((layer, new))
        self.new_ops[id(layer)] = new
        return new

    # ---- models ----------------------------------------------------------------------------------
    def model(self, model, input_ids):
        fmodel = fk.functional_of(model)
        widths = [self.plan.width(t) for t in input_ids] if input_ids else [None] * len(fmodel.inputs)
        inputs = [_new_input(x, w) for x, w in zip(fmodel.inputs, widths)]
        if isinstance(model, keras.Sequential):
            layers = [self.layer(layer) for layer in model.layers]
            return keras.Sequential([inputs[0]] + layers, name=model.name)
        outputs = self.replay(fmodel, inputs)
        return keras.Model(fk.pack_inputs(fmodel, inputs), fk.pack_outputs(fmodel, outputs), name=model.name)

    def replay(self, fmodel, inputs):
        tmap = {id(x): y for x, y in zip(fmodel.inputs, inputs)}
        for knode in fk.topological_nodes(fmodel):
            op = knode.operation
            new_op = self.layer(op) if isinstance(op, keras.layers.Layer) else op
            args, kwargs = fk.fill_in(knode, tmap)
            try:
                out = new_op(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                raise RebuildError(
                    f"rebuilding {op.name!r} ({type(op).__name__}) with its new widths failed: {e}"
                ) from e
            for x, y in zip(knode.outputs, keras.tree.flatten(out)):
                tmap[id(x)] = y
        return [tmap[id(t)] for t in fmodel.outputs]

    # ---- weights ---------------------------------------------------------------------------------
    def copy_weights(self, transform=None):
        """Copy every weight into the new layers, sliced to the plan, with the plan's compensation
        written first; ``transform(node, param, value)`` replaces that step (the oracle's zeroing)."""
        transform = transform or (lambda node, p, value: self.plan.value(p, value))
        for old, new in self.pairs:
            node = self.kg.layer_nodes.get(id(old))
            params = {p.key: p for p in node.params} if node is not None else {}
            spec = self.kg.specs[node.name] if node is not None else None
            values = []
            for v_old, v_new in zip(old.weights, new.weights):
                value = fk.snapshot(v_old)
                p = params.get(id(v_old))
                if p is not None:
                    value = transform(node, p, value)
                    for axis, idx in self.plan.keep_indices(node, p).items():
                        value = np.take(value, idx, axis=axis)
                    if spec.transform is not None:
                        value = spec.transform(fk.param_name(spec, v_old), value, self.width_fn(node))
                if tuple(value.shape) != tuple(v_new.shape):
                    raise RebuildError(
                        f"layer {old.name!r} ({type(old).__name__}): weight {v_old.name} sliced to "
                        f"{value.shape} but the rebuilt layer expects {tuple(v_new.shape)}"
                    )
                values.append(value)
            if len(old.weights) != len(new.weights):
                raise RebuildError(f"layer {old.name!r}: the rebuilt layer has a different number of weights")
            for v_new, value in zip(new.weights, values):
                _set_value(v_new, value)


def _set_value(variable, value) -> None:
    """Give a variable its value: a variable created uninitialised (under :func:`_deferred_variables`) is
    created from ``value`` directly, skipping its initializer (random kernels, zeros) and the assign."""
    if getattr(variable, "_value", True) is None and getattr(variable, "_initializer", None) is not None:
        variable._initialize(np.asarray(value, dtype=variable.dtype))
        variable._initializer = None
    else:
        variable.assign(value)


class _deferred_variables:
    """Build layers with their variables left uninitialised (Keras' ``StatelessScope`` defers them), so
    that :func:`_set_value` creates each from its sliced value once; on leaving, whatever is still
    uninitialised (variables no weight was copied into) is initialised as usual. Private Keras state
    (the global list of uninitialised variables) is read here only."""

    def __enter__(self):
        self.scope = keras.StatelessScope(initialize_variables=False)
        self.scope.__enter__()
        return self

    def leave(self):
        """Leave the scope (variables may be given values from here on)."""
        if self.scope is not None:
            self.scope.__exit__(None, None, None)
            self.scope = None

    def __exit__(self, *exc):
        from keras.src.backend.common import global_state

        self.leave()
        pending = global_state.get_global_attribute("uninitialized_variables") or []
        global_state.set_global_attribute("uninitialized_variables", [])
        for v in pending:
            if v._value is None:
                v._deferred_initialize()
        return False


def apply_plan(kg: KerasGraph, plan: PruningPlan, transform=None) -> keras.Model:
    """A new Keras model with the plan's channels removed and its compensation written (the input model
    is not changed). ``transform(node, param, value)``, when given, decides each weight's full-width
    value instead of the compensation (the oracle's zeroed copy uses it).

    >>> # slim = apply_plan(from_keras(model), spa.plan(model, ratio=0.5))
    """
    from .keras_hub import apply_hub_plan, is_hub

    if is_hub(kg.model):
        return apply_hub_plan(kg, plan, transform)
    rb = _Rebuilder(kg, plan)
    model = kg.model
    with _deferred_variables() as deferred:
        new = rb.model(model, None if isinstance(model, keras.Sequential) else kg.graph.inputs)
        deferred.leave()
        rb.copy_weights(transform)
    if getattr(model, "compiled", False):
        try:
            new.compile_from_config(model.get_compile_config())
        except Exception as e:  # noqa: BLE001 - the slim model is still valid uncompiled
            warnings.warn(f"the slim model could not be compiled like the original ({e}); compile it again")
    return new


def zero_in_place(kg: KerasGraph, plan: PruningPlan) -> None:
    """Zero the plan's removed channels in ``kg.model`` itself (the soft masks of training-time pruning)."""
    for node in kg.graph.nodes:
        for p in node.params:
            mask = plan.writer_mask(node, p)
            if mask is not None:
                var = kg.variables[p.key]
                var.assign(np.where(mask, np.zeros((), var.dtype), var.numpy()))


def zeroed_copy(kg: KerasGraph, plan: PruningPlan) -> keras.Model:
    """The zero-channel oracle: a full-width copy of the model with every removed channel zeroed at the
    parameters that write it (kernel output slices, biases, BN gamma/beta/mean), after the plan's
    compensation. On a zero-preserving path its outputs equal the pruned model's."""
    return apply_plan(kg, PruningPlan.empty(plan.analysis), transform=plan.zeroed)


def verify(kg: KerasGraph, plan: PruningPlan, slim, inputs, rtol: float = 1e-3) -> dict:
    """Check a pruned model against the zero-channel oracle on ``inputs``.

    Returns ``{"passed", "max_abs_diff", "scale"}``: ``passed`` when every output of ``slim`` equals the
    zeroed full-width copy's to ``rtol`` of the output's magnitude. Meaningful on zero-preserving paths
    (ReLU, swish, GELU, pooling, add, concat, multiply).
    """
    want = keras.tree.flatten(zeroed_copy(kg, plan)(inputs, training=False))
    got = keras.tree.flatten(slim(inputs, training=False))
    return compare(want, got, rtol)
