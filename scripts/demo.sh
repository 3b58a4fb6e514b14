#!/usr/bin/env bash
# Set up, then run the main job on the default: a random-init SAM2.1 tiny model at 1024x1024,
# exported to artifacts/ (four ONNX graphs + manifest.json) and run 2-shot on a generated episode.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python -m runtime.tools.synthetic --out example --shots 2
fssam2-export --model sam2.1_hiera_t --random-init --seed 0 --precision fp32 --out artifacts --overwrite
fssam2 info --artifacts artifacts
fssam2 segment --artifacts artifacts \
  --support example/support0.png example/support0_mask.png \
  --support example/support1.png example/support1_mask.png \
  --query example/query.png --out example/query_pred.png --overlay example/query_overlay.png --profile
