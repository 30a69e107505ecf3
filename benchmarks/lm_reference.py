"""The yardsticks of ``benchmarks/transformers.py`` that need no spa_keras: one global PCA projection of
the residual stream, and L2 removal of MLP units with and without a least-squares re-fit of the down
projection, written against keras_hub's Llama and GPT-2 blocks directly (their sublayers, read by
capturing their inputs)."""

from __future__ import annotations

import keras_hub
import numpy as np
import tensorflow as tf

M = keras_hub.models


def copy_lm(lm):
    """An independent copy of a keras_hub CausalLM (from_config + weights by path; clone_model does not
    work on keras_hub models)."""
    bb = lm.backbone
    nb = type(bb).from_config(bb.get_config())
    new = type(lm)(backbone=nb, preprocessor=None)
    src = {w.path: w for w in lm.weights}
    for w in new.weights:
        w.assign(src[w.path])
    return new



# ---- residual stream, block internals ----------------------------------------------------------------


def _weights(lm):
    return {w.path: w for w in lm.weights}


def is_gpt2(lm):
    return isinstance(lm.backbone, M.GPT2Backbone)


def residual_states(lm, x):
    """The residual stream of ``lm`` on inputs ``x``: ``[embedding output, block 0 output, ...]``, each
    (n, T, D) float32, computed by running the backbone's embedding and blocks by hand (eager)."""
    bb = lm.backbone
    ids = tf.constant(x["token_ids"], tf.int32)
    mask = tf.constant(x["padding_mask"], tf.int32)
    h = bb.token_embedding(ids)
    if is_gpt2(lm):
        h = bb.embeddings_add((h, bb.position_embedding(h)))
    states = [h.numpy()]
    for blk in bb.transformer_layers:
        h = blk(h, decoder_padding_mask=mask)
        states.append(h.numpy())
    return states


def _capture_inputs(layer):
    """Wrap ``layer.call`` (instance attribute) so that every eager call appends its input to a list."""
    seen = []
    orig = layer.call

    def call(inputs, *a, **k):
        seen.append(np.asarray(inputs))
        return orig(inputs, *a, **k)

    layer.call = call
    return seen, lambda: delattr(layer, "call")


def _sublayer(block, name):
    for sub in block._flatten_layers(include_self=False):
        if sub.name == name:
            return sub
    raise KeyError(f"{block.name} has no sublayer {name!r}")


def _silu(z):
    return z / (1.0 + np.exp(-z))


def _gelu_tanh(z):
    return 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z ** 3)))


# ---- references that need no spa_keras support -------------------------------------------------------


def reference_pca_projection(model, calib, keep_fraction, centre=None):
    """The issue's reference for hidden-width removal: one global PCA of the residual stream (embedding
    output and every block output, real positions of ``calib``), the stream projected onto its top
    ``round(keep_fraction * D)`` directions. No per-block rotation, no compensation of the readers.

    Implemented as a copy of the same class and width whose stream writers (token embedding, position
    embedding, attention output and MLP output kernels, their biases) are multiplied on the output side by
    P = U U^T. With ``centre`` (default: True for GPT-2-style models) the PCA is of the centred stream and
    the copy keeps ``mu + P (x - mu)``: the position embedding also gets ``(I - P) mu``, which every
    position receives once. Returns ``(copy, info)``.

    GPT-2 ties its embedding, so projecting the token embedding also projects the output head's reader
    (logits = h P E^T); there is no separate reader to leave alone in that class."""
    gpt2 = is_gpt2(model)
    centre = gpt2 if centre is None else centre
    states = residual_states(model, calib)
    real = np.asarray(calib["padding_mask"]).astype(bool)
    X = np.concatenate([s[real] for s in states]).astype("float64")
    D = X.shape[1]
    mu = X.mean(0) if centre else np.zeros(D)
    Xc = X - mu
    C = Xc.T @ Xc / len(Xc)
    evals, evecs = np.linalg.eigh(C)
    order = np.argsort(evals)[::-1]
    k = int(round(keep_fraction * D))
    U = evecs[:, order[:k]]
    P = U @ U.T
    new = copy_lm(model)
    w = _weights(new)
    L = len(new.backbone.transformer_layers)
    writers = ["token_embedding/embeddings"]
    for i in range(L):
        writers.append(f"transformer_layer_{i}/self_attention/attention_output/kernel")
        writers.append(f"transformer_layer_{i}/feedforward_output_dense/kernel")
        if gpt2:
            writers.append(f"transformer_layer_{i}/self_attention/attention_output/bias")
            writers.append(f"transformer_layer_{i}/feedforward_output_dense/bias")
    if gpt2:
        writers.append("position_embedding/embeddings")
    for path in writers:
        v = w[path].numpy().astype("float64")
        shape = v.shape
        v = v.reshape(-1, D) @ P
        if path == "position_embedding/embeddings" and centre:
            v = v + (mu - mu @ P)[None, :]
        w[path].assign(v.reshape(shape).astype("float32"))
    kept_var = float(evals[order[:k]].sum() / evals.sum())
    return new, dict(kept_dims=k, removed_fraction=round(1 - k / D, 4), centred=bool(centre),
                     variance_kept=round(kept_var, 5), vectors=len(X), writers_projected=len(writers),
                     note=("tied embedding: the output head reads through P too" if gpt2 else None))


