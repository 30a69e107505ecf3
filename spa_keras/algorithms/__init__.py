"""Post-training algorithms: OBSPA (structured Optimal Brain Surgeon with weight compensation) and the
two-phase reconstruction, with the inputs they learn from (calibration samples or synthetic ones).

This module itself imports no TensorFlow (the configuration checks it before a model is loaded)."""

from __future__ import annotations

from ..errors import InvalidArgumentError

ALGORITHMS = ("obspa", "reconstruct")
SOURCES = ("bn", "random")  # data-free sources of synthetic inputs (see .sources)

#: options each algorithm takes through ``algorithm_options`` (with their defaults)
OPTIONS = {
    "obspa": {"damp": 1e-2, "batch_size": 32, "max_dim": 2048, "blocks": 32, "strategy": None,
              "synthetic_steps": 200, "recalibrate_bn": True, "update": "obs", "rows_per_dim": 64},
    "reconstruct": {"epochs": (10, 10), "learning_rate": 1e-3, "decay": 1.0, "batch_size": 32,
                    "synthetic_steps": 200, "start": None, "strategy": None},
}


def check(algorithm, options: dict | None) -> dict:
    """The algorithm's options with defaults filled in; an error for an unknown name or option."""
    if algorithm not in ALGORITHMS:
        raise InvalidArgumentError(f"algorithm must be None or one of {ALGORITHMS}, got {algorithm!r}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS[algorithm]))
    if unknown:
        raise InvalidArgumentError(
            f"algorithm {algorithm!r} has no option {unknown[0]!r}; its options are {sorted(OPTIONS[algorithm])}"
        )
    return {**OPTIONS[algorithm], **options}


class PostTraining:
    """One run of a post-training algorithm for :func:`spa_keras.plan`/:func:`spa_keras.prune`: it
    gathers the samples, may re-score the channels (OBSPA), gives the finished plan its compensation
    (arrays: OBSPA's re-fitted consumers, or the reconstruction's phase-1 weights), and, once the plan is
    written, finishes the slim model (:meth:`after_apply`: BatchNorm re-estimation, phase 2).

    ``model`` is the frontend's graph object (:class:`~spa_keras.frontends.base.ModelView`): OBSPA runs on
    any (Keras, ONNX); the reconstruction needs one that trains (Keras).
    """

    def __init__(self, algorithm, model, calibration_data, samples, data_free, options, verbose):
        import time

        self.algorithm = algorithm
        self.options = check(algorithm, options)
        if algorithm == "reconstruct" and not model.trainable:
            raise InvalidArgumentError(f"algorithm 'reconstruct' trains the model, and {model.kind} models cannot "
                                       "be trained here: use algorithm='obspa', or convert with spa.from_onnx first")
        self.model, self.verbose = model, verbose is not False
        self.calibrated = calibration_data is not None
        self.source = "calibration" if self.calibrated else data_free
        t0 = time.perf_counter()
        self.inputs = inputs_for(model, calibration_data, samples, data_free, self.options["synthetic_steps"],
                                 self.verbose)
        self.seconds_inputs = time.perf_counter() - t0
        self.obspa = None

    def scores(self, analysis, scores):
        """OBSPA's group scores (``scores``, the criterion's, rank the groups it cannot); the
        reconstruction keeps the criterion's."""
        if self.algorithm == "obspa":
            options = dict(self.options)
        elif self.options["start"] == "obspa":  # OBSPA chooses, compensates, then phase 2 trains
            options = {"batch_size": self.options["batch_size"]}
        else:
            return scores
        from .obspa import OBSPA

        options["strategy"] = self._strategy()
        self.obspa = OBSPA(self.model, analysis, self.inputs, verbose=self.verbose, **options)
        return self.obspa.scores(scores)

    def finish(self, plan):
        """Record the run in the plan's settings and give it its compensation."""
        plan.record(algorithm=self.algorithm, samples=len(self.inputs[0]), source=self.source,
                    seconds_inputs=round(self.seconds_inputs, 3))
        if self.algorithm == "reconstruct" and self.obspa is None:
            from .reconstruct import phase1

            o = self.options
            arrays, history = phase1(self.model, plan, self.inputs, self._epochs()[0], o["learning_rate"],
                                     o["decay"], o["batch_size"], self.verbose, self._strategy())
            plan.compensate(arrays).record(reconstruction_loss={"phase1": history, "phase2": []})
        elif self.obspa is not None:
            plan.compensate(self.obspa.compensation(plan))
        return plan

    def _strategy(self):
        """The ``strategy`` option, or the one whose scope the call runs in (``None``: one process)."""
        import tensorflow as tf

        if self.options["strategy"] is None and tf.distribute.has_strategy():
            return tf.distribute.get_strategy()  # called inside strategy.scope()
        return self.options["strategy"]

    def _epochs(self):
        e = self.options["epochs"]
        return (e, e) if isinstance(e, int) else tuple(e)

    def after_apply(self, plan, slim) -> None:
        """Finish the written model in place (``slim``, its frontend graph object): re-estimate its
        BatchNorm statistics on the samples (with calibration data), then the reconstruction's phase 2."""
        from .reconstruct import phase2, reestimate_batchnorm

        batch = self.options["batch_size"]
        if self.algorithm == "reconstruct":
            reestimate_batchnorm(slim, self.inputs, batch)
            o = self.options
            history = phase2(self.model, slim, plan, self.inputs, self._epochs()[1], o["learning_rate"], batch,
                             self.verbose, self._strategy())
            losses = dict(plan.settings.get("reconstruction_loss") or {"phase1": []})
            plan.record(reconstruction_loss={**losses, "phase2": history})
        elif self.options["recalibrate_bn"] and self.calibrated and slim.traceable:
            reestimate_batchnorm(slim, self.inputs, batch)


def progress(total, desc: str, unit: str, verbose: bool):
    """A progress bar for the algorithms' long work: on stderr, gone once done (so that what the caller
    prints next, a table, starts on a clean line), hidden when ``verbose`` is False."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not verbose, leave=False)


def inputs_for(model, calibration_data, samples: int | None, data_free: str, steps: int, verbose: bool = False):
    """The samples an algorithm learns from: ``samples`` of the calibration data, or, without data,
    ``samples`` synthetic inputs from ``data_free`` (``"bn"`` or ``"random"``)."""
    from .sources import calibration_inputs, synthetic_inputs

    if calibration_data is not None:
        return calibration_inputs(model, calibration_data, samples or 512)
    n = samples or 256
    with progress(n, f"synthetic inputs ({data_free})", "sample", verbose) as bar:
        return synthetic_inputs(model, n, data_free, steps=steps, progress=bar)


__all__ = ["ALGORITHMS", "OPTIONS", "SOURCES", "PostTraining", "check", "inputs_for", "progress"]
