"""What several benchmarks share (each script runs with this folder on its path)."""

from __future__ import annotations

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_version():
    """The commit of the spa_keras being measured (``+`` when its work tree has changes), for each result
    row's ``code`` field; None without git."""
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "spa_keras"], capture_output=True,
                               text=True).stdout
        return rev.strip() + ("+" if dirty.strip() else "")
    except OSError:
        return None


def onednn_on() -> bool | None:
    """Whether TensorFlow runs its oneDNN kernels in this process (None where it cannot say)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # noqa: PLC0415 - TensorFlow's own flag

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None
