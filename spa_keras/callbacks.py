"""Pruning during training: soft channel masks on a schedule, group sparsity, and ``strip``.

``PruningCallback`` re-scores the model every ``frequency`` steps (once per epoch by default) and
zeroes the channels the current plan removes; between updates the weights train freely, so a channel
that becomes important again can come back (soft filter pruning). ``strip(model)`` then removes, for
real, every channel whose writing parameters are all zero: the slim model's outputs equal the masked
model's. Because ``strip`` reads the zeros from the weights and the schedule reads the optimizer's step
counter, both survive saving and loading a checkpoint mid-training.
"""

from __future__ import annotations

import numpy as np
import keras

from .backends.keras import apply_plan, zero_in_place
from .criteria import get as get_criterion
from .criteria.base import slice_scores
from .errors import InvalidArgumentError
from .frontends.keras import from_keras
from .graph import BIAS, WEIGHT, analyse
from .config import resolve
from .metrics import count_macs, count_params
from .plan import PruningPlan, GroupIndex

SCHEDULES = ("constant", "linear", "polynomial")


def schedule_fraction(schedule, progress: float, power: float = 3.0) -> float:
    """How much of the final pruning applies at ``progress`` in [0, 1] of the schedule.

    ``constant``: all of it from the start; ``linear``: in proportion; ``polynomial``: fast at first and
    slow at the end, ``1 - (1 - progress) ** power`` (tfmot's PolynomialDecay); or a callable.
    """
    progress = float(min(max(progress, 0.0), 1.0))
    if callable(schedule):
        return float(schedule(progress))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return progress
    if schedule == "polynomial":
        return 1.0 - (1.0 - progress) ** power
    raise InvalidArgumentError(f"schedule must be one of {SCHEDULES} or a callable, got {schedule!r}")


class PruningCallback(keras.callbacks.Callback):
    """Prune during ``fit`` with soft masks that zero whole channel groups.

    Args:
        config: a :class:`~spa_keras.PruningConfig` (or its dict); keyword arguments are its options
            (``ratio``, ``target_macs``, ``target_params``, ``criterion``, ...: ``docs/options.md``) and
            override it. The final pruning is ``target_macs`` or ``target_params`` when one is set,
            else ``ratio``.
        schedule: ``"constant"``, ``"linear"``, ``"polynomial"`` (default) or ``fn(progress) -> fraction``.
        begin_step, end_step: optimizer steps where the schedule starts and reaches the target
            (default: 0 and the last step of this ``fit``).
        frequency: re-score and re-mask every this many steps; ``None``: at the end of every epoch.
        power: the polynomial schedule's exponent.

    Logs ``pruning_macs_fraction``, ``pruning_params_fraction`` and ``pruning_channels_removed`` to the
    History and, when a TensorBoard callback comes after this one, to TensorBoard.

    >>> import spa_keras as spa
    >>> cb = spa.callbacks.PruningCallback(target_params=0.5, criterion="l1")
    >>> cb.config.target_params, cb.config.criterion
    (0.5, 'l1')
    >>> # model.fit(ds, epochs=10, callbacks=[cb]); slim = spa.strip(model)
    """

    def __init__(self, config=None, *, schedule="polynomial", begin_step: int = 0, end_step: int | None = None,
                 frequency: int | None = None, power: float = 3.0, **options):
        super().__init__()
        self.config = resolve(config, "PruningCallback", **options)
        schedule_fraction(schedule, 0.0, power)  # validates
        if frequency is not None and (int(frequency) != frequency or frequency < 1):
            raise InvalidArgumentError(f"frequency must be a positive number of steps, got {frequency!r}")
        self.schedule, self.power = schedule, power
        self.begin_step, self.end_step, self.frequency = int(begin_step), end_step, frequency
        self.plan = None
        self._kg = None
        self._last = {}

    def get_config(self):
        return dict(config=self.config.get_config(), schedule=self.schedule, begin_step=self.begin_step,
                    end_step=self.end_step, frequency=self.frequency, power=self.power)

    # ---- schedule ----------------------------------------------------------------------------------
    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy()) if self.model.optimizer is not None else 0

    def _end(self) -> int:
        if self.end_step is not None:
            return int(self.end_step)
        p = self.params or {}
        total = (p.get("steps") or 1) * (p.get("epochs") or 1)
        return max(self.begin_step + 1, int(total))

    def current_fraction(self) -> float:
        """How much of the final pruning applies now."""
        step = self._step()
        if step < self.begin_step:
            return 0.0
        progress = (step - self.begin_step) / max(self._end() - self.begin_step, 1)
        return schedule_fraction(self.schedule, progress, self.power)

    # ---- masking -----------------------------------------------------------------------------------
    def _now(self, f: float):
        """The config of the pruning that applies at fraction ``f`` of the schedule."""
        cfg = self.config
        for name, counter in (("target_macs", count_macs), ("target_params", count_params)):
            t = getattr(cfg, name)
            if t is not None:
                t = t if t <= 1 else t / counter(self._kg.graph)
                return cfg.replace(**{name: 1.0 - (1.0 - t) * f})
        return cfg.replace(ratio=cfg.ratio * f)

    def update(self) -> None:
        """Re-score the model and zero the channels the current plan removes."""
        from .api import _plan

        if self._kg is None:
            self._kg = from_keras(self.model, residual_stream=self.config.residual_stream)
        f = self.current_fraction()
        if f <= 0:
            return
        p = _plan(self._kg, self._now(f), verbose=False)[0]
        zero_in_place(self._kg, p)
        self.plan = p
        g = self._kg.graph
        self._last = {
            "pruning_macs_fraction": count_macs(g, p) / max(count_macs(g), 1),
            "pruning_params_fraction": count_params(g, p) / max(count_params(g), 1),
            "pruning_channels_removed": float(p.n_removed),
        }

    def on_train_batch_end(self, batch, logs=None):
        if self.frequency is not None and self._step() % self.frequency == 0:
            self.update()

    def on_epoch_end(self, epoch, logs=None):
        if self.frequency is None:
            self.update()
        if logs is not None:
            logs.update(self._last)

    def on_train_end(self, logs=None):
        self.update()


