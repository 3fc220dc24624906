#!/usr/bin/env bash
# Copies what docs/reproduction.md cites from a study's OUT_DIR into docs/study/ (no checkpoints or models).
# Usage: bash docs/study/collect.sh runs/study
set -euo pipefail
OUT=$1
DEST=$(dirname "$0")
for table in table1 table2; do
  [ -d "$OUT/$table" ] || continue
  mkdir -p "$DEST/$table"
  cp "$OUT/$table"/results.{csv,md} "$OUT/$table/curves.png" "$DEST/$table/"
  for run in "$OUT/$table"/table*_seed*; do
    mkdir -p "$DEST/$table/$(basename "$run")"
    cp "$run"/history.csv "$run"/config.json "$DEST/$table/$(basename "$run")/"
  done
done
if [ -d "$OUT/fig1" ]; then mkdir -p "$DEST/fig1" && cp "$OUT"/fig1/*.{png,json} "$DEST/fig1/"; fi
