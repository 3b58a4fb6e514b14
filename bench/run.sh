#!/usr/bin/env bash
# The standard comparison logged in docs/performance.md: SAM2.1-tiny at 1024x1024, K = 1 and 5, FP32
# (random-init weights: latency does not depend on them), through `fssam2 bench` and the PyTorch comparison.
# The runtime runs on the cpu provider and, where openvino is installed, on openvino; PyTorch in FP32 and BF16
# (autocast). Further artifacts directories (e.g. the INT8 export that passed the fidelity gate) run beside FP32:
#   bash bench/run.sh [ARTIFACTS_DIR ...]
# Environment: OUT (default bench-out), QUERIES (20), EPISODES (10), THREADS (default: ORT's / torch's own).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out}
FP32=$OUT/art-fp32-1024
mkdir -p "$OUT"
if [ ! -f "$FP32/manifest.json" ]; then
  python -m calibration.export_cli --model sam2.1_hiera_t --random-init --seed 0 --image-size 1024 --out "$FP32" --quiet
fi
threads=()
if [ -n "${THREADS:-}" ]; then threads=(--threads "$THREADS"); fi
plot=()
if python -c "import matplotlib" 2>/dev/null; then plot=(--plot "$OUT/bench.png"); fi
providers=(cpu)
if python -c "import openvino" 2>/dev/null; then providers+=(openvino); fi
python -m runtime.cli bench --artifacts "$FP32" "$@" --providers "${providers[@]}" --shots 1 5 --queries "${QUERIES:-20}" \
  --warmup 3 "${threads[@]}" --out "$OUT/bench.json" "${plot[@]}"
python -m bench.compare_pytorch --artifacts "$FP32" "$@" --providers "${providers[@]}" --torch-dtype fp32 bf16 --shots 1 5 \
  --episodes "${EPISODES:-10}" --warmup 1 "${threads[@]}" --out "$OUT/compare.json"
echo "bench/run.sh: $OUT/bench.json, $OUT/compare.json${plot:+, $OUT/bench.png}"
