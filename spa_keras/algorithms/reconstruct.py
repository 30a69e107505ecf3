"""Two-phase post-training reconstruction from a few hundred unlabeled samples.

The original model is the teacher. Its *probes* are the outputs of every layer with trainable weights
(convolutions, dense layers, normalisations); the loss compares a student's probes with the teacher's
on the channels that stay, as a normalised MSE averaged over probes::

    loss = mean_probe ‖(s − t) ⊙ keep‖² / ‖t ⊙ keep‖²

Phase 1 trains a full-width copy on that loss plus a growing L2 decay ``λ(t) = decay · t/T`` on exactly
the parameter slices that write the channels to be removed (kernel output slices, biases, BN γ/β), so
that their information moves into the channels that stay before they go; its trained weights are the
plan's compensation. The plan is written (the channels go), then phase 2 re-estimates every batch
normalisation's statistics on the calibration samples (the average of the batch statistics) and trains
the slim model on the same loss. Both phases run the models in inference mode (moving statistics fixed)
with Adam, one ``tf.function`` step per batch. The models are seen through the frontend interface:
copies, variables and runs, never layers.

Under a ``tf.distribute`` strategy (``MultiWorkerMirroredStrategy`` across machines) each phase trains a
copy made in the strategy's scope; every replica takes a contiguous slice of each batch
(:func:`spa_keras.data.replica_slices`) and divides its squared errors by the whole batch's teacher
energy (summed across replicas), so the gradients the optimizer sums are those of one process.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..data import array_batches, replica_slices, steady
from ..graph import WEIGHT


def _probes(model) -> list:
    """Names of the nodes whose first output is a probe (trainable weights, a channel axis)."""
    out = []
    for node in model.graph.nodes:
        if not node.outputs or model.graph.tensors[node.outputs[0]].channels <= 0:
            continue
        if any(model.is_trainable(p.key) and p.role == WEIGHT for p in node.params):
            out.append(node.name)
    return out


def _writer_masks(model, plan) -> dict:
    """``{param key: float mask}``: 1 where a trainable parameter writes a channel the plan removes."""
    masks = {}
    for node in model.graph.nodes:
        for p in node.params:
            if p.key in masks or not model.is_trainable(p.key):
                continue
            m = plan.writer_mask(node, p)
            if m is not None:
                masks[p.key] = m.astype(np.float32)
    return masks


def reestimate_batchnorm(model, inputs, batch_size: int):
    """Moving statistics of every batch normalisation := the average of its batch statistics over
    ``inputs``, with the model run in training mode (every batch normalisation on the batch's
    statistics, as when they were learnt). ``model`` is the frontend's graph object of the slim model;
    its parameters are overwritten."""
    bns = [bn for bn in map(model.batchnorm, model.graph.nodes) if bn is not None]
    if not bns:
        return
    sums = [[0.0, 0.0] for _ in bns]
    batches = 0
    for x in array_batches(inputs, batch_size):  # not tf.data: see array_batches
        values = model.run(x, keep={bn.source for bn in bns}, training=True)
        for bn, acc in zip(bns, sums):
            a = np.asarray(values[bn.source], np.float64)
            a = np.moveaxis(a, 1, -1) if bn.channels_first else a
            a = a.reshape(-1, a.shape[-1])
            acc[0] = acc[0] + a.mean(0)
            acc[1] = acc[1] + a.var(0)
        batches += 1
    for bn, (mean, var) in zip(bns, sums):
        model.assign(bn.mean.key, (mean / batches).astype(model.weight(bn.mean.key).dtype))
        model.assign(bn.var.key, (var / batches).astype(model.weight(bn.var.key).dtype))


class _Trainer:
    """One phase: a student (its frontend graph object), the teacher, probes and kept-channel indices."""

    def __init__(self, teacher, student, plan, probes, sliced: bool):
        t_nodes = {n.name: n for n in teacher.graph.nodes}
        s_nodes = {n.name: n for n in student.graph.nodes}
        self.pairs = []
        for name in probes:
            if name not in s_nodes:
                continue
            t_id, s_id = t_nodes[name].outputs[0], s_nodes[name].outputs[0]
            keep = plan.keep_mask(plan.analysis.layouts[t_id])
            if not keep.any():
                continue
            idx = np.nonzero(keep)[0]
            self.pairs.append((t_id, s_id, tf.constant(idx, tf.int32), sliced))
        self.teacher, self.student = teacher, student
        self.mask_at = next((i for i, s in enumerate(teacher.input_specs()) if s.name == "padding_mask"), None)

    def loss(self, x):
        """The normalised MSE over the probes' kept channels; with a ``padding_mask`` input, over the real
        positions of each sequence only (a probe shaped (batch, positions, channels)). In a replica of a
        strategy, the errors of this replica's slice over the teacher energy of the whole batch."""
        x = list(x)
        t_vals = self.teacher.run(x, keep={p[0] for p in self.pairs})
        s_vals = self.student.run(x, keep={p[1] for p in self.pairs})
        mask = None if self.mask_at is None else tf.cast(x[self.mask_at], tf.float32)[..., None]
        ctx = tf.distribute.get_replica_context()
        across = ctx is not None and ctx.num_replicas_in_sync > 1
        errors, energies = [], []
        for t_id, s_id, idx, sliced in self.pairs:
            t = tf.gather(tf.cast(t_vals[t_id], tf.float32), idx, axis=-1)
            s = tf.cast(s_vals[s_id], tf.float32)
            s = s if sliced else tf.gather(s, idx, axis=-1)
            w = mask if mask is not None and t.shape.rank == 3 else 1.0
            errors.append(tf.reduce_sum(tf.square(s - t) * w))
            energies.append(tf.reduce_sum(tf.square(t) * w))
        if not errors:
            return tf.constant(0.0)
        energy = tf.stack(energies)
        if across:
            energy = ctx.all_reduce(tf.distribute.ReduceOp.SUM, energy)
        return tf.reduce_sum(tf.stack(errors) / (energy + 1e-8)) / len(errors)


