#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for NPAS, idempotently and quickly when all is present:
#   1. Debian packages (compilers, CMake, gRPC/protobuf for the runner, PoCL), only the missing;
#   2. a virtual environment in .venv with the Python packages (torch pinned to 2.13.0);
#   3. the host runner (build/host/npas-runner), rebuilt incrementally;
#   4. the arm64 runners (scripts/build_arm64.sh): dynamic for qemu, and the static one that
#      `npas-host install --device SERIAL` pushes to a phone (NPAS_SKIP_ARM64=1 skips both);
#   5. with NPAS_WITH_BENCH=1 (scripts/test.sh and scripts/bench.sh set it): the engines the
#      benchmarks compare with (pyproject's bench extra) and, with the arm64 tier, the arm64
#      Python with ncnn and MNN that `npas-host bench arm64` runs (scripts/build_arm64_python.sh).
# Usage: scripts/setup.sh   (NPAS_SKIP_APT=1 skips the apt steps on machines you do not own)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# ---- 1. Debian packages ----
apt_packages=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  # the GPU path: PoCL runs OpenCL kernels on the CPU; clang checks fp16 kernels offline
  ocl-icd-libopencl1 pocl-opencl-icd clang
  # the runner's sanitizer builds and libFuzzer targets (scripts/sanitize.sh, scripts/fuzz.sh):
  # clang 15 ships the fuzzer, ASan, UBSan and TSan runtimes (Debian's clang 14 lacks them)
  clang-15
)
if [ "${NPAS_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
fi

# ---- 2. Python ----
py=${NPAS_PYTHON:-}
if [ -z "$py" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      py=$c; break
    fi
  done
fi
[ -n "$py" ] || { echo "setup: Python 3.11 is required (set NPAS_PYTHON)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $py"
  "$py" -m venv .venv
fi
stamp=.venv/.npas-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python packages (torch 2.13.0, CPU build where the machine provides it)"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  # torch first and pinned, so nothing below can pull another build.
  .venv/bin/pip install -q "torch==2.13.0"
  # torchvision 0.28.0 requires exactly torch 2.13.0; --no-deps keeps pip from replacing it.
  .venv/bin/pip install -q --no-deps "torchvision==0.28.0"
  .venv/bin/pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi

# ---- 3. The host runner ----
gen=Unix\ Makefiles; command -v ninja >/dev/null && gen=Ninja
if [ ! -f build/host/CMakeCache.txt ]; then
  say "configuring the runner (build/host)"
  cmake -S android_app/src/main/cpp -B build/host -G "$gen" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
say "building the runner"
if ! cmake --build build/host -j "$(nproc)" > build/host/build.log 2>&1; then
  cat build/host/build.log >&2; echo "setup: runner build failed (log: build/host/build.log)" >&2
  exit 1
fi
# ---- 4. the arm64 runners: under qemu (the closest check to a phone here) and for phones ----
if [ "${NPAS_SKIP_ARM64:-0}" != 1 ]; then
  scripts/build_arm64.sh
fi
# ---- 5. the other engines, for the benchmarks and their tests ----
if [ "${NPAS_WITH_BENCH:-0}" = 1 ]; then
  stamp=.venv/.npas-bench
  want=$(sha256sum pyproject.toml | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing the engines to compare with (pyproject's bench extra)"
    # The project's torch==2.13.0 pin holds pnnx's unpinned torch requirement to the CPU build.
    .venv/bin/pip install -q -e ".[test,bench]"
    # ExecuTorch (bench int8's XNNPACK peer) without its requirements, which would pull
    # coremltools, pandas and hydra and move torch's pins; what it needs at run time is in the
    # bench extra.
    .venv/bin/pip install -q --no-deps "executorch==1.5.1"
    echo "$want" > "$stamp"
  fi
  if [ "${NPAS_SKIP_ARM64:-0}" != 1 ]; then
    scripts/build_arm64_python.sh
  fi
fi
say "ready: $root/.venv/bin/npas-host, $root/build/host/npas-runner"