class GroupSparsity(keras.callbacks.Callback):
    """DepGraph's group sparse learning: pull whole channel groups towards zero during training, harder
    for the less important ones, so that pruning them afterwards costs little.

    After every batch each channel's parameter slices (producers and consumers alike) shrink by
    ``1 - lr * reg * gamma``, where ``gamma = alpha ** ((max - s) / (max - min))`` grows from 1 for the
    group's most important channel (score ``s``, re-computed every epoch) to ``alpha`` for its least.
    That is a step of an L2 group penalty whose strength rises as importance falls.
    """

    def __init__(self, reg: float = 1e-4, alpha: float = 4.0, criterion=None):
        super().__init__()
        criterion = resolve(None, "GroupSparsity", **({} if criterion is None else {"criterion": criterion})).criterion
        if reg < 0 or alpha < 1:
            raise InvalidArgumentError("GroupSparsity needs reg >= 0 and alpha >= 1")
        self.reg, self.alpha, self.criterion = float(reg), float(alpha), criterion
        self._kg = self._analysis = None
        self._factors = []

    def on_train_begin(self, logs=None):
        self._kg = from_keras(self.model)
        self._analysis = analyse(self._kg.graph)

    def on_epoch_begin(self, epoch, logs=None):
        a = self._analysis
        scores = get_criterion(self.criterion)(a, self._kg.weight, normalization=None)
        gamma = np.ones(a.n_classes)
        for g in a.groups:
            s = scores[g.classes]
            lo, hi = np.nanmin(s), np.nanmax(s)
            if hi > lo:
                gamma[g.classes] = self.alpha ** ((hi - s) / (hi - lo))
        gamma[~np.isfinite(gamma)] = 1.0
        self._factors = []
        for node in self._kg.graph.nodes:
            for p in node.params:
                if p.role not in (WEIGHT, BIAS) or not p.axes:
                    continue
                for axis in p.axes:
                    cls = a.class_of[a.axis_elements(node, p, axis)]
                    shape = [1] * len(p.shape)
                    shape[axis] = -1
                    g = np.where(cls == a.fixed_class, 0.0, gamma[cls]).reshape(shape)
                    self._factors.append((self._kg.variables[p.key], g.astype("float32")))

    def on_train_batch_end(self, batch, logs=None):
        lr = float(np.asarray(self.model.optimizer.learning_rate))
        for var, g in self._factors:
            var.assign(var * (1.0 - lr * self.reg * g))


def strip(model) -> keras.Model:
    """The physically slim model: every channel whose writing parameters (kernel output slices,
    biases, BN gamma/beta/mean) are all exactly zero is removed; outputs are unchanged.

    >>> # model.fit(..., callbacks=[PruningCallback(ratio=0.5)]); slim = spa.strip(model)
    """
    kg = from_keras(model)
    a = analyse(kg.graph)

    def largest(w, p):
        return {ax: np.abs(np.moveaxis(w, ax, 0).reshape(w.shape[ax], -1)).max(1) if w.ndim > 1 else np.abs(w)
                for ax, ref in p.axes.items() if ref.side == "out"}

    _, count, peak = slice_scores(a, lambda p: np.asarray(kg.weight(p.key)), largest,
                                  select=lambda p: p.role in (WEIGHT, BIAS))
    zero = (count > 0) & (peak == 0)
    zero[a.fixed_class] = False
    removed = np.zeros(a.n_classes, bool)
    index = GroupIndex(a)
    for g in a.groups:
        candidates = g.classes[zero[g.classes]]
        removed[index.limit(g.id, candidates, min(len(candidates), g.size - 1))] = True
    return apply_plan(kg, PruningPlan(a, removed, {"stripped": True}, source=kg))
