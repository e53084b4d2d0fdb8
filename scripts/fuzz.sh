#!/usr/bin/env bash
# Builds the runner's libFuzzer targets (build/asan: clang with ASan + UBSan + coverage, the
# directory scripts/sanitize.sh asan builds the ASan runner in; NPAS_FUZZ_BUILD=DIR for
# another) and runs each from its checked-in seed corpus
# (android_app/src/main/cpp/fuzz/corpus/TARGET, copied to DIR/corpus/TARGET, which grows),
# then prints per target: executions, coverage (libFuzzer's edges "cov" and features "ft"),
# corpus size, seconds and crashes (found in this run). A crash input is kept in
# DIR/crashes/TARGET/.
# Exit 1 when any target crashed.
#
#   scripts/fuzz.sh                   1,000,000 executions per target
#   scripts/fuzz.sh --runs 20000      a bounded run (what scripts/test.sh does)
#   scripts/fuzz.sh --seconds 30      per target, instead of a count
#   scripts/fuzz.sh --runs N manifest elf   some targets only
set -euo pipefail
cd "$(dirname "$0")/.."
runs=1000000 seconds=""
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(manifest upload elf store requests)
cxx=$(command -v clang++-15 || true)
cc=$(command -v clang-15 || true)
if [ -z "$cxx" ] || [ ! -f "$(clang++-15 -print-resource-dir 2>/dev/null)/lib/linux/libclang_rt.fuzzer-x86_64.a" ]; then
  echo "fuzz: clang-15 with its libFuzzer runtime is needed (Debian: clang-15; scripts/setup.sh installs it)" >&2
  exit 2
fi
src=android_app/src/main/cpp
b=${NPAS_FUZZ_BUILD:-build/asan}
if [ ! -f $b/CMakeCache.txt ]; then
  CC=$cc CXX=$cxx cmake -S $src -B $b -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DNPAS_FUZZ=ON >/dev/null
fi
targets_built=()
for t in "${targets[@]}"; do targets_built+=(fuzz_$t); done
if ! cmake --build $b -j "$(nproc)" --target "${targets_built[@]}" > $b/fuzz-build.log 2>&1; then
  cat $b/fuzz-build.log >&2; echo "fuzz: build failed ($b/fuzz-build.log)" >&2; exit 1
fi
limit=(-runs="$runs"); [ -n "$seconds" ] && limit=(-max_total_time="$seconds")
printf '%-10s %12s %7s %7s %7s %8s %8s\n' target execs cov ft corpus seconds crashes
failed=0
for t in "${targets[@]}"; do
  corpus=$b/corpus/$t crashes=$b/crashes/$t
  mkdir -p "$corpus" "$crashes"
  cp -n $src/fuzz/corpus/$t/* "$corpus"/ 2>/dev/null || true
  log=$b/$t.log
  marker=$b/.fuzz-start-$t; touch "$marker"  # crash inputs of this run are newer
  start=$(date +%s.%N)
  set +e
  # -rss_limit_mb: an input that makes the code under test allocate past 2 GB is a finding.
  ASAN_OPTIONS=detect_leaks=1:use_sigaltstack=0 $b/fuzz_$t "${limit[@]}" -rss_limit_mb=2048 -timeout=20 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "$corpus" > "$log" 2>&1
  rc=$?
  set -e
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
  done_line=$(grep -E '^#[0-9]+\s+DONE' "$log" | tail -1 || true)
  [ -n "$done_line" ] || done_line=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{print $2}' || true)
  [ -n "$execs" ] || execs=$(echo "$done_line" | sed -E 's/^#([0-9]+).*/\1/')
  cov=$(echo "$done_line" | sed -nE 's/.*cov: ([0-9]+).*/\1/p')
  ft=$(echo "$done_line" | sed -nE 's/.*ft: ([0-9]+).*/\1/p')
  corp=$(echo "$done_line" | sed -nE 's/.*corp: ([0-9]+).*/\1/p')
  n_crash=$(find "$crashes" -type f -newer "$marker" | wc -l)
  printf '%-10s %12s %7s %7s %7s %8.1f %8s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" \
    "${corp:-?}" "$secs" "$n_crash"
  if [ $rc != 0 ] || [ "$n_crash" != 0 ]; then
    failed=1
    echo "fuzz: $t exited $rc; its log: $log; crash inputs in $crashes/" >&2
    grep -E 'ERROR|invariant broken|runtime error|SUMMARY' "$log" | head -5 >&2 || true
  fi
done
exit $failed
