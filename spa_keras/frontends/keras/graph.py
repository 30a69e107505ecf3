"""Walking a Keras 3 model into the standard channel graph.

:func:`from_keras` walks a Functional or Sequential model (nested models inlined, shared layers and
non-Layer ``keras.ops`` nodes included) and describes every call as a :class:`~spa_keras.graph.Node`,
asking the registry (:mod:`.registry`, :mod:`.layers`, :mod:`.ops`, :mod:`.hub`) what each call means
for channels. Keras' private graph attributes are read in :mod:`.walk` only.
"""

from __future__ import annotations

import keras
import numpy as np

from ...errors import UnsupportedModelError
from ...graph import STAT, Graph, Node, Param
from ..base import ModelView
from ..spec import Spec, check_finite, fixed
from . import gradients, runner, view
from .hub import hold_in_hub
from .ops import describe_op
from .registry import Call, lookup
from .walk import functional_of, is_model, topological_nodes

def _shape(t):
    return tuple(t.shape[1:])


def _channels(t) -> int:
    s = t.shape
    if len(s) < 2 or s[-1] is None:
        return 0
    return int(s[-1])


class KerasGraph(ModelView):
    """A Keras model read as a standard channel graph.

    Attributes: ``model``; ``graph``; ``variables`` (parameter key -> Keras variable); ``specs``
    (node name -> :class:`Spec`); ``layer_nodes`` (id(layer) -> first node of that layer);
    ``model_inputs`` (id(nested model) -> graph tensor ids of its inputs at its first call).
    """

    traceable = True
    trainable = True
    kind = "Keras"

    def __init__(self, model, **options):
        self.model = model
        self.options = options
        self.hub = type(model).__module__.startswith("keras_hub.")
        self.graph = Graph(model.name)
        self.variables: dict = {}
        self.specs: dict = {}
        self.layer_nodes: dict = {}
        self.model_inputs: dict = {}
        self._calls: dict = {}
        self._seen_tensors: dict = {}
        fmodel = functional_of(model)
        tmap = {}
        for x in fmodel.inputs:
            tid = self.graph.add_tensor(x.name, _shape(x), _channels(x))
            tmap[id(x)] = tid
            self.graph.inputs.append(tid)
        self._walk(fmodel, tmap, "")
        self.graph.outputs = [tmap[id(t)] for t in fmodel.outputs]
        for ids in self._seen_tensors.values():
            for other in ids[1:]:
                self.graph.tie(ids[0], other)
        self._tie_block_widths()

    def _tie_block_widths(self):
        """The blocks of one family (keras_hub's transformer blocks) keep equal hidden widths: their
        model's configuration has one of each."""
        by_family: dict = {}
        for node in self.graph.nodes:
            family = node.attrs.get("family")
            if family is not None:
                by_family.setdefault(family, []).append(node)
        for nodes in by_family.values():
            n = len(self.specs[nodes[0].name].hidden)
            for i in range(1, n + 1):
                self.graph.tie_counts([node.outputs[-i] for node in nodes])
            for node in nodes:
                if node.attrs.get("link"):  # heads, or every head's size, follow the hidden width
                    kind, factor, multiple = node.attrs["link"]
                    follower = node.outputs[-2] if kind == "head_dim" else node.outputs[-4]
                    self.graph.link_counts(node.inputs[0], follower, factor, multiple)
        if by_family:  # a layer of the model as wide as the stream is as wide as hidden_dim (BERT's pooler)
            stream = next(iter(by_family.values()))[0].inputs[0]
            width = self.graph.tensors[stream].channels
            for node in self.graph.nodes:
                if node.attrs.get("hold_output") and self.graph.tensors[node.outputs[0]].channels == width:
                    node.attrs["hold_output"] = False
                    self.graph.tie_counts([stream, node.outputs[0]])

    # ---- the frontend interface (spa_keras.frontends.base.ModelView): the view, runner and gradients modules
    input_specs = view.input_specs
    linear = view.linear
    linears = view.linears
    batchnorm = view.batchnorm
    copy = view.copy
    run = runner.run
    gradient_stats = gradients.gradient_stats

    def weight(self, key) -> np.ndarray:
        return snapshot(self.variables[key])

    def variable(self, key):
        return self.variables[key]

    def layer(self, node):
        """The Keras layer a node calls (``None`` for a ``keras.ops`` call)."""
        op = node.ref[0] if isinstance(node.ref, tuple) else None
        return op if isinstance(op, keras.layers.Layer) else None

    def is_trainable(self, key) -> bool:
        return bool(self.variables[key].trainable)

    def assign(self, key, value) -> None:
        self.variables[key].assign(value)

    # ---- reading the model ---------------------------------------------------------------------------

    def _walk(self, fmodel, tmap, prefix):
        for knode in topological_nodes(fmodel):
            op = knode.operation
            in_ids = [tmap[id(t)] for t in knode.input_tensors]
            if is_model(op):
                inner = functional_of(op)
                inner_map = {id(x): tid for x, tid in zip(inner.inputs, in_ids)}
                self.model_inputs.setdefault(id(op), in_ids)
                self._walk(inner, inner_map, f"{prefix}{op.name}/")
                for t, inner_t in zip(knode.output_tensors, inner.outputs):
                    tmap[id(t)] = inner_map[id(inner_t)]
                continue
            out_ids = []
            for t in knode.output_tensors:
                tid = self.graph.add_tensor(f"{prefix}{t.name}", _shape(t), _channels(t))
                tmap[id(t)] = tid
                out_ids.append(tid)
                if prefix:  # inner tensor of a nested model: one width however often it is called
                    self._seen_tensors.setdefault(id(t), []).append(tid)
            self._add_node(op, knode, in_ids, out_ids, prefix)
        if prefix:
            for x, tid in ((x, tmap[id(x)]) for x in fmodel.inputs):
                self._seen_tensors.setdefault(id(x), []).append(tid)

    def _add_node(self, op, knode, in_ids, out_ids, prefix):
        g = self.graph
        call = Call(
            op,
            [g.tensors[t].shape for t in in_ids],
            [g.tensors[t].shape for t in out_ids],
            knode,
            self.options,
        )
        if isinstance(op, keras.layers.Layer):
            handler = lookup(op)
            if handler is None:
                spec = fixed(f"unknown layer class {type(op).__name__}: its channels are held fixed")
            else:
                spec = handler(call)
            if self.hub:
                spec = hold_in_hub(op, spec)
        else:
            spec = describe_op(op, call)
        base = f"{prefix}{op.name}"
        k = self._calls.get(base, 0)
        self._calls[base] = k + 1
        name = base if k == 0 else f"{base}#{k}"
        for hname, width in spec.hidden:
            out_ids.append(g.add_tensor(f"{name}:{hname}", (width,), width))
        params = []
        for v in getattr(op, "weights", []) if isinstance(op, keras.layers.Layer) else []:
            key = id(v)
            if key not in self.variables and "float" in str(v.dtype):
                check_finite(snapshot(v), f"layer {op.name!r} ({type(op).__name__})", f"weight {v.name!r} ({v.path})",
                             "Restore the weights from a checkpoint taken before training diverged (or lower "
                             "the learning rate), then prune")
            self.variables[key] = v
            short = param_name(spec, v)
            axes, role, *tag = spec.params.get(short, ({}, STAT))
            params.append(Param(key, v.path, tuple(v.shape), dict(axes), role, tag[0] if tag else ""))
        node = Node(name, spec.kind, in_ids, out_ids, params, dict(spec.attrs), list(spec.macs), base,
                    (op, knode))
        g.add_node(node)
        self.specs[name] = spec
        self.layer_nodes.setdefault(id(op), node)


