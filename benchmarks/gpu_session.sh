#!/usr/bin/env bash
# One prepared run on the GPU machine of the `device` tool (15 minutes of device time per session,
# 10 per command, at most 8 files back from $OUT). Every step has its own time limit, so a slow or
# failing step still leaves the logs of the others under $OUT.
#
# Here, first:   scripts/device_wheels.sh            (captum, hydra-core, omegaconf, antlr4 -> .whl/)
# Then one device `run` with
#   carry:   [".whl", "data/mnist/train-images-idx3-ubyte", "data/mnist/train-labels-idx1-ubyte",
#             "data/mnist/t10k-images-idx3-ubyte", "data/mnist/t10k-labels-idx1-ubyte"]
#   command: MODE=bench bash benchmarks/gpu_session.sh      (timeout_s 560)
#
# MODE=bench  bench_train (mnist64_fast and plain mnist64 against the reference), bench_gradcam,
#             and benchmarks/paper_pipeline.sh (25 + 25 epochs with analysis and curation).
# MODE=parity mnist64 (plain fp32) and mnist64_fast on the same seed (SEED, default 0), each
#             trained 25 epochs and analysed with FID at every epoch: the fast path's FID range.
# MODE=study  the evidence study `python -m dcgan_xai.study +study=$STUDY` (claim: the paper's
#             recipe, the default; claim_noise: with instance noise) over SEEDS (default
#             0,1,2,3,4) on the GPU fast path, curation off unless CURATE=true; REPORT.md and the
#             CSVs come back. Its train_overrides (the fast path) replace the study config's
#             own. Arguments after the script's name are further study overrides
#             (e.g. analysis.fid_samples=5000).
# Files back (<= 8): summary.txt and one log per step, plus the pipeline's or the study's tables.
set -uo pipefail
MODE=${MODE:-bench}
OUT=${OUT:-outputs/gpu_session}
WORK=${WORK:-/tmp/dcgan_xai_gpu}
PY=${PYTHON:-python3}
export PYTHON=$PY  # benchmarks/paper_pipeline.sh runs its steps with it
mkdir -p "$OUT" "$WORK"
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  $PY -c "import torch, lightning, captum, hydra; print('torch', torch.__version__, 'lightning', lightning.__version__, 'captum', captum.__version__, 'hydra', hydra.__version__)" 2>&1
} | tee "$SUMMARY"

# step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record rc and time.
step() {
  local name=$1 limit=$2 t0
  shift 2
  t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc, $(($(date +%s) - t0)) s (limit $limit s)" | tee -a "$SUMMARY"
  grep -E "images/s|ratio|per epoch|s \(|^(train|analyze|curate|retrain|analyze2|compare|total) " "$OUT/$name.log" | tee -a "$SUMMARY"
}

case "$MODE" in
bench)
  step bench_train_fast 90 $PY -m benchmarks.bench_train --experiment mnist64_fast --steps 200 --workers 8
  step bench_train_plain 60 $PY -m benchmarks.bench_train --experiment mnist64 --steps 200 --workers 8
  step bench_gradcam 90 $PY -m benchmarks.bench_gradcam
  step paper_pipeline 270 bash benchmarks/paper_pipeline.sh "$WORK/pipeline"
  cp "$WORK/pipeline/baseline/analysis/selection.md" "$OUT/pipeline_baseline_selection.md" 2>/dev/null
  cp "$WORK/pipeline/curated/analysis/selection.md" "$OUT/pipeline_curated_selection.md" 2>/dev/null
  ;;
study)
  seeds=${SEEDS:-0,1,2,3,4}
  study=${STUDY:-claim}
  step study "${STUDY_LIMIT:-540}" $PY -m dcgan_xai.study +study="$study" out_dir="$WORK/studies" \
    "seeds=[$seeds]" curate="${CURATE:-false}" \
    'train_overrides=["data.on_device=true","model.channels_last=true","model.compile=true","trainer.precision=bf16-mixed"]' "$@"
  for f in REPORT.md regrets.csv variants.csv; do cp "$WORK/studies/$study/$f" "$OUT/study_$f" 2>/dev/null; done
  ;;
parity)
  # The fast path must reach the plain path's FID range on the same seed: train both, analyse both.
  for exp in mnist64 mnist64_fast; do
    step "train_$exp" 240 $PY -m dcgan_xai.train +experiment=$exp seed=${SEED:-0} \
      hydra.run.dir="$WORK/parity/$exp" trainer.enable_progress_bar=false
    step "analyze_$exp" 90 $PY -m dcgan_xai.analyze run_dir="$WORK/parity/$exp"
    cp "$WORK/parity/$exp/analysis/selection.md" "$OUT/parity_${exp}_selection.md" 2>/dev/null
  done
  ;;
*)
  echo "MODE=$MODE is not allowed; allowed: bench, study, parity" >&2
  exit 2
  ;;
esac
