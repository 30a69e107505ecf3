"""A short fine-tuning helper, with knowledge distillation from the original model as an option, that
runs under any ``tf.distribute.Strategy`` (Mirrored, MultiWorkerMirrored, TPU)."""

from __future__ import annotations

import keras

from .errors import InvalidArgumentError


def _clone(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


class Distiller(keras.Model):
    """Trains ``student`` on ``alpha * hard_loss + (1 - alpha) * T^2 * KL(teacher_T || student_T)``,
    where ``_T`` are the softmax of the logits divided by the temperature ``T`` (Hinton et al.)."""

    def __init__(self, student, teacher, hard_loss, alpha=0.5, temperature=4.0, from_logits=True, **kw):
        super().__init__(**kw)
        self.student, self.teacher = student, teacher
        self.teacher.trainable = False
        self.hard_loss = keras.losses.get(hard_loss) if isinstance(hard_loss, str) else hard_loss
        self.alpha, self.temperature, self.from_logits = float(alpha), float(temperature), from_logits

    def call(self, x, training=False):
        return self.student(x, training=training)

    def _logits(self, y):
        return y if self.from_logits else keras.ops.log(keras.ops.clip(y, 1e-7, 1.0))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        t = self.temperature
        hard = keras.ops.mean(self.hard_loss(y, y_pred))
        teacher = keras.ops.softmax(self._logits(self.teacher(x, training=False)) / t)
        student = keras.ops.log_softmax(self._logits(y_pred) / t)
        soft = keras.ops.mean(keras.ops.sum(teacher * (keras.ops.log(keras.ops.clip(teacher, 1e-7, 1.0)) - student), -1))
        return self.alpha * hard + (1.0 - self.alpha) * t * t * soft


def finetune(model, data, epochs: int = 1, teacher=None, loss=None, optimizer="adam", learning_rate: float = 1e-3,
             alpha: float = 0.5, temperature: float = 4.0, from_logits: bool = True, strategy=None,
             batch_size: int | None = None, validation_data=None, metrics=None, verbose="auto", shuffle=True):
    """Fine-tune a (pruned) model for a few epochs; returns ``(model, history)``.

    ``data`` is ``(x, y)`` or a ``tf.data.Dataset`` of ``(x, y)`` batches. ``teacher`` (the original,
    unpruned model) adds knowledge distillation. ``loss`` defaults to sparse categorical
    cross-entropy (``from_logits``). Under ``strategy`` the model (and the teacher) are copied into the
    strategy's scope, so a model built outside it trains on every replica; the returned model is that
    copy. The input model is not changed.

    >>> # slim, history = spa.finetune(slim, (x, y), epochs=2, teacher=model,
    >>> #                              strategy=tf.distribute.MirroredStrategy())
    """
    import tensorflow as tf

    if int(epochs) != epochs or epochs < 1:
        raise InvalidArgumentError(f"epochs must be a positive integer, got {epochs!r}")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"alpha must be in [0, 1], got {alpha!r}")
    strategy = strategy or tf.distribute.get_strategy()
    loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    with strategy.scope():
        student = _clone(model)
        opt = keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": learning_rate}}) \
            if isinstance(optimizer, str) else optimizer
        if teacher is not None:
            trainer = Distiller(student, _clone(teacher), loss, alpha, temperature, from_logits)
            trainer.compile(optimizer=opt, metrics=metrics)
        else:
            trainer = student
            trainer.compile(optimizer=opt, loss=loss, metrics=metrics)
    if isinstance(data, tuple):
        x, y = data
        history = trainer.fit(x, y, epochs=int(epochs), batch_size=batch_size, validation_data=validation_data,
                              verbose=verbose, shuffle=shuffle)
    else:
        history = trainer.fit(data, epochs=int(epochs), validation_data=validation_data, verbose=verbose)
    return student, history
