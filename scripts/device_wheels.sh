#!/usr/bin/env bash
# Fetch, on a machine with internet access, the wheels that an offline GPU machine with
# PyTorch, Lightning and torchmetrics lacks (captum, hydra-core, omegaconf, antlr4 4.9, and the
# joblib launcher with joblib, which runs the study's trainings as concurrent processes) into
# .whl/ (git-ignored), for Python 3.12 on x86-64. The versions are those of this checkout's venv,
# so the GPU run uses what the tests used.
#   scripts/device_wheels.sh [PYTHON]     (default .venv/bin/python)
# Then copy the checkout, .whl/ and data/mnist there and run benchmarks/gpu_study_and_speed.sh
# (its header says how).
set -euo pipefail
PY=${1:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
rm -rf .whl && mkdir -p .whl
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
for name in captum hydra-core omegaconf hydra-joblib-launcher joblib; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$name==$(version "$name")"
done
# antlr4-python3-runtime 4.9.x is published as an sdist only: build its pure-Python wheel here.
"$PY" -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
ls -l .whl
