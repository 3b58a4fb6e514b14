#!/usr/bin/env bash
# Install fssam2 with the export and test extras into the current Python environment.
# Order matters: torch is pinned first (anything unpinned pulls a multi-GB CUDA build), and sam2 is
# installed without its dependencies (its torchvision breaks a CPU torch) and without build isolation
# (which would download a second torch just to build it).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet "setuptools>=64" wheel
SAM2_BUILD_CUDA=0 python -m pip install --quiet --no-deps --no-build-isolation "sam2==1.1.0"
python -m pip install --quiet -e ".[export,test,bench]"
echo "setup: (pip's note that sam2 requires torchvision is expected: fssam2 uses sam2 without it)"
if python -m pip show --quiet torchvision >/dev/null 2>&1; then
  echo "setup: note: torchvision is installed; if it does not match your torch, 'import peft' fails (fssam2 does not need it)" >&2
fi
python -c "import torch, sam2, onnx, onnxruntime; print(f'setup: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}')"
