#!/usr/bin/env bash
# The whole paper pipeline on one GPU, timed: train 25 epochs with the callback, analyse with FID
# at every epoch, curate, retrain 25 epochs without the flagged images, analyse, compare.
#   benchmarks/paper_pipeline.sh [OUT_DIR] [extra train overrides...]
# Target (issue "Performance"): under 5 minutes in all on an H100/H200.
set -euo pipefail
OUT=${1:-outputs/paper_pipeline}
shift || true
PY=${PYTHON:-python}
EXP=${EXPERIMENT:-mnist64_fast}
since() { awk -v t0="$1" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }'; }
start=$(date +%s.%N)
step() {
  local name=$1
  shift
  local t0
  t0=$(date +%s.%N)
  "$@"
  printf '%-10s %7s s\n' "$name" "$(since "$t0")" | tee -a "$OUT.times"
}
mkdir -p "$(dirname "$OUT")"
: >"$OUT.times"
step train $PY -m dcgan_xai.train experiment="$EXP" hydra.run.dir="$OUT/baseline" trainer.enable_progress_bar=false "$@"
step analyze $PY -m dcgan_xai.analyze run_dir="$OUT/baseline"
step curate $PY -m dcgan_xai.curate run_dir="$OUT/baseline" epoch=selected name=pipeline progress=false
step retrain $PY -m dcgan_xai.train experiment="$EXP" hydra.run.dir="$OUT/curated" trainer.enable_progress_bar=false \
  data.exclude="$OUT/baseline/curation/pipeline/manifest.csv" "$@"
step analyze2 $PY -m dcgan_xai.analyze run_dir="$OUT/curated"
step compare $PY -m dcgan_xai.aggregate "compare=[$OUT/baseline,$OUT/curated]" out_dir="$OUT/compare"
printf '%-10s %7s s\n' total "$(since "$start")" | tee -a "$OUT.times"
