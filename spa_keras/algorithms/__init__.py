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
                    "synthetic_steps": 200},
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


__all__ = ["ALGORITHMS", "OPTIONS", "SOURCES", "check", "inputs_for"]
