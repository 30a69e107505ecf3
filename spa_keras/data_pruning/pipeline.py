"""The two scoring paths: a full training run that scores every sample, and the extrapolation path that
trains on a small subset, scores it, and extrapolates to the rest."""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import InvalidArgumentError
from . import formulas
from .extrapolate import gcn_extrapolate, knn_extrapolate
from .models import check_model, embeddings
from .recorder import ScoreRecorder
from .sources import as_data

METHODS = ("knn", "gnn")


def _check_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_common(score, epochs, batch_size):
    return _score_names(score), _check_int(epochs, "epochs"), _check_int(batch_size, "batch_size")


def _score_names(score):
    names = [score] if isinstance(score, str) else list(score)
    for s in names:
        if s not in formulas.SCORES:
            raise InvalidArgumentError(f"unknown score {s!r}; choose one of {', '.join(formulas.SCORES)}")
    return names


def _strategy(strategy):
    import tensorflow as tf

    return strategy if strategy is not None else tf.distribute.get_strategy()


def _train(build_model, data, indices, epochs, batch_size, seed, strategy, every_steps, verbose):
    """Build (under the strategy), train on ``indices`` (all when None) and record those samples."""
    import keras

    keras.utils.set_random_seed(seed)
    with _strategy(strategy).scope():
        model = check_model(build_model())
    _check_labels_fit(model, data.y)
    watched = data if indices is None else _Subset(data, indices)
    recorder = ScoreRecorder(watched, every_steps=every_steps)
    model.fit(**data.fit_kwargs(indices, batch_size, seed), epochs=epochs, callbacks=[recorder], verbose=verbose)
    return model, recorder


def _check_labels_fit(model, y):
    """Refuse, before training, labels beyond the model's classes (TensorFlow's own error is deep and late)."""
    try:
        width = model.outputs[0].shape[-1]
    except (AttributeError, IndexError, ValueError):
        return
    classes = 2 if width == 1 else width
    if classes and y.max() >= classes:
        raise InvalidArgumentError(f"labels go up to {int(y.max())} but the model predicts {classes} classes: the "
                                   "labels do not match the model's output")


class _Subset:
    """The samples ``indices`` of a data source, as a source of its own (for the recorder)."""

    def __init__(self, data, indices):
        self.data, self.indices = data, indices
        self.n = len(indices)
        self.y = data.y[indices]

    def chunks(self, indices=None):
        assert indices is None
        return self.data.chunks(self.indices)


def _read(recorder, names, window, decay):
    out = {s: recorder.scores(s, window=window, decay=decay) for s in names}
    return out


def scores(build_model, x, y=None, score="dynamic_uncertainty", *, epochs: int = 10, batch_size: int = 256,
           seed: int = 0, strategy=None, window: int | None = None, decay: float = formulas.PAPER_DECAY,
           verbose: int = 0):
    """Score every sample by training on all of them once (the expensive reference path).

    ``build_model()`` must return a compiled ``keras.Model``; it is called under ``strategy`` (a
    ``tf.distribute.Strategy``; default: the one in scope) and trained for ``epochs`` on ``x, y`` with a
    :class:`ScoreRecorder` reading every sample at each epoch end.

    Args:
        build_model: a callable returning a compiled model.
        x, y: NumPy arrays, or a ``tf.data.Dataset`` of ``(x, y)`` batches in a fixed order (``y=None``).
        score: ``"dynamic_uncertainty"``, ``"tdds"``, ``"el2n"``, ``"forgetting"``, or a list of them
            (one run, a dict of arrays back).
        window, decay: see :mod:`spa_keras.data_pruning.formulas`.

    Returns:
        ``(n,)`` float64 scores, higher = more important (a dict of them for a list of scores).

    >>> import functools, numpy as np
    >>> from spa_keras import data_pruning as dp
    >>> build = functools.partial(dp.default_model, (4,), 2)    # or any function returning a compiled model
    >>> x, y = np.random.default_rng(0).normal(size=(64, 4)), np.arange(64) % 2
    >>> dp.scores(build, x, y, epochs=3, batch_size=32).shape
    (64,)
    """
    names, epochs, batch_size = _check_common(score, epochs, batch_size)
    data = as_data(x, y)
    _, recorder = _train(build_model, data, None, epochs, batch_size, seed, strategy, None, verbose)
    out = _read(recorder, names, window, decay)
    return out[names[0]] if isinstance(score, str) else out


def _subset_indices(subset, data, seed, stratify=True):
    n = data.n
    if isinstance(subset, (float, np.floating)) and not isinstance(subset, bool):
        if not 0 < subset < 1:
            raise InvalidArgumentError(f"subset must be a fraction in (0, 1) or an array of indices, got {subset!r}")
        m = max(1, int(round(subset * n)))
        rng = np.random.default_rng(seed)
        if not stratify:
            return np.sort(rng.choice(n, m, replace=False))
        from .selection import select

        return np.sort(select(np.zeros(n), m / n, data.y, "random", class_balanced=True, seed=seed))
    idx = np.unique(np.asarray(subset, dtype=np.int64))
    if idx.ndim != 1 or len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
        raise InvalidArgumentError(f"subset indices must be distinct integers in [0, {n})")
    if len(idx) >= n:
        raise InvalidArgumentError("the subset is the whole data set: use dp.scores for that")
    return idx


