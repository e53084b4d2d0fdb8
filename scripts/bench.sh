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
  NPAS_SKIP_ARM64=0 scripts/setup.sh
else
  NPAS_SKIP_ARM64=${NPAS_SKIP_ARM64:-1} scripts/setup.sh
fi
stamp=.venv/.npas-bench
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bench] installing the engines to compare with (pyproject's bench extra)"
  # The project's torch==2.13.0 pin holds pnnx's unpinned torch requirement to the CPU build.
  .venv/bin/pip install -q -e ".[test,bench]"
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = arm64 ]; then
  scripts/build_arm64_python.sh
fi
exec .venv/bin/npas-host bench "$@"
