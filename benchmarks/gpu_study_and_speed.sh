#!/usr/bin/env bash
# The GPU set in one call of about 9 minutes: the speed figures first, then the paper-size study
# (conf/study/claim_gpu2.yaml, plan studies/claim_gpu2/PLAN.md; STUDY=<name> for another)
# and the README's main command, each step with its own time limit so that one
# failure leaves the others' results.
#
# On a GPU machine without internet access: put the four raw MNIST files in data/mnist and the
# wheels that machine lacks in .whl/ (scripts/device_wheels.sh fetches captum, hydra-core,
# omegaconf, antlr4, hydra-joblib-launcher and joblib for Python 3.12), then
#     OUT=<results dir> bash benchmarks/gpu_study_and_speed.sh
# DRY_RUN=1 runs every step on the same code path at smoke size, on the CPU, in a few minutes:
# run it before spending GPU time. ONLY=speed runs the speed steps alone (about 3 minutes);
# ONLY=study the study alone, with about 8 minutes of training (TRAIN_S=480). A study stopped by
# its limit resumes where it stopped when run again on the same machine (its checkpoints stay
# under $WORK while the machine is kept). A fresh machine per sitting: SITTING=<seeds> trains
# whole runs of those seeds only (AT_ONCE=1: trained at once in one process); commit the returned tables under studies/$STUDY/ and the next
# sitting (SITTING=<the next seeds>) carries them, so its report covers every seed trained so far.
#
# Results under $OUT (small files only, at most 8): summary.txt (every step's time and key lines),
# study_REPORT.md, study_quality.csv and study_scores.csv (the study's raw tables: rebuild the
# report anywhere with `python -m dcgan_xai.study +study=$STUDY report_only=true` after copying
# them to studies/$STUDY/quality.csv, scores.csv), study.json, study_curation.csv (where the study
# curates), fid_by_run.png, and logs.tar.gz
# (every step's log, the study's outcome and decision tables, each job's status).
set -uo pipefail
OUT=${OUT:-outputs/gpu_study_and_speed}
WORK=${WORK:-/tmp/dcgan_xai_gpu}
PY=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}
ONLY=${ONLY:-all}
STUDY_NAME=${STUDY:-claim_gpu2}
case "$ONLY" in all | speed | study) ;; *) echo "ONLY=$ONLY is not allowed; allowed: all, speed, study" >&2; exit 2 ;; esac
mkdir -p "$OUT" "$WORK/logs"
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the commit the study's tables are stamped with: COMMIT=<hash> where the copy has no .git
export DCGAN_XAI_COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
SUMMARY="$OUT/summary.txt"
LOGS="$WORK/logs"
{
  date -u
  echo "DRY_RUN=$DRY_RUN"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
  $PY -c "import torch, lightning, captum, hydra, torchmetrics; print('torch', torch.__version__, 'lightning', lightning.__version__, 'captum', captum.__version__, 'hydra', hydra.__version__, 'torchmetrics', torchmetrics.__version__, 'cuda', torch.cuda.is_available())" 2>&1
  nproc
} | tee "$SUMMARY"

# step NAME SECONDS COMMAND...: run with a time limit (SIGTERM, then SIGKILL 20 s later), log to
# $LOGS/NAME.log, record the exit code, the time and the log's key lines in summary.txt.
step() {
  local name=$1 limit=$2 t0
  shift 2
  t0=$(date +%s)
  timeout -k 20 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $(($(date +%s) - t0)) s (limit $limit s)" | tee -a "$SUMMARY"
  grep -E "images/s|ratio|per epoch|s \(|trained |stopped|failed|finished|confirms|refutes|inconclusive|classifier|difference|Error|error:" "$LOGS/$name.log" | tail -40 | tee -a "$SUMMARY"
}

