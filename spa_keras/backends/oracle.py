"""The zero-channel oracle's comparison, shared by the Keras and ONNX backends (framework-free)."""

from __future__ import annotations

import numpy as np


def compare(want, got, rtol: float = 1e-3, floor: float = 1e-6) -> dict:
    """``{"passed", "max_abs_diff", "scale"}`` for two lists of outputs: ``passed`` when every output of
    ``got`` equals ``want``'s to ``rtol`` of the largest magnitude in ``want`` (at least ``floor``; the
    ONNX backend passes 1e-30, since untrained deep models can output 1e-14) and the shapes agree."""
    diff, scale = 0.0, 0.0
    for a, b in zip(want, got):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return {"passed": False, "max_abs_diff": float("inf"), "scale": float("nan")}
        diff = max(diff, float(np.max(np.abs(a - b))) if a.size else 0.0)
        scale = max(scale, float(np.max(np.abs(a))) if a.size else 0.0)
    return {"passed": bool(diff <= rtol * max(scale, floor)), "max_abs_diff": diff, "scale": scale}
