#!/usr/bin/env bash
# Benchmark of the search strategies: npas, random, uniform and jcw at the same evaluation
# budget, jcw-fast (jcw + supernet + latency table) at the same wall time, three seeds; best
# phase-2 accuracy meeting the latency target and the hypervolume of the measured front
# (host/bench/strategies.py).
# Usage: scripts/bench_search.sh [--seeds 0,1,2] [--budget 24] [--speedup 8] [--device local]
#        [--strategies npas,random,uniform,jcw,jcw-fast]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
exec .venv/bin/python -m host.bench.strategies "$@"
