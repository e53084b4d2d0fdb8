#!/usr/bin/env bash
# Builds the arm64 runner that runs under qemu-aarch64 (the closest check to a phone we have
# here), idempotently and quickly when all is present:
#   1. Debian packages: qemu-user, the aarch64 gcc cross toolchain, clang and lld (only the
#      missing ones);
#   2. build/arm64-sysroot: arm64 .debs of gRPC, protobuf and their link/run-time closure,
#      fetched with `apt-get download` and unpacked with `dpkg -x` (never installed: installing
#      an arm64 -dev package would make apt remove the host compilers);
#   3. build/arm64/npas-runner, cross-built from the same CMake project
#      (android_app/src/main/cpp/cmake/aarch64-linux-gnu.cmake), rebuilt incrementally;
#   4. build/arm64-static/npas-runner: the same with -DNPAS_STATIC=ON, one static, stripped
#      executable (no loader, no libraries, no GPU backend) that `npas-host install --device
#      SERIAL` pushes to a phone;
#   5. build/qemu-plugin/libnpas_count.so: the instruction-counting TCG plugin
#      (host/bench/arm64/npas_count.c) for `npas-host bench arm64`, built against qemu-plugin.h
#      from Debian's qemu 7.2 source package (fetched once, checked by its sha256).
# Run it: qemu-aarch64 -L build/arm64-sysroot build/arm64/npas-runner --listen 127.0.0.1:0 ...
#     or: qemu-aarch64 build/arm64-static/npas-runner --listen 127.0.0.1:0 ...
# Usage: scripts/build_arm64.sh   (NPAS_SKIP_APT=1 skips step 1 on machines you do not own)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
sysroot=$root/build/arm64-sysroot
debs=$root/build/arm64-debs
say() { printf '\033[1m[arm64]\033[0m %s\n' "$*"; }
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"

# ---- 1. host packages ----
host_packages=(qemu-user gcc-aarch64-linux-gnu g++-aarch64-linux-gnu clang lld
               cmake ninja-build pkg-config protobuf-compiler protobuf-compiler-grpc)