def snapshot(variable) -> np.ndarray:
    """The variable's current value as a read-only NumPy array, without a copy where TensorFlow allows.

    ``variable.numpy()`` copies twice (an identity op, then the tensor into NumPy): reading every weight
    of a ResNet50 that way takes 5x longer than this, and ``read_value()`` (the same op, wrapped) 1.7x.
    The tensor a read returns shares the variable's buffer, and TensorFlow copies on write when a
    variable that is still referenced is assigned or updated by an optimizer, so the array keeps the
    value it had when it was read."""
    inner = variable.value if isinstance(variable, keras.Variable) else variable  # TensorFlow's variable
    try:  # the read op itself: the variable's read_value() wraps it in tape and placement bookkeeping
        import tensorflow as tf  # noqa: PLC0415 - imported by Keras already on its TensorFlow backend

        array = tf.raw_ops.ReadVariableOp(resource=inner.handle, dtype=inner.dtype)._numpy()
    except (AttributeError, TypeError, ValueError):  # another backend or kind of variable: a copy
        array = np.asarray(keras.ops.convert_to_numpy(variable))
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


def param_name(spec: Spec, v) -> str:
    """The key of ``spec.params`` that names variable ``v``: its id, the end of its path, or its
    short name."""
    if id(v) in spec.params:
        return id(v)
    path = v.path
    for key in spec.params:
        if isinstance(key, str) and "/" in key and path.endswith("/" + key):
            return key
    return v.name.split("/")[-1]


def from_keras(model, **options) -> KerasGraph:
    """Read a Keras model into the standard channel graph.

    ``options``: how the frontend reads what couples channels, from :data:`spa_keras.config.OPTIONS`:
    ``residual_stream`` (by default held: a stream that normalisation layers read across keeps its
    channels; ``"slice"`` or ``"rotate"`` let them go).

    >>> import keras, spa_keras.frontends.keras as fk
    >>> x = keras.Input((8, 8, 3)); y = keras.layers.Conv2D(4, 3)(x)
    >>> kg = fk.from_keras(keras.Model(x, y))
    >>> [n.kind for n in kg.graph.nodes]
    ['linear']
    """
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"expected a keras.Model, got {type(model).__name__}; load it first "
            "(keras.saving.load_model) or pass a path to spa.prune"
        )
    return KerasGraph(model, **options)
