#!/usr/bin/env bash
# Benchmark of the search strategies: npas vs random vs uniform, same evaluation budget, three
# seeds, best phase-2 accuracy meeting the latency target (host/bench/strategies.py).
# Usage: scripts/bench_search.sh [--seeds 0,1,2] [--budget 24] [--speedup 8] [--device local]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
exec .venv/bin/python -m host.bench.strategies "$@"
