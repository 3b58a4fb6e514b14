#!/usr/bin/env bash
# First thing to run on a new GPU machine (desktop GPU or Jetson), from a checkout with fssam2 installed
# (scripts/setup.sh, plus onnxruntime-gpu and/or TensorRT + cuda-python + polygraphy: docs/gpu-jetson.md).
#   1. prints the machine (GPU, driver, compute capability; Jetson: L4T release, nvpmodel, jetson_clocks)
#      and the versions of onnxruntime (with its providers), TensorRT, cuda-python, polygraphy, torch;
#   2. exports a random-init SAM2.1 tiny at 1024x1024 (FP32) to $WORK/artifacts;
#   3. if TensorRT is importable: builds engines for K = 1..$MAX_SHOTS (each compared with its ONNX graph);
#   4. K = 1 and 5, on an episode whose CPU reference mask is judgeable (1-99 % foreground): every provider judged
#      against the FP32 CPU runtime with the fidelity gate's measures (IoU, logits correlation, sign agreement,
#      relative error, non-finite values, scalar heads), and per-module latency (ms/call). Exits non-zero if a check failed.
# Environment: WORK (default gpu_check/), SIZE (1024), MAX_SHOTS (8), REPEATS (10).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-gpu_check}
SIZE=${SIZE:-1024}
MAX_SHOTS=${MAX_SHOTS:-8}
REPEATS=${REPEATS:-10}
mkdir -p "$WORK"

echo "== machine"
[ -f /etc/nv_tegra_release ] && echo "jetson: $(head -1 /etc/nv_tegra_release)"
python - <<'PY'
import importlib, importlib.metadata as md
for dist in ("onnxruntime", "onnxruntime-gpu", "tensorrt", "cuda-python", "polygraphy", "torch"):
    try:
        print(f"{dist}: {md.version(dist)}")
    except md.PackageNotFoundError:
        pass
import onnxruntime
print("onnxruntime providers:", ", ".join(onnxruntime.get_available_providers()))
try:
    import tensorrt
    print("tensorrt module:", tensorrt.__version__)
except ImportError as e:
    print("tensorrt: not importable:", e)
PY

echo "== export: sam2.1_hiera_t, random-init, ${SIZE}px, fp32 -> $WORK/artifacts"
python -m calibration.export_cli --model sam2.1_hiera_t --random-init --seed 0 --image-size "$SIZE" \
  --out "$WORK/artifacts" --overwrite --quiet

if python -c "import tensorrt" 2>/dev/null; then
  echo "== TensorRT engines (K = 1..$MAX_SHOTS), each compared with its ONNX graph"
  python -m fssam2_export.engines --artifacts "$WORK/artifacts" --max-shots "$MAX_SHOTS" --quiet
else
  echo "== TensorRT is not importable: no engines built; provider tensorrt-native is skipped"
fi

echo "== parity vs the FP32 CPU runtime and per-module latency"
python -m fssam2_export.gpu_check --artifacts "$WORK/artifacts" --shots 1 5 --repeats "$REPEATS"
