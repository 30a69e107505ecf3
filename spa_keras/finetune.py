"""A short fine-tuning helper, with knowledge distillation from the original model as an option, that
runs under a ``tf.distribute.Strategy`` (Keras' ``fit``; under ``MultiWorkerMirroredStrategy``, where that
does not run, a loop of its own)."""

from __future__ import annotations

import keras

from .data import replica_slices, steady
from .errors import InvalidArgumentError


def _clone(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


class _FunctionLoss(keras.losses.Loss):
    """A per-sample loss function as a Keras ``Loss`` (batch mean, scaled for tf.distribute)."""

    def __init__(self, fn):
        super().__init__(name=getattr(fn, "__name__", "loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


class Distiller(keras.Model):
    """Trains ``student`` on ``alpha * hard_loss + (1 - alpha) * T^2 * KL(teacher_T || student_T)``,
    where ``_T`` are the softmax of the logits divided by the temperature ``T`` (Hinton et al.)."""

    def __init__(self, student, teacher, hard_loss, alpha=0.5, temperature=4.0, from_logits=True, **kw):
        super().__init__(**kw)
        self.student, self.teacher = student, teacher
        self.teacher.trainable = False
        hard_loss = keras.losses.get(hard_loss) if isinstance(hard_loss, str) else hard_loss
        # a Keras Loss averages over the batch (scaled for tf.distribute); a plain function is wrapped in one
        self.hard_loss = hard_loss if isinstance(hard_loss, keras.losses.Loss) else \
            _FunctionLoss(hard_loss)
        self.alpha, self.temperature, self.from_logits = float(alpha), float(temperature), from_logits
        self.kl = keras.losses.KLDivergence()

    def call(self, x, training=False):
        return self.student(x, training=training)

    def _logits(self, y):
        return y if self.from_logits else keras.ops.log(keras.ops.clip(y, 1e-7, 1.0))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        t = self.temperature
        hard = self.hard_loss(y, y_pred)
        teacher = keras.ops.softmax(self._logits(self.teacher(x, training=False)) / t)
        student = keras.ops.softmax(self._logits(y_pred) / t)
        # KL(teacher || student) through a Keras loss, whose batch mean is scaled for tf.distribute like
        # the hard loss's (divided by the replica count; the optimizer sums the replicas' gradients)
        soft = self.kl(teacher, student)
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
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return student, _fit_across_workers(trainer, data, int(epochs), strategy, batch_size, shuffle,
                                            validation_data, metrics)
    if isinstance(data, tuple):
        x, y = data
        history = trainer.fit(x, y, epochs=int(epochs), batch_size=batch_size, validation_data=validation_data,
                              verbose=verbose, shuffle=shuffle)
    else:
        history = trainer.fit(data, epochs=int(epochs), validation_data=validation_data, verbose=verbose)
    return student, history


def _fit_across_workers(trainer, data, epochs, strategy, batch_size, shuffle, validation_data, metrics):
    """The training loop under ``MultiWorkerMirroredStrategy``, where Keras 3's ``fit`` does not run (it
    fails reducing the first distributed batch: keras-team/keras#20585). Each replica's loss is its mean
    over its slice of each batch (:func:`spa_keras.data.replica_slices`) weighted by its share, so the gradients the
    optimizer sums across replicas are those of the whole batch's mean loss, as in one process. Returns a
    ``History`` with the mean training loss per epoch."""
    import tensorflow as tf

    if validation_data is not None or metrics:
        raise InvalidArgumentError("spa.finetune under MultiWorkerMirroredStrategy takes no validation_data or "
                                   "metrics (Keras' fit, which computes them, does not run there): evaluate "
                                   "the returned model afterwards")
    if isinstance(data, tuple):
        x, y = data
        data = steady(tf.data.Dataset.from_tensor_slices((x, y)))  # see spa_keras.data.array_batches
        if shuffle:
            data = data.shuffle(len(x), seed=0, reshuffle_each_iteration=True)
        data = data.batch(batch_size or 32)
    batches = strategy.distribute_datasets_from_function(lambda ctx: replica_slices(data, ctx))
    variables = trainer.trainable_variables

    def step(x, y):
        ctx = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            pred = trainer(x, training=True)
            mean = trainer.compute_loss(x=x, y=y, y_pred=pred)  # Keras divides it by the replica count
            local = tf.cast(tf.shape(pred)[0], mean.dtype)
            share = local / ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)
            loss = mean * ctx.num_replicas_in_sync * share
        trainer.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function
    def train(batch):
        per = strategy.run(step, args=tuple(batch))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per, axis=None)

    history = keras.callbacks.History()
    history.set_model(trainer)
    history.on_train_begin()
    for epoch in range(epochs):
        losses = [float(train(batch)) for batch in batches]
        history.on_epoch_end(epoch, {"loss": sum(losses) / max(len(losses), 1)})
    return history