def _mlp_paths(lm, i):
    p = f"transformer_layer_{i}/feedforward_"
    if is_gpt2(lm):
        return dict(up=p + "intermediate_dense/kernel", up_b=p + "intermediate_dense/bias",
                    down=p + "output_dense/kernel", down_b=p + "output_dense/bias")
    return dict(up=p + "intermediate_dense/kernel", gate=p + "gate_dense/kernel", down=p + "output_dense/kernel")


def _mlp_l2_scores(w, paths):
    s = (w[paths["up"]].numpy() ** 2).sum(0) + (w[paths["down"]].numpy() ** 2).sum(1)
    if "gate" in paths:
        s += (w[paths["gate"]].numpy() ** 2).sum(0)
    if "up_b" in paths:
        s += w[paths["up_b"]].numpy() ** 2
    return np.sqrt(s)


def _remove_neurons(w, paths, drop):
    """Zero the input columns (and bias) and output rows of MLP neurons ``drop``: exactly their removal."""
    for key in ("up", "gate"):
        if key in paths:
            v = w[paths[key]].numpy()
            v[:, drop] = 0
            w[paths[key]].assign(v)
    if "up_b" in paths:
        v = w[paths["up_b"]].numpy()
        v[drop] = 0
        w[paths["up_b"]].assign(v)
    v = w[paths["down"]].numpy()
    v[drop, :] = 0
    w[paths["down"]].assign(v)


def _mlp_info(lm, fraction, removed, total):
    n_w = 3 if not is_gpt2(lm) else 2  # weights per neuron row/column: gate, up, down (Llama) or in, out (GPT-2)
    D = lm.backbone.hidden_dim
    per_neuron = n_w * D + (1 if is_gpt2(lm) else 0)
    params = lm.count_params()
    return dict(fraction=fraction, neurons_removed=int(removed), neurons_total=int(total),
                params_effective=int(params - removed * per_neuron))


def reference_mlp_l2(model, fraction):
    """Remove the ``fraction`` of MLP neurons with the lowest L2 norm in every block (norm over the
    neuron's gate and up columns, down row, and GPT-2's up bias), by zeroing them on a copy (exactly
    equivalent to slicing them out). Returns ``(copy, info)``."""
    new = copy_lm(model)
    w = _weights(new)
    removed = total = 0
    for i in range(len(new.backbone.transformer_layers)):
        paths = _mlp_paths(new, i)
        s = _mlp_l2_scores(w, paths)
        n_drop = int(round(fraction * len(s)))
        drop = np.argsort(s, kind="stable")[:n_drop]
        _remove_neurons(w, paths, drop)
        removed, total = removed + n_drop, total + len(s)
    return new, _mlp_info(new, fraction, removed, total)


def reference_mlp_refit(model, calib, fraction, damp=1e-4):
    """The neurons of :func:`reference_mlp_l2`, with each block's down projection then refitted by least
    squares on ``calib`` (real positions only): the kept neurons' down rows (and, in GPT-2, the down bias)
    are chosen to best reproduce what the full MLP would output on the same inputs. Blocks are done in
    order, each seeing the inputs of the already-pruned earlier blocks. Ridge ``damp`` x mean diagonal.
    Returns ``(copy, info)``."""
    new = copy_lm(model)
    w = _weights(new)
    gpt2 = is_gpt2(new)
    real = np.asarray(calib["padding_mask"]).astype(bool)
    removed = total = 0
    rel_err = []
    for i, blk in enumerate(new.backbone.transformer_layers):
        paths = _mlp_paths(new, i)
        up_layer = _sublayer(blk, "feedforward_intermediate_dense")
        seen, restore = _capture_inputs(up_layer)
        try:
            new(calib, training=False)  # eager: blocks < i are already pruned
        finally:
            restore()
        xin = seen[0][real].astype("float64")  # (n, D): normalised MLP input
        up = w[paths["up"]].numpy().astype("float64")
        if gpt2:
            h = _gelu_tanh(xin @ up + w[paths["up_b"]].numpy())
        else:
            h = _silu(xin @ w[paths["gate"]].numpy().astype("float64")) * (xin @ up)
        down = w[paths["down"]].numpy().astype("float64")
        target = h @ down
        s = _mlp_l2_scores(w, paths)
        n_drop = int(round(fraction * len(s)))
        drop = np.argsort(s, kind="stable")[:n_drop]
        keep = np.setdiff1d(np.arange(len(s)), drop)
        A = h[:, keep]
        if gpt2:
            A = np.concatenate([A, np.ones((len(A), 1))], 1)
            target = target + w[paths["down_b"]].numpy()
        G = A.T @ A
        G += damp * np.mean(np.diag(G)) * np.eye(len(G))
        sol = np.linalg.solve(G, A.T @ target)
        _remove_neurons(w, paths, drop)
        new_down = np.zeros_like(down)
        new_down[keep] = sol[:len(keep)]
        w[paths["down"]].assign(new_down.astype("float32"))
        if gpt2:
            w[paths["down_b"]].assign(sol[len(keep)].astype("float32"))
        rel_err.append(float(np.linalg.norm(A @ sol - target) / max(np.linalg.norm(target), 1e-12)))
        removed, total = removed + n_drop, total + len(s)
    info = _mlp_info(new, fraction, removed, total)
    info.update(calibration_sequences=int(len(real)), refit_rel_error_per_block=[round(e, 4) for e in rel_err])
    return new, info
