"""Every script in examples/ runs in its short smoke mode."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(f for f in os.listdir(os.path.join(HERE, "examples")) if f.endswith(".py"))
EXPECT = {"prune_keras_application.py": "saved and reloaded", "fashion_mnist_any_time.py": "during_training",
          "torch_onnx_to_serving.py": "served through TF Serving signature: ok"}
NEEDS = {"torch_onnx_to_serving.py": "torch"}


def test_every_example_has_an_expectation():
    assert set(EXAMPLES) == set(EXPECT)


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_runs_in_smoke_mode(script):
    if script in NEEDS:
        pytest.importorskip(NEEDS[script])
    # the scripts import this checkout's spa_keras, not whichever copy is installed
    path = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=path)
    r = subprocess.run([sys.executable, os.path.join(HERE, "examples", script), "--smoke"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert EXPECT[script] in r.stdout
