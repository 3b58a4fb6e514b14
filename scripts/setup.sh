#!/usr/bin/env bash
# Install fssam2 with the export, train, test, bench, label, serve and ray extras into the current Python environment.
# Order matters: torch is pinned first (anything unpinned pulls a multi-GB CUDA build), and sam2 is
# installed without its dependencies (its torchvision breaks a CPU torch) and without build isolation
# (which would download a second torch just to build it).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet "setuptools>=64" wheel
SAM2_BUILD_CUDA=0 python -m pip install --quiet --no-deps --no-build-isolation "sam2==1.1.0"
python -m pip install --quiet -e ".[export,train,test,bench,openvino,label,serve,ray]"
echo "setup: (pip's note that sam2 requires torchvision is expected: fssam2 uses sam2 without it)"
if python -m pip show --quiet torchvision >/dev/null 2>&1; then
  echo "setup: note: torchvision is installed; if it does not match your torch, 'import peft' fails (fssam2 does not need it)" >&2
fi
python -c "import torch, sam2, onnx, onnxruntime, peft, kornia; print(f'setup: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}')"

# C/C++ runtime (runtime/cpp, tests/test_cpp.py): compiler, CMake, Ninja and headers from Debian (installed
# only if missing, and only as root with apt-get), ONNX Runtime headers + library from npm into third_party/.
# FSSAM2_SKIP_CPP=1 skips this; tests/test_cpp.py then skips (CI sets FSSAM2_REQUIRE_CPP=1 to fail instead).
if [[ "${FSSAM2_SKIP_CPP:-0}" != 1 ]]; then
  missing=()
  for tool in cmake:cmake g++:g++ ninja:ninja-build curl:curl; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
  done
  [[ -f /usr/include/nlohmann/json.hpp ]] || missing+=(nlohmann-json3-dev)
  [[ -f /usr/include/stb/stb_image.h ]] || missing+=(libstb-dev)
  if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
      echo "setup: installing ${missing[*]} (apt-get)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
      echo "setup: the C++ runtime needs ${missing[*]} (apt-get install as root); tests/test_cpp.py will skip" >&2
    fi
  fi
  bash scripts/get_onnxruntime.sh || echo "setup: no ONNX Runtime for the C++ runtime; tests/test_cpp.py will skip" >&2
fi
