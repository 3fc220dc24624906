#!/usr/bin/env bash
# The CPU proxy study of docs/reproduction.md, exactly as run (2 CPU cores, about 2 hours in all).
# Usage: bash docs/study/run_study.sh [OUT_DIR]   (default runs/study; rerunning resumes finished rows)
set -euo pipefail
OUT=${1:-runs/study}
TRAIN=(resnet-v2-train)
command -v resnet-v2-train >/dev/null || TRAIN=(python -m keras_resnet_v2.training)

# Table 2 (five unit variants), ResNet-56, 3 seeds.
"${TRAIN[@]}" sweep --table 2 --dataset digits --model resnet56 --epochs 15 --batch-size 64 --seeds 3 \
  --run-dir "$OUT/table2" --quiet
# Table 1 (shortcut variants on the original unit), ResNet-32, 3 seeds.
"${TRAIN[@]}" sweep --table 1 --dataset digits --model resnet32 --epochs 15 --batch-size 64 --seeds 3 \
  --run-dir "$OUT/table1" --quiet
# Fig. 1 and Eqn. 5: original vs full pre-activation, per-step training loss at the warm-up lr 0.01
# and ||dL/dx_l|| at initialization and after training.
python -m keras_resnet_v2.training.diagnostics --model resnet164 --batch-size 32 --steps 300 --out "$OUT/fig1/resnet164.png"
python -m keras_resnet_v2.training.diagnostics --model resnet1001 --batch-size 32 --steps 60 --out "$OUT/fig1/resnet1001.png"
