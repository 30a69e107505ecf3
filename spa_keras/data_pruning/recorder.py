"""The training-dynamics recorder: a Keras callback that runs the model over a fixed set of samples at
each epoch end (or every few steps) and keeps what the scores of :mod:`.formulas` need."""

from __future__ import annotations

import keras
import numpy as np

from ..errors import InvalidArgumentError
from . import formulas
from .models import looks_like_logits, predict_chunks, to_probabilities
from .sources import as_data


class ScoreRecorder(keras.callbacks.Callback):
    """Records the training dynamics of samples ``x`` (labels ``y``) for the data-pruning scores.

    At each recording point — every epoch end, or every ``every_steps`` training batches — the model
    runs over the samples in inference mode (a chunk of 65,536 at a time) and the recorder keeps, per
    sample, ``p(y|x)``, whether the prediction is right, the EL2N error norm and TDDS's change of the
    prediction since the last recording (only the last probability matrix is held, ``n × C``). Memory:
    about ``13 · n`` bytes per recording plus ``8 · n · C``.

    ``x, y`` are NumPy arrays or a ``tf.data.Dataset`` of ``(x, y)`` batches in a fixed order; they are
    usually the training data (the papers score training samples), but any labelled samples can be
    watched. Pass it to ``model.fit(..., callbacks=[recorder])``, then read :meth:`scores`.

    Args:
        x, y: the samples to watch.
        every_steps: record every this many training batches instead of at epoch ends (to put a
            subset's recordings at the same optimisation steps as a full run's).
        batch_size: inference batch size.
        from_logits: whether the model outputs logits; ``None`` decides from the first outputs.

    >>> import keras, numpy as np
    >>> from spa_keras import data_pruning as dp
    >>> x, y = np.random.default_rng(0).normal(size=(64, 4)), np.arange(64) % 2
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
    ...                           keras.layers.Dense(2, activation="softmax")])
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> rec = dp.ScoreRecorder(x, y)
    >>> _ = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[rec])
    >>> rec.recordings, rec.scores("dynamic_uncertainty").shape
    (3, (64,))
    """

    def __init__(self, x, y=None, *, every_steps: int | None = None, batch_size: int = 1024, from_logits=None):
        super().__init__()
        self.data = x if hasattr(x, "chunks") else as_data(x, y)
        if every_steps is not None and (not isinstance(every_steps, (int, np.integer)) or every_steps < 1):
            raise InvalidArgumentError(f"every_steps must be a positive integer or None, got {every_steps!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.every_steps = every_steps
        self.batch_size = int(batch_size)
        self.from_logits = from_logits
        self.reset()

    def reset(self):
        """Forget every recording (to reuse the recorder for another run)."""
        self._p_true, self._correct, self._el2n, self._kl = [], [], [], []
        self._prev = None
        self._steps = 0

    # ---- recording ---------------------------------------------------------------------------------

    def record(self):
        """Run the model over the samples now and keep one recording."""
        y = self.data.y
        n = self.data.n
        p_true = np.empty(n, np.float32)
        correct = np.empty(n, bool)
        err = np.empty(n, np.float32)
        kl = np.empty(n, np.float32) if self._prev is not None else None
        for start, out in predict_chunks(self.model, self.data, batch_size=self.batch_size):
            if self.from_logits is None:  # decided once, on the first chunk, so that every recording agrees
                self.from_logits = looks_like_logits(out)
            probs = to_probabilities(out, self.from_logits)
            sl = slice(start, start + len(probs))
            yc = y[sl]
            if yc.max() >= probs.shape[1]:
                raise InvalidArgumentError(f"labels go up to {int(yc.max())} but the model predicts {probs.shape[1]} "
                                           "classes: the labels do not match the model's output")
            rows = np.arange(len(probs))
            p_true[sl] = probs[rows, yc]
            correct[sl] = probs.argmax(axis=1) == yc
            err[sl] = formulas.el2n(probs, yc)
            if kl is not None:
                kl[sl] = formulas.kl_change(self._prev[sl], probs)
            if start == 0:
                new_prev = np.empty((n, probs.shape[1]), np.float32)
            new_prev[sl] = probs
        self._prev = new_prev
        self._p_true.append(p_true)
        self._correct.append(correct)
        self._el2n.append(err)
        if kl is not None:
            self._kl.append(kl)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_steps is None:
            self.record()

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps is not None:
            self._steps += 1
            if self._steps % self.every_steps == 0:
                self.record()

    # ---- results -----------------------------------------------------------------------------------

    @property
    def recordings(self) -> int:
        """How many recordings were taken."""
        return len(self._p_true)

    @property
    def p_true(self) -> np.ndarray:
        """``(T, n)``: ``p(y|x)`` at each recording."""
        return np.stack(self._p_true) if self._p_true else np.empty((0, self.data.n), np.float32)

    @property
    def correct(self) -> np.ndarray:
        """``(T, n)``: whether the prediction was the label at each recording."""
        return np.stack(self._correct) if self._correct else np.empty((0, self.data.n), bool)

    def scores(self, score: str = "dynamic_uncertainty", window: int | None = None,
               decay: float = formulas.PAPER_DECAY, at: int | None = None) -> np.ndarray:
        """The ``(n,)`` scores of the recorded run, higher = more important.

        Args:
            score: ``"dynamic_uncertainty"``, ``"tdds"``, ``"el2n"`` or ``"forgetting"`` (see
                :mod:`spa_keras.data_pruning.formulas` for each formula and its paper).
            window: the window of Dynamic Uncertainty and TDDS in recordings (default: the papers' 10,
                shrunk to the number of recordings).
            decay: TDDS's exponential decay.
            at: the recording EL2N is read at (default: the one at 10% of the run, "early in training"
                as in the paper; negative counts from the end).
        """
        if score not in formulas.SCORES:
            raise InvalidArgumentError(f"unknown score {score!r}; choose one of {', '.join(formulas.SCORES)}")
        if not self._p_true:
            raise InvalidArgumentError("nothing recorded yet: pass the recorder to model.fit(callbacks=[...])")
        if score == "dynamic_uncertainty":
            return formulas.dynamic_uncertainty(self.p_true, window)
        if score == "tdds":
            kl = np.stack(self._kl) if self._kl else np.empty((0, self.data.n))
            return formulas.tdds(kl, window, decay)
        if score == "forgetting":
            return formulas.forgetting_events(self.correct)
        T = self.recordings
        at = max(0, int(np.ceil(0.1 * T)) - 1) if at is None else at
        if not -T <= at < T:
            raise InvalidArgumentError(f"el2n: at={at} but only {T} recordings were taken")
        return self._el2n[at].astype(np.float64)
