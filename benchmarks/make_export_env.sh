#!/usr/bin/env bash
# The export environment of benchmarks/onnx_zoo.py: a virtual environment with torch 2.14.1 and
# torchvision 0.29.1 (CUDA builds that bring triton), onnxscript for the dynamo exporter and torch-pruning
# (benchmarks/zoo.py times it here), and no TensorFlow. torchvision cannot be imported beside the
# project's CPU torch 2.13, and triton imported after TensorFlow kills the process, so the models are
# exported here, in a process of their own.
#
#   bash benchmarks/make_export_env.sh [VENV]     # default ~/.cache/spa_keras/torchvision-venv
#
# Idempotent: an environment that already imports torchvision and onnxscript is left as it is.
set -euo pipefail
VENV="${1:-${SPA_EXPORT_VENV:-$HOME/.cache/spa_keras/torchvision-venv}}"
PY="${PYTHON:-python3}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import torchvision, onnxscript, onnx, torch_pruning" 2>/dev/null; then
    echo "$VENV is ready"
    exit 0
fi
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" onnx onnxscript
"$VENV/bin/python" -m pip install --quiet --no-deps "torch-pruning==1.6.1"  # benchmarks/zoo.py times it here
"$VENV/bin/python" -c "import torch, torchvision, onnxscript; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'onnxscript', onnxscript.__version__)"
echo "$VENV is ready"