if [ "${NPAS_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${host_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
fi

# ---- 2. the arm64 sysroot ----
# The minimal closure, checked against the runner's DT_NEEDED (readelf -d) and gRPC's CMake
# config (which checks that every imported file exists, grpc_cpp_plugin included).
sysroot_packages=(
  # headers, CMake configs, .so links, pkg-config files
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev libabsl-dev libssl-dev
  libc-ares-dev libre2-dev zlib1g-dev
  # run time
  libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623
  libc-ares2 libre2-9 libssl3 zlib1g
  # the arm64 loader, libc and C++ runtime for qemu-aarch64 -L
  libc6 libstdc++6 libgcc-s1
)
want=$(printf '%s\n' "${sysroot_packages[@]}" | sha256sum | cut -c1-16)
stamp=$sysroot/.npas-packages
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "adding the arm64 architecture to dpkg (for apt-get download only)"
    $sudo dpkg --add-architecture arm64
    $sudo apt-get update -qq
  fi
  if ! apt-cache show libgrpc29:arm64 >/dev/null 2>&1; then
    $sudo apt-get update -qq
  fi
  say "fetching ${#sysroot_packages[@]} arm64 packages into $debs"
  mkdir -p "$debs"
  # apt fetches as _apt, which cannot write into a root-owned checkout: fetch as ourselves.
  (cd "$debs" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" \
    "${sysroot_packages[@]/%/:arm64}")
  say "unpacking into $sysroot"
  rm -rf "$sysroot"
  mkdir -p "$sysroot"
  for p in "${sysroot_packages[@]}"; do
    deb=$(ls -t "$debs/${p}_"*_arm64.deb | head -1)
    dpkg -x "$deb" "$sysroot"
  done
  # Absolute symlinks inside the sysroot (e.g. lib*.so -> /lib/...) would point at the host.
  find "$sysroot" -type l -lname '/*' | while read -r l; do
    ln -sfn "$sysroot$(readlink "$l")" "$l"
  done
  echo "$want" > "$stamp"
fi

# ---- 3. and 4. the cross-built runners: dynamic (build/arm64), static (build/arm64-static) ----
gen=Unix\ Makefiles; command -v ninja >/dev/null && gen=Ninja
build_runner() {  # build_runner DIR WHAT [cmake -D options...]
  local dir=$1 what=$2; shift 2
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    say "configuring the $what arm64 runner ($dir)"
    cmake -S android_app/src/main/cpp -B "$dir" -G "$gen" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_TOOLCHAIN_FILE="$root/android_app/src/main/cpp/cmake/aarch64-linux-gnu.cmake" \
      -DNPAS_ARM64_SYSROOT="$sysroot" \
      -DNPAS_PROTOC="$(command -v protoc)" \
      -DNPAS_GRPC_CPP_PLUGIN="$(command -v grpc_cpp_plugin)" "$@" > "$dir-configure.log" 2>&1 \
      || { cat "$dir-configure.log" >&2; rm -f "$dir/CMakeCache.txt"; exit 1; }
  fi
  say "building the $what arm64 runner"
  if ! cmake --build "$dir" -j "$(nproc)" > "$dir/build.log" 2>&1; then
    cat "$dir/build.log" >&2; echo "build_arm64: failed (log: $dir/build.log)" >&2
    exit 1
  fi
}
build_runner build/arm64 dynamic
build_runner build/arm64-static static -DNPAS_STATIC=ON

# ---- 5. the instruction-counting qemu plugin ----
# Debian ships no plugin binaries nor the header; the header comes from the source package's
# upstream tarball, which must match the installed qemu's plugin API (7.2: version 1).
qemu_src=qemu_7.2+dfsg.orig.tar.xz
qemu_src_sha=91aca71520040edc40b8d437aa3004dae614f58e286cf653ee8996c07af2962f
plugin_dir=$root/build/qemu-plugin
plugin=$plugin_dir/libnpas_count.so
plugin_src=$root/host/bench/arm64/npas_count.c
qemu_version=$(qemu-aarch64 --version | sed -n 's/^qemu-aarch64 version \([0-9]*\.[0-9]*\).*/\1/p')
if [ "$qemu_version" != 7.2 ]; then
  say "skipping the counting plugin: it is written for qemu 7.2's plugin API, this is" \
      "qemu ${qemu_version:-unknown}"
elif [ ! -f "$plugin" ] || [ "$plugin_src" -nt "$plugin" ]; then
  mkdir -p "$plugin_dir/include"
  if [ ! -f "$plugin_dir/include/qemu-plugin.h" ]; then
    say "fetching qemu-plugin.h from Debian's qemu source ($qemu_src)"
    mkdir -p "$root/build/qemu-src"
    tarball=$root/build/qemu-src/$qemu_src
    if ! echo "$qemu_src_sha  $tarball" | sha256sum -c --status 2>/dev/null; then
      curl -sSfL --retry 3 -o "$tarball.part" \
        "http://deb.debian.org/debian/pool/main/q/qemu/$qemu_src"
      echo "$qemu_src_sha  $tarball.part" | sha256sum -c --status \
        || { echo "build_arm64: $qemu_src does not match its sha256" >&2; exit 1; }
      mv "$tarball.part" "$tarball"
    fi
    tar -xJf "$tarball" -O qemu-7.2.0/include/qemu/qemu-plugin.h \
      > "$plugin_dir/include/qemu-plugin.h.part"
    mv "$plugin_dir/include/qemu-plugin.h.part" "$plugin_dir/include/qemu-plugin.h"
  fi
  say "building the counting plugin ($plugin)"
  cc -shared -fPIC -O2 -Wall -Wextra -Werror -I"$plugin_dir/include" "$plugin_src" \
    -o "$plugin.part" -lpthread
  mv "$plugin.part" "$plugin"
fi
say "ready: qemu-aarch64 -L $sysroot $root/build/arm64/npas-runner"
say "ready: qemu-aarch64 $root/build/arm64-static/npas-runner (static; npas-host install pushes it)"
