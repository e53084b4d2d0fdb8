#!/usr/bin/env bash
# The runner under sanitizers, each build in its own directory (the shared build/host is not
# touched):
#   scripts/sanitize.sh asan   build/asan: ASan + UBSan (every finding fatal; with libFuzzer's
#                              coverage too, so scripts/fuzz.sh builds its targets in the same
#                              directory); the core test, then the host-tier runner tests
#                              against it (NPAS_RUNNER)
#   scripts/sanitize.sh tsan   build/tsan: ThreadSanitizer; the core test (the thread pool)
#                              and npas_service_stress (every RPC's code from 8 threads on one
#                              store and registry). Not the runner over gRPC: Debian's gRPC is
#                              not instrumented, so its hand-offs between threads read as races
#                              (hundreds of reports, all inside gRPC, on a first try)
# A sanitizer report from any runner process (they write to build/SAN/reports/) fails the
# run and is printed. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-asan}; shift || true
case "$kind" in
  asan) flags="address,undefined" config=(-DNPAS_FUZZ=ON)
        tests=(tests/test_runner_security.py tests/test_runner_store.py
               tests/test_runner_reliability.py tests/test_runner_limits.py) ;;
  tsan) flags="thread" config=(-DNPAS_SANITIZE=thread) tests=() ;;
  *) echo "usage: scripts/sanitize.sh asan|tsan [pytest args]" >&2; exit 2 ;;
esac
cxx=$(command -v clang++-15 || true) cc=$(command -v clang-15 || true)
if [ -z "$cxx" ]; then
  echo "sanitize: clang-15 is needed (scripts/setup.sh installs it)" >&2; exit 2
fi
dir=build/$kind
say() { printf '\033[1m[%s]\033[0m %s\n' "$kind" "$*"; }
if [ ! -f $dir/CMakeCache.txt ]; then
  say "configuring $dir (clang-15, -fsanitize=$flags)"
  CC=$cc CXX=$cxx cmake -S android_app/src/main/cpp -B $dir -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo "${config[@]}" >/dev/null
fi
say "building the runner and the core test"
start=$(date +%s)
if ! cmake --build $dir -j "$(nproc)" --target npas-runner npas_core_test npas_test_kernels npas_service_stress \
    > $dir/build.log 2>&1; then
  cat $dir/build.log >&2; echo "sanitize: build failed ($dir/build.log)" >&2; exit 1
fi
say "built in $(( $(date +%s) - start )) s"
reports=$(pwd)/$dir/reports
rm -rf "$reports"; mkdir -p "$reports"
# gRPC, protobuf and abseil are not instrumented; what they keep for the process's lifetime
# at exit is theirs (the suppressions name only those libraries).
supp=$(pwd)/$dir/lsan.supp
printf 'leak:libgrpc\nleak:libgpr\nleak:libabsl\nleak:libprotobuf\nleak:libupb\nleak:libre2\n' \
  > "$supp"
# use_sigaltstack=0: compiler-rt 15 fails to unmap a thread's alternate signal stack at thread
# exit under glibc 2.36 ("unable to unmap", a CHECK that kills the runner); we need no stack
# overflow reports.
export ASAN_OPTIONS="log_path=$reports/asan:detect_leaks=1:abort_on_error=1:use_sigaltstack=0"
export LSAN_OPTIONS="suppressions=$supp"
export UBSAN_OPTIONS="log_path=$reports/ubsan:print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="log_path=$reports/tsan:halt_on_error=0:second_deadlock_stack=1"
say "core test"
start=$(date +%s)
$dir/npas_core_test $dir/libnpas_test_kernels.so $dir/test_store > $dir/core_test.log 2>&1 \
  || { cat $dir/core_test.log >&2; echo "sanitize: the core test failed" >&2; exit 1; }
if [ "$kind" = tsan ]; then
  say "concurrent service calls (npas_service_stress)"
  rm -rf $dir/stress_store
  set +e
  $dir/npas_service_stress $dir/libnpas_test_kernels.so $dir/stress_store 20
  rc=$?
  set -e
  tests=()
fi
if [ ${#tests[@]} -gt 0 ]; then
say "runner tests (NPAS_RUNNER=$dir/npas-runner): ${tests[*]}"
set +e
NPAS_RUNNER=$(pwd)/$dir/npas-runner .venv/bin/python -m pytest -q -ra -p no:cacheprovider \
  "${tests[@]}" "$@"
rc=$?
set -e
fi
say "tests took $(( $(date +%s) - start )) s"
if compgen -G "$reports/*" >/dev/null; then
  echo "sanitize: $kind reports from runner processes:" >&2
  for f in "$reports"/*; do echo "== $f" >&2; head -60 "$f" >&2; done
  exit 1
fi
say "no sanitizer reports"
exit $rc