if [ "$DRY_RUN" = 1 ]; then
  JOBS=2
  STUDY_ARGS=("experiments=[smoke]" "seeds=[0,1]" analysis.fid_samples=200
    train_timeout_s=240 analysis.classifier_epochs=3
    'train_overrides=["trainer.max_epochs=3","speed.on_device=true","speed.channels_last=true","trainer.precision=bf16-mixed","trainer.log_every_n_steps=50","callbacks.quality.enabled=true","callbacks.quality.fid_samples=200","callbacks.quality.fid_draws=2","callbacks.gradcam.layers=[block1,block2,block3]","callbacks.gradcam.methods=[gradcam,gradcam_pre,gradcam_conv,hirescam]","callbacks.gradcam.bn_modes=[batch,eval]"]')
  STUDY_LIMIT=300
  PREPARE_LIMIT=400  # the classifier on full MNIST: minutes on a CPU, seconds on a GPU
  MAIN_ARGS=(trainer.accelerator=cpu trainer.limit_train_batches=3 trainer.max_epochs=2)
  MAIN_LIMIT=120
  BENCH_TRAIN=(--steps 2 --warmup 1 --batch 32 --workers 2 --experiment smoke --config auto=smoke
    --config eager_bf16=smoke,speed.on_device=true,speed.channels_last=true,trainer.precision=bf16-mixed,speed.cuda_graph=false)
  BENCH_GRAPH=(--batches 16,32 --steps 3 --warmup 2 --width 8)
  BENCH_SEEDS=(--seeds 3 --batch 16 --steps 3 --warmup 2 --width 8 --train-steps 4)
  BENCH_GRADCAM=(--images 512 --fid-samples 200 --train-steps 2)
  PROFILE=(--steps 2 --warmup 1 --batch 16 --config plain=smoke --config fast=smoke,speed.channels_last=true,trainer.precision=bf16-mixed)
else
  JOBS=8
  if [ "$ONLY" = study ]; then TRAIN_S=${TRAIN_S:-480} STUDY_LIMIT=${STUDY_LIMIT:-530}; fi
  STUDY_ARGS=(train_timeout_s=${TRAIN_S:-260})
  STUDY_LIMIT=${STUDY_LIMIT:-300}
  MAIN_ARGS=()
  MAIN_LIMIT=${MAIN_LIMIT:-45}
  # auto: the project's choice on this GPU (fp32, data on the device, the CUDA-graph step)
  BENCH_TRAIN=(--steps 300 --warmup 30 --workers 8 --config auto=mnist64
    --config eager_fp32=mnist64,speed.cuda_graph=false
    --config graph_bf16=mnist64,trainer.precision=bf16-mixed,speed.cuda_graph=true
    --config eager_bf16=mnist64,trainer.precision=bf16-mixed,speed.cuda_graph=false)
  BENCH_GRAPH=()
  BENCH_SEEDS=(--seeds 8 --batch 128 --steps 100 --warmup 10 --train-steps 400)
  BENCH_GRADCAM=()
  PROFILE=(--steps 30 --warmup 15 --workers 8 --config plain=mnist64
    --config auto=mnist64 --config eager_bf16=mnist64,trainer.precision=bf16-mixed,speed.cuda_graph=false)
fi

if [ "$ONLY" != study ]; then
# 1. Speed: training paths against the PyTorch example's recipe (fixed meter: one sync a window,
#    host syncs per step counted apart); the graphed step against eager and the device-only
#    ceiling; the callbacks, curation scoring and FID against an epoch of training.
step bench_train "${BENCH_TRAIN_LIMIT:-100}" $PY -m benchmarks.bench_train "${BENCH_TRAIN[@]}"
step bench_graph 60 $PY -m benchmarks.bench_graph "${BENCH_GRAPH[@]}"
# 8 seeds in one process (K streams, the grouped ensemble) against 8 processes and one training
step bench_seeds 110 $PY -m benchmarks.bench_seeds "${BENCH_SEEDS[@]}"
step bench_gradcam 50 $PY -m benchmarks.bench_gradcam "${BENCH_GRADCAM[@]}"
# 2. Where a step's time goes (host or device), for the paths that miss the speed goal.
step profile 70 $PY -m benchmarks.profile_step "${PROFILE[@]}"
cp "$LOGS/profile.log" "$OUT/profile.txt" 2>/dev/null
fi


if [ "$ONLY" != speed ]; then
# 3. The resize cache and the MNIST classifier (FID's feature space), once, before any training.
step prepare "${PREPARE_LIMIT:-120}" $PY - <<'EOF'
import torch
from dcgan_xai.data.mnist import MNISTDataModule
from dcgan_xai.config import FidProtocol
from dcgan_xai.metrics.quality import classifier_path, load_or_train_classifier
dm = MNISTDataModule("data/mnist")
dm.setup()
device = "cuda" if torch.cuda.is_available() else "cpu"
path = classifier_path(dm, FidProtocol())
_, acc = load_or_train_classifier(path, dm.train_set, dm.test_set, epochs=3, device=device)
print(f"classifier {path}: test accuracy {acc:.4f}")
EOF

