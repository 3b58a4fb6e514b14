#!/usr/bin/env bash
# Set up, then run the main job on the default: the shipped learned model (models/fssam2-shapes-t128, SAM2.1-tiny
# trained by this project on its shapes benchmark, 128x128), exported to artifacts/ (four ONNX graphs +
# manifest.json) and run 2-shot on a held-out episode of a class it never saw in training, whose query also shows
# objects of other classes. Prints the mask's IoU with the query's ground truth.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=models/fssam2-shapes-t128/model.safetensors
python -m runtime.tools.shapes --out example --shots 2
fssam2-export --model sam2.1_hiera_t --checkpoint "$MODEL" --image-size 128 --precision fp32 --out artifacts --overwrite --quiet
fssam2 info --artifacts artifacts
fssam2 segment --artifacts artifacts \
  --support example/support0.png example/support0_mask.png \
  --support example/support1.png example/support1_mask.png \
  --query example/query.png --truth example/query_mask.png \
  --out example/query_pred.png --overlay example/query_overlay.png --profile