def extrapolated_scores(build_model, x, y=None, score="dynamic_uncertainty", *, subset=0.1, method: str = "knn",
                        epochs: int = 10, batch_size: int = 256, seed: int = 0, k: int = 10, layer=None,
                        step_fraction: float | None = 0.25, same_label: bool = True, temperature: float = 1.0,
                        strategy=None, window: int | None = None, decay: float = formulas.PAPER_DECAY,
                        gnn_options: dict | None = None, return_details: bool = False, verbose: int = 0):
    """Scores of every sample from a run on a small subset, extrapolated (Schmidt et al., "Effective Data
    Pruning through Score Extrapolation", arXiv 2506.09010).

    1. Draw ``subset`` (a fraction, stratified by class, or explicit indices) and train ``build_model()`` on it
       alone, recording the subset's training dynamics ``epochs`` times.
    2. Score the subset (``score``, as :func:`scores` would).
    3. Embed every sample with the subset model (the output of ``layer``; default the penultimate features).
    4. Extrapolate to the rest: ``method="knn"`` (:func:`knn_extrapolate`, within each class when
       ``same_label``) or ``"gnn"`` (:func:`gcn_extrapolate`). The subset keeps its own scores.

    The subset run's schedule decides whether this works at all (see the guide,
    ``docs/data_pruning.md``): trained for the same ``epochs`` as a full run, a 10% subset model takes a
    tenth of the optimisation steps and its scores describe an earlier stage of training than the full
    run's (on Fashion-MNIST, Dynamic Uncertainty extrapolated from them agrees with the full scores no
    better than the class means do). With ``step_fraction=f`` (the default 0.25) the subset model trains
    for ``f`` times the full run's steps (``f · epochs · n / m`` subset epochs), recording ``epochs``
    times at evenly spaced steps: the windows of the scores then cover matching stretches of training
    (Spearman 0.82 against a ceiling of 0.90 there). ``step_fraction=None`` trains ``epochs`` subset
    epochs, as in the paper. Select extrapolated scores with ``strategy="ccs"`` rather than ``"top"``:
    they are smooth over the feature space, and "top" then keeps whole neighbourhoods.

    Args:
        build_model, x, y, score, epochs, batch_size, seed, strategy, window, decay: as in :func:`scores`.
        subset: the fraction of samples to score (default 0.1), or their indices.
        method: ``"knn"`` or ``"gnn"``.
        k: neighbours (kNN) or graph degree (GNN).
        layer: the subset model's layer to embed with (a name or an index).
        step_fraction: the subset run's optimisation steps as a fraction of a full run's, or None.
        same_label: search neighbours (link graph nodes) within each class.
        temperature: the kNN weights' ``τ`` in ``exp(−d/τ)``.
        gnn_options: further keyword arguments of :func:`gcn_extrapolate` (``hidden``, ``epochs``, …).
        return_details: also return a dict with the subset's indices and scores, the embeddings and
            the seconds each stage took.

    >>> import functools, numpy as np
    >>> from spa_keras import data_pruning as dp
    >>> x, y = np.random.default_rng(0).normal(size=(200, 4)), np.arange(200) % 2
    >>> est = dp.extrapolated_scores(functools.partial(dp.default_model, (4,), 2), x, y, subset=0.2, epochs=3,
    ...                              batch_size=32, k=5)
    >>> est.shape
    (200,)
    """
    names, epochs, batch_size = _check_common(score, epochs, batch_size)
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    k = _check_int(k, "k")
    if step_fraction is not None and not step_fraction > 0:
        raise InvalidArgumentError(f"step_fraction must be positive or None, got {step_fraction!r}")
    data = as_data(x, y)
    idx = _subset_indices(subset, data, seed)
    m = len(idx)
    ys = data.y[idx]
    smallest = min(int(np.sum(ys == c)) for c in np.unique(data.y)) if same_label else m
    if method == "knn" and smallest < k:
        raise InvalidArgumentError(
            f"the subset has {smallest} samples{' in its smallest class' if same_label else ''}, fewer than "
            f"k={k}: use a larger subset or a smaller k")
    if m <= k:
        raise InvalidArgumentError(f"the subset has {m} samples, too few for k={k}: use a larger subset or a smaller k")

    t0 = time.perf_counter()
    if step_fraction is None:
        sub_epochs, every = epochs, None
    else:
        full_steps = epochs * math.ceil(data.n / batch_size)
        sub_steps_per_epoch = math.ceil(m / batch_size)
        sub_epochs = max(epochs, round(step_fraction * full_steps / sub_steps_per_epoch))
        every = max(1, (sub_epochs * sub_steps_per_epoch) // epochs)
    model, recorder = _train(build_model, data, idx, sub_epochs, batch_size, seed, strategy, every, verbose)
    sub_scores = _read(recorder, names, window, decay)
    t1 = time.perf_counter()
    emb = embeddings(model, data, layer)
    t2 = time.perf_counter()
    out = {}
    rest = np.setdiff1d(np.arange(data.n), idx)
    for s in names:
        if method == "knn":
            full = np.empty(data.n, np.float64)
            full[idx] = sub_scores[s]
            full[rest] = knn_extrapolate(emb[idx], sub_scores[s], emb[rest], k,
                                         seed_labels=ys if same_label else None,
                                         labels=data.y[rest] if same_label else None, temperature=temperature)
        else:
            full = gcn_extrapolate(emb, idx, sub_scores[s], k, labels=data.y, same_label=same_label, seed=seed,
                                   **(gnn_options or {}))
        out[s] = full
    t3 = time.perf_counter()
    result = out[names[0]] if isinstance(score, str) else out
    if not return_details:
        return result
    details = dict(subset=idx, subset_scores=sub_scores if not isinstance(score, str) else sub_scores[names[0]],
                   embeddings=emb, subset_epochs=sub_epochs, record_every_steps=every,
                   seconds=dict(train=t1 - t0, embed=t2 - t1, extrapolate=t3 - t2, total=t3 - t0))
    return result, details