# 4. The study: a Hydra multirun, one job per run, all 8 at once as processes on the one GPU
#    (joblib launcher), then the tables and the report. If no training got through its first
#    epoch (the fast path failing on this GPU), the study runs again on the plain path. (timeout
#    signals its whole process group, the launcher's worker processes with it.)
#    SITTING=0,1,2,3 trains those seeds only: the tables of earlier sittings, committed under
#    studies/$STUDY_NAME/, are put in the study's folder first, and the report covers them all.
#    AT_ONCE=1: each recipe's seeds (this sitting's) trained at once in one process instead
#    (seeds_at_once=true: one job per experiment; bench_seeds' Lightning line measures it).
if [ "${AT_ONCE:-0}" = 1 ]; then
  STUDY=($PY -m dcgan_xai.study -m +study=$STUDY_NAME seeds_at_once=true out_dir="$WORK/studies")
else
  STUDY=($PY -m dcgan_xai.study -m +study=$STUDY_NAME hydra/launcher=joblib hydra.launcher.n_jobs=$JOBS out_dir="$WORK/studies")
fi
[ -n "${SITTING:-}" ] && STUDY+=("sitting=[$SITTING]")
S="$WORK/studies/$STUDY_NAME"
earlier_tables() {
  mkdir -p "$S"
  for f in quality.csv scores.csv curation.csv study.json; do
    [ -f "studies/$STUDY_NAME/$f" ] && cp "studies/$STUDY_NAME/$f" "$S/$f"
  done
  return 0
}
earlier_tables
t_study=$(date +%s)
OMP_NUM_THREADS=2 step study "$STUDY_LIMIT" "${STUDY[@]}" "${STUDY_ARGS[@]}" "$@"
left=$((STUDY_LIMIT - ($(date +%s) - t_study)))
if [ "$left" -gt 120 ] && ! ls "$S"/runs/*/checkpoints/epoch=001.ckpt >/dev/null 2>&1; then
  echo "== no run finished an epoch on the fast path: the plain path, $left s" | tee -a "$SUMMARY"
  cp "$LOGS/study.log" "$LOGS/study_fast_path_failed.log"
  cp -r "$S/jobs" "$LOGS/study_fast_path_jobs" 2>/dev/null
  rm -rf "$S"
  earlier_tables
  OMP_NUM_THREADS=2 step study "$left" "${STUDY[@]}" \
    train_timeout_s=$((left - 50)) 'train_overrides=["speed.on_device=false","speed.cuda_graph=false","trainer.log_every_n_steps=50","callbacks.quality.enabled=true","callbacks.gradcam.layers=[block1,block2,block3]","callbacks.gradcam.methods=[gradcam,gradcam_pre,gradcam_conv,hirescam]","callbacks.gradcam.bn_modes=[batch,eval]"]' "$@"
fi
cp "$S/REPORT.md" "$OUT/study_REPORT.md" 2>/dev/null
cp "$S/quality.csv" "$OUT/study_quality.csv" 2>/dev/null
cp "$S/scores.csv" "$OUT/study_scores.csv" 2>/dev/null
cp "$S/study.json" "$OUT/study.json" 2>/dev/null
cp "$S/fid_by_run.png" "$OUT/fid_by_run.png" 2>/dev/null
cp "$S/curation.csv" "$OUT/study_curation.csv" 2>/dev/null
cp "$S/outcomes.csv" "$S/decisions.csv" "$LOGS/" 2>/dev/null
cp -r "$S/jobs" "$LOGS/study_jobs" 2>/dev/null

fi

if [ "$ONLY" = all ]; then
# 5. The README's main command, alone on the GPU for a while (stopped at the limit: the epochs it
#    finished are checkpointed; the log gives its seconds per epoch).
step main_command "$MAIN_LIMIT" $PY -m dcgan_xai.train experiment=mnist64 hydra.run.dir="$WORK/main_command" \
  trainer.enable_progress_bar=false "${MAIN_ARGS[@]}"
ls -l --time-style=+%T "$WORK/main_command/checkpoints" 2>&1 | tee -a "$SUMMARY"

fi

tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null
echo "== done $(date -u)" | tee -a "$SUMMARY"
