#!/usr/bin/env bash
# Runs a benchmark (not a test) after setting up, with the other engines installed:
#   scripts/bench.sh dense [--models resnet18,mobilenet_v2,vgg16] [--threads 1,2] [--runs 30]
#   scripts/bench.sh sparse [--models ...] [--threads 1,2] [--runs 15] [--rates npas,2x,3x,10x]
#                           [--engines-on-pruned] [--json PATH]
#   scripts/bench.sh arm64 [--models ...] [--input-size 224] [--engines ours,ncnn,mnn]
#                          [--no-sparse] [--runs 2] [--json PATH]
# Benchmarks compare engines side by side in one run, interleaved; report medians. `sparse`
# prunes each model with its per-layer mappings (host/bench/sparse/mappings.py) and compares
# our sparse bundles with our dense one and the fastest of ONNX Runtime, MNN and ncnn.
# `arm64` counts instructions per inference of ours, ncnn and MNN under qemu-aarch64; it needs
# the arm64 runner and plugin (scripts/build_arm64.sh) and the arm64 Python with ncnn and MNN
# (scripts/build_arm64_python.sh), which it builds first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = arm64 ]; then
  NPAS_WITH_BENCH=1 NPAS_SKIP_ARM64=0 scripts/setup.sh
else
  NPAS_WITH_BENCH=1 NPAS_SKIP_ARM64=${NPAS_SKIP_ARM64:-1} scripts/setup.sh
fi
exec .venv/bin/npas-host bench "$@"
