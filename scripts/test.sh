#!/usr/bin/env bash
# Sets up (scripts/setup.sh, idempotent) and runs the whole test suite, tier by tier:
# pure Python, host (compiler + host runner), and the tiers whose tools are present.
# Extra arguments go to pytest, e.g. scripts/test.sh -k profile -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "[test] ruff"
.venv/bin/ruff check host codegen tests
echo "[test] pytest"
set +e
.venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
# pytest's 5 means no test was collected: for this project that is a failure, not success.
[ $rc = 5 ] && echo "[test] no tests collected" >&2
exit $rc
