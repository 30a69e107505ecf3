"""Two-phase post-training reconstruction from a few hundred unlabeled samples.

The original model is the teacher. Its *probes* are the outputs of every layer with trainable weights
(convolutions, dense layers, normalisations); the loss compares a student's probes with the teacher's
on the channels that stay, as a normalised MSE averaged over probes::

    loss = mean_probe ‖(s − t) ⊙ keep‖² / ‖t ⊙ keep‖²

Phase 1 trains a full-width copy on that loss plus a growing L2 decay ``λ(t) = decay · t/T`` on exactly
the parameter slices that write the channels to be removed (kernel output slices, biases, BN γ/β), so
that their information moves into the channels that stay before they go. Phase 2 removes them, re-estimates
every BatchNormalization's statistics on the calibration samples (the running average of the batch
statistics), and trains the slim model on the same loss. Both phases run the models in inference mode
(moving statistics fixed) with Adam, one ``tf.function`` step per batch.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ..graph import BIAS, WEIGHT
from ..plan import PruningPlan


def _probes(kg) -> list:
    """Names of the nodes whose first output is a probe (trainable weights, a channel axis)."""
    out = []
    for node in kg.graph.nodes:
        if not node.outputs or kg.graph.tensors[node.outputs[0]].channels <= 0:
            continue
        if any(kg.variables[p.key].trainable and p.role == WEIGHT for p in node.params):
            out.append(node.name)
    return out


def _writer_masks(kg, plan) -> dict:
    """``{param key: float mask}``: 1 where a trainable parameter writes a channel the plan removes."""
    removed = plan._element_removed
    masks = {}
    for node in kg.graph.nodes:
        for p in node.params:
            if p.key in masks or p.role not in (WEIGHT, BIAS) or not kg.variables[p.key].trainable:
                continue
            m = np.zeros(p.shape, np.float32)
            for axis, ref in p.axes.items():
                if ref.side != "out":
                    continue
                hit = removed[plan.analysis.axis_elements(node, p, axis)]
                if hit.any():
                    index = [slice(None)] * len(p.shape)
                    index[axis] = hit
                    m[tuple(index)] = 1.0
            if m.any():
                masks[p.key] = m
    return masks


def reestimate_batchnorm(kg, inputs, batch_size: int = 32):
    """Moving statistics of every BatchNormalization := average of its batch statistics over ``inputs``."""
    bns = [n.ref[0] for n in kg.graph.nodes
           if isinstance(n.ref, tuple) and isinstance(n.ref[0], keras.layers.BatchNormalization)]
    if not bns:
        return
    saved = [(bn, bn.momentum) for bn in bns]
    try:
        data = tf.data.Dataset.from_tensor_slices(tuple(inputs)).batch(batch_size)
        for k, x in enumerate(data):
            for bn in bns:
                bn.momentum = k / (k + 1.0)  # running average: the k-th batch weighs 1/(k+1)
            kg.run(x, keep=(), training=True)
    finally:
        for bn, m in saved:
            bn.momentum = m


class _Trainer:
    """One phase: a student (its KerasGraph), the teacher, probes and kept-channel indices."""

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

    def loss(self, x):
        t_vals = self.teacher.run(x, keep={p[0] for p in self.pairs})
        s_vals = self.student.run(x, keep={p[1] for p in self.pairs})
        total = 0.0
        for t_id, s_id, idx, sliced in self.pairs:
            t = tf.gather(tf.cast(t_vals[t_id], tf.float32), idx, axis=-1)
            s = tf.cast(s_vals[s_id], tf.float32)
            s = s if sliced else tf.gather(s, idx, axis=-1)
            total += tf.reduce_sum(tf.square(s - t)) / (tf.reduce_sum(tf.square(t)) + 1e-8)
        return total / max(len(self.pairs), 1)


def _train(trainer, inputs, epochs, batch_size, lr, penalty=None, decay=0.0, bar=None, history=None):
    variables = trainer.student.model.trainable_variables
    opt = keras.optimizers.Adam(learning_rate=lr)
    n = len(keras.tree.flatten(inputs)[0])
    steps = max(1, epochs * int(np.ceil(n / batch_size)))
    pen_vars = [(trainer.student.variables[k], tf.constant(m)) for k, m in (penalty or {}).items()]

    @tf.function(reduce_retracing=True)
    def step(x, lam):
        with tf.GradientTape() as tape:
            loss = trainer.loss(x)
            reg = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32) * m)) for v, m in pen_vars]) if pen_vars else 0.0
            total = loss + lam * reg
        grads = tape.gradient(total, variables)
        opt.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        return loss

    k = 0
    data = tf.data.Dataset.from_tensor_slices(tuple(inputs))
    for epoch in range(epochs):
        losses = []
        for x in data.shuffle(n, seed=epoch).batch(batch_size):
            lam = tf.constant(decay * (k + 1) / steps, tf.float32)
            losses.append(float(step(x, lam)))
            k += 1
            if bar is not None:
                bar.update(1)
        if history is not None:
            history.append(float(np.mean(losses)))


def reconstruct(kg, plan: PruningPlan, inputs, epochs=(10, 10), learning_rate: float = 1e-3,
                decay: float = 1.0, batch_size: int = 32, start=None, verbose: bool = False):
    """The slim model of ``plan``, reconstructed on ``inputs`` (one array per model input).

    ``epochs``: (phase 1, phase 2) passes over the samples; ``decay``: the final weight of the L2
    decay on the channels that go; ``start``: a slim model of the plan to begin phase 2 from (OBSPA's
    compensated one), instead of phase 1. Returns ``(slim model, {"phase1": [...], "phase2": [...]})``
    (mean loss per epoch).
    """
    from tqdm.auto import tqdm

    from ..frontends.keras import from_keras

    e1, e2 = (epochs, epochs) if isinstance(epochs, int) else tuple(epochs)
    e1 = 0 if start is not None else e1
    n = len(keras.tree.flatten(inputs)[0])
    per_epoch = int(np.ceil(n / batch_size))
    probes = _probes(kg)
    history = {"phase1": [], "phase2": []}
    with tqdm(total=(e1 + e2) * per_epoch, desc="reconstruct", unit="step", disable=not verbose) as bar:
        slim = start if start is not None else _phase1(kg, plan, inputs, probes, e1, batch_size, learning_rate,
                                                       decay, bar, history)
        skg = from_keras(slim, **kg.options)
        reestimate_batchnorm(skg, inputs, batch_size)
        if e2:
            _train(_Trainer(kg, skg, plan, probes, sliced=True), inputs, e2, batch_size, learning_rate,
                   bar=bar, history=history["phase2"])
    return slim, history


def _phase1(kg, plan, inputs, probes, e1, batch_size, learning_rate, decay, bar, history):
    """A full-width copy trained with the decay on the channels that go, then cut to the plan."""
    from ..backends.keras import apply_plan
    from ..frontends.keras import from_keras

    full = PruningPlan(plan.analysis, np.zeros_like(plan.removed_classes))
    student = from_keras(apply_plan(kg, full), **kg.options)
    if e1:
        masks = _writer_masks(kg, plan)
        s_nodes = {n.name: n for n in student.graph.nodes}
        penalty = {}
        for node in kg.graph.nodes:  # the same parameters in the copy (same node names, same order)
            for p, q in zip(node.params, s_nodes[node.name].params):
                if p.key in masks:
                    penalty[q.key] = masks[p.key]
        _train(_Trainer(kg, student, plan, probes, sliced=False), inputs, e1, batch_size, learning_rate,
               penalty, decay, bar, history["phase1"])
    trained = {}
    s_nodes = {n.name: n for n in student.graph.nodes}
    for node in kg.graph.nodes:
        for p, q in zip(node.params, s_nodes[node.name].params):
            trained[p.key] = student.weight(q.key)
    return apply_plan(kg, plan, transform=lambda node, p, value: trained.get(p.key, value))
