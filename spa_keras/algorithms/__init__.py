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
              "synthetic_steps": 200, "recalibrate_bn": True},
    "reconstruct": {"epochs": (10, 10), "learning_rate": 1e-3, "decay": 1.0, "batch_size": 32,
                    "synthetic_steps": 200, "start": None},
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
    """One run of a post-training algorithm inside :func:`spa_keras.plan`: it gathers the samples, may
    re-score the channels (OBSPA), and equips the finished plan with how it is applied (OBSPA's
    compensation, BatchNorm re-estimation, the reconstruction)."""

    def __init__(self, algorithm, kg, calibration_data=None, samples=None, data_free="bn", options=None,
                 verbose=None):
        import time

        from ..frontends.keras import KerasGraph

        self.algorithm = algorithm
        self.options = check(algorithm, options)
        if not isinstance(kg, KerasGraph):
            raise InvalidArgumentError(f"algorithm {algorithm!r} works on Keras models: convert the ONNX model "
                                       "with spa.from_onnx first")
        if samples is not None and (isinstance(samples, bool) or int(samples) != samples or samples < 1):
            raise InvalidArgumentError(f"calibration_samples must be a positive integer, got {samples!r}")
        if data_free not in SOURCES:
            raise InvalidArgumentError(f"data_free must be one of {SOURCES}, got {data_free!r}")
        self.kg, self.verbose = kg, verbose is not False
        self.calibrated = calibration_data is not None
        self.source = "calibration" if self.calibrated else data_free
        t0 = time.perf_counter()
        self.inputs = inputs_for(kg, calibration_data, samples, data_free, self.options.pop("synthetic_steps"),
                                 self.verbose)
        self.seconds_inputs = time.perf_counter() - t0
        self.obspa = None

    def scores(self, analysis, scores):
        """OBSPA's group scores (``scores``, the criterion's, rank the groups it cannot); the
        reconstruction keeps the criterion's."""
        if self.algorithm == "obspa":
            options = {k: v for k, v in self.options.items() if k != "recalibrate_bn"}
        elif self.options["start"] == "obspa":  # OBSPA chooses, compensates, then phase 2 trains
            options = {k: v for k, v in OPTIONS["obspa"].items() if k not in ("recalibrate_bn", "synthetic_steps")}
            options["batch_size"] = self.options["batch_size"]
        else:
            return scores
        import tensorflow as tf

        from .obspa import OBSPA

        if options["strategy"] is None and tf.distribute.has_strategy():
            options["strategy"] = tf.distribute.get_strategy()  # called inside strategy.scope()
        self.obspa = OBSPA(self.kg, analysis, self.inputs, verbose=self.verbose, **options)
        return self.obspa.scores(scores)

    def finish(self, plan):
        """Record the run in ``plan.settings`` and attach how the plan is applied."""
        plan.settings.update(algorithm=self.algorithm, samples=len(self.inputs[0]), source=self.source,
                             seconds_inputs=round(self.seconds_inputs, 3))
        if self.obspa is not None:
            plan.compensation = self.obspa.compensation(plan)
        if self.algorithm == "reconstruct":
            plan.builder = self._reconstructed
        elif self.options["recalibrate_bn"] and self.calibrated:
            plan.builder = self._recalibrated
        return plan

    def _recalibrated(self, kg, plan):
        from ..backends.keras import apply_plan
        from ..frontends.keras import from_keras
        from .reconstruct import reestimate_batchnorm

        slim = apply_plan(kg, plan, transform=plan.compensation)
        reestimate_batchnorm(from_keras(slim, **kg.options), self.inputs, self.options["batch_size"])
        return slim

    def _reconstructed(self, kg, plan):
        from ..backends.keras import apply_plan
        from .reconstruct import reconstruct

        options = dict(self.options)
        if options.pop("start") == "obspa":
            options["start"] = apply_plan(kg, plan, transform=plan.compensation)
        slim, history = reconstruct(kg, plan, self.inputs, verbose=self.verbose, **options)
        plan.settings["reconstruction_loss"] = history
        return slim


def inputs_for(kg, calibration_data, samples: int | None, data_free: str, steps: int, verbose: bool = False):
    """The samples an algorithm learns from: ``samples`` of the calibration data, or, without data,
    ``samples`` synthetic inputs from ``data_free`` (``"bn"`` or ``"random"``)."""
    from tqdm.auto import tqdm

    from .sources import calibration_inputs, synthetic_inputs

    if calibration_data is not None:
        return calibration_inputs(kg, calibration_data, samples or 512)
    n = samples or 256
    with tqdm(total=n, desc=f"synthetic inputs ({data_free})", unit="sample", disable=not verbose) as bar:
        return synthetic_inputs(kg, n, data_free, steps=steps, progress=bar)


__all__ = ["ALGORITHMS", "OPTIONS", "SOURCES", "PostTraining", "check", "inputs_for"]