def _variables(model) -> list:
    """The model's trainable variables, each once."""
    keys = dict.fromkeys(p.key for p in model.graph.params() if model.is_trainable(p.key))
    return [model.variable(k) for k in keys]


def _train(trainer, inputs, epochs, batch_size, lr, penalty=None, decay=0.0, bar=None, history=None,
           strategy=None):
    import keras

    variables = _variables(trainer.student)
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    with _scope(strategy):
        opt = keras.optimizers.Adam(learning_rate=lr)
    n = len(inputs[0])
    steps = max(1, epochs * int(np.ceil(n / batch_size)))
    pen_vars = [(trainer.student.variable(k), tf.constant(m)) for k, m in (penalty or {}).items()]

    def step(x, lam):
        with tf.GradientTape() as tape:
            loss = trainer.loss(list(x) if isinstance(x, (tuple, list)) else [x])
            reg = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32) * m)) for v, m in pen_vars]) if pen_vars else 0.0
            total = loss + lam * reg / replicas  # every replica adds it; the optimizer sums the replicas
        grads = tape.gradient(total, variables)
        opt.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        return loss

    if strategy is None:
        run = tf.function(step, reduce_retracing=True, autograph=False)
    else:
        @tf.function(reduce_retracing=True, autograph=False)
        def run(x, lam):
            per = strategy.run(step, args=(x, lam))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per, axis=None)

    k = 0
    data = steady(tf.data.Dataset.from_tensor_slices(tuple(inputs)))  # see array_batches
    for epoch in range(epochs):
        losses = []
        batches = data.shuffle(n, seed=epoch).batch(batch_size)
        if strategy is not None:
            batches = strategy.distribute_datasets_from_function(lambda ctx: replica_slices(batches, ctx))
        for x in batches:
            lam = tf.constant(decay * (k + 1) / steps, tf.float32)
            losses.append(float(run(x, lam)))
            k += 1
            if bar is not None:
                bar.update(1)
        if history is not None:
            history.append(float(np.mean(losses)))


def _scope(strategy):
    import contextlib

    return contextlib.nullcontext() if strategy is None else strategy.scope()


def _bar(epochs, inputs, batch_size, desc, verbose):
    from . import progress

    return progress(epochs * int(np.ceil(len(inputs[0]) / batch_size)), desc, "step", verbose)


def phase1(model, plan, inputs, epochs: int, learning_rate: float, decay: float, batch_size: int,
           verbose: bool = False, strategy=None):
    """Phase 1: a full-width copy of ``model`` trained on the probe loss with the growing decay on the
    slices that write the plan's removed channels. Returns ``({parameter key of model: trained array},
    [mean loss per epoch])``: the compensation the plan is written with."""
    with _scope(strategy):
        student = model.copy()
    probes = _probes(model)
    history = []
    pairs = _pairs(model, student)
    if epochs:
        masks = _writer_masks(model, plan)
        penalty = {q.key: masks[p.key] for p, q in pairs if p.key in masks}
        with _bar(epochs, inputs, batch_size, "reconstruct (phase 1)", verbose) as bar:
            _train(_Trainer(model, student, plan, probes, sliced=False), inputs, epochs, batch_size, learning_rate,
                   penalty, decay, bar, history, strategy)
    return {p.key: student.weight(q.key) for p, q in pairs}, history


def _pairs(a, b) -> list:
    """The parameters of two copies of one model, side by side (same node names, same order)."""
    b_nodes = {n.name: n for n in b.graph.nodes}
    return [(p, q) for node in a.graph.nodes if node.params for p, q in zip(node.params, b_nodes[node.name].params)]


def phase2(teacher, student, plan, inputs, epochs: int, learning_rate: float, batch_size: int,
           verbose: bool = False, strategy=None):
    """Phase 2, after the plan is written: the slim model (``student``, its frontend graph object, whose
    weights are trained in place; under ``strategy``, a copy in its scope is trained and its weights
    written back) learns the teacher's kept channels. Returns the mean loss per epoch."""
    history = []
    if epochs:
        trained = student
        if strategy is not None:
            with strategy.scope():
                trained = student.copy()
        with _bar(epochs, inputs, batch_size, "reconstruct (phase 2)", verbose) as bar:
            _train(_Trainer(teacher, trained, plan, _probes(teacher), sliced=True), inputs, epochs, batch_size,
                   learning_rate, bar=bar, history=history, strategy=strategy)
        if trained is not student:
            for p, q in _pairs(student, trained):
                student.assign(p.key, trained.weight(q.key))
    return history
