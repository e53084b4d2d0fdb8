#!/usr/bin/env bash
# Builds an arm64 Python that runs under qemu-aarch64 with the aarch64 wheels of numpy, ncnn
# and MNN, for the guest side of the benchmarks (host/bench/arm64/guest.py), idempotently and
# quickly when all is present:
#   1. build/arm64-python: Debian's arm64 python3.11 and the libraries it and the wheels load
#      at run time, fetched into build/arm64-python-debs with `apt-get download` and unpacked
#      with `dpkg -x` (never installed: installing arm64 packages would make apt remove the
#      host compilers); absolute symlinks are rewritten to point inside the root;
#   2. build/arm64-python/site: the pinned aarch64 wheels (fetched into
#      build/arm64-python-wheels with the venv's `pip download`), unpacked;
#   3. the standard library and the site folder compiled to .pyc by the guest Python itself
#      (imports under qemu take 2.5 times less);
#   4. a smoke check: the guest imports numpy, ncnn and MNN, and sees no host packages.
# Steps 1-3 rerun only when the package list or a pin changes (the stamp
# build/arm64-python/.npas-packages); step 4 always runs (a few seconds).
# Run it: PYTHONPATH=build/arm64-python/site PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
#           qemu-aarch64 -cpu cortex-a76 -L build/arm64-python \
#           build/arm64-python/usr/bin/python3.11 host/bench/arm64/guest.py ...
#     (or from Python: host.bench.arm64.pyroot.guest_command, which also drops the caller's
#     PYTHON* variables)
# Needs qemu-user (scripts/build_arm64.sh installs it), dpkg's arm64 architecture (added here
# unless NPAS_SKIP_APT=1) and .venv (scripts/setup.sh).
# Usage: scripts/build_arm64_python.sh   (NPAS_SKIP_APT=1: never run apt-get update or add
#        the arm64 architecture; fail instead, on machines you do not own)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
pyroot=$root/build/arm64-python
debs=$root/build/arm64-python-debs
wheels=$root/build/arm64-python-wheels
say() { printf '\033[1m[arm64-python]\033[0m %s\n' "$*"; }
die() { echo "build_arm64_python: $*" >&2; exit 1; }
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"

command -v qemu-aarch64 >/dev/null \
  || die "qemu-aarch64 not found; install qemu-user (scripts/build_arm64.sh does)"
[ -x .venv/bin/python ] || die "no .venv; create it with scripts/setup.sh"

# The minimal run-time closure, checked with readelf -d against python3.11, the extension
# modules that `import numpy, ncnn, MNN` and guest.py load (_ctypes, _json, _contextvars,
# _typing) and the wheels' own .so files (which bundle libgomp, OpenBLAS, libgfortran).
# libssl3, libbz2-1.0, liblzma5, libcrypt1, libsqlite3-0, ... serve modules nobody here loads
# (_ssl, _hashlib, bz2, lzma, crypt, sqlite3) and are left out; _decimal bundles libmpdec.
packages=(
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
  libc6 libgcc-s1 libstdc++6  # the loader, libc; the C++ runtime of ncnn and MNN
  libexpat1 zlib1g            # python3.11's DT_NEEDED (and zlib: MNN's _tools)
  libffi8                     # _ctypes: guest.py flushes C stdio through it
)
# ncnn 1.0.20250503 is the newest ncnn with aarch64 wheels. numpy 2.2.6 is the newest with
# manylinux2014 aarch64 wheels; MNN 3.6.1's module takes numpy 2's ABI (it looks up
# numpy._core first) and both wheels import and run with it.
pins=(numpy==2.2.6 ncnn==1.0.20250503 MNN==3.6.1)
want=$(printf '%s\n' "${packages[@]}" "${pins[@]}" "layout 1" | sha256sum | cut -c1-16)
stamp=$pyroot/.npas-packages

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # ---- 1. the arm64 Debian packages ----
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    [ "${NPAS_SKIP_APT:-0}" != 1 ] \
      || die "dpkg has no arm64 architecture (sudo dpkg --add-architecture arm64 && sudo apt-get update)"
    say "adding the arm64 architecture to dpkg (for apt-get download only)"
    $sudo dpkg --add-architecture arm64
    $sudo apt-get update -qq
  fi
  if ! apt-cache show python3.11-minimal:arm64 >/dev/null 2>&1; then
    [ "${NPAS_SKIP_APT:-0}" != 1 ] || die "apt knows no python3.11-minimal:arm64 (apt-get update)"
    $sudo apt-get update -qq
  fi
  # The exact files of the candidate versions, so a stale .deb in $debs is never unpacked.
  mapfile -t files < <(apt-get download --print-uris -qq "${packages[@]/%/:arm64}" \
                         | awk '{print $2}')
  [ ${#files[@]} = ${#packages[@]} ] \
    || die "apt-get download --print-uris listed ${#files[@]} files for ${#packages[@]} packages"
  mkdir -p "$debs"
  missing=()
  for f in "${files[@]}"; do
    [ -f "$debs/$f" ] || missing+=("${f%%_*}:arm64")  # NAME_VERSION_arm64.deb
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "fetching ${#missing[@]} arm64 packages into $debs"
    # apt fetches as _apt, which cannot write into a root-owned checkout: fetch as ourselves.
    (cd "$debs" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" "${missing[@]}")
  fi

  # ---- 2. the wheels ----
  say "fetching the aarch64 wheels ${pins[*]} into $wheels"
  mkdir -p "$wheels"
  .venv/bin/pip download -q --disable-pip-version-check --platform manylinux2014_aarch64 \
    --python-version 311 --only-binary=:all: --no-deps -d "$wheels" "${pins[@]}"
  whls=()
  for pin in "${pins[@]}"; do
    name=$(echo "${pin%%==*}" | tr '[:upper:]' '[:lower:]')
    whl=$(ls "$wheels/${name}-${pin##*==}-cp311-"*aarch64*.whl 2>/dev/null | head -1)
    [ -n "$whl" ] || die "no aarch64 wheel for $pin in $wheels"
    whls+=("$whl")
  done

  say "unpacking into $pyroot"
  rm -rf "$pyroot"
  mkdir -p "$pyroot/site"
  for f in "${files[@]}"; do
    dpkg -x "$debs/$f" "$pyroot"
  done
  # Absolute symlinks inside the root (e.g. sitecustomize.py -> /etc/...) would point at the
  # host.
  find "$pyroot" -type l -lname '/*' | while read -r l; do
    ln -sfn "$pyroot$(readlink "$l")" "$l"
  done
  .venv/bin/python - "$pyroot/site" "${whls[@]}" <<'EOF'
import sys, zipfile
for whl in sys.argv[2:]:
    with zipfile.ZipFile(whl) as z:
        z.extractall(sys.argv[1])
EOF

  # ---- 3. bytecode, compiled by the guest (tests and GUI modules skipped) ----
  say "compiling the standard library and the site folder to .pyc (under qemu)"
  env -u PYTHONHOME -u PYTHONPATH -u PYTHONSTARTUP PYTHONNOUSERSITE=1 \
    qemu-aarch64 -cpu cortex-a76 -L "$pyroot" "$pyroot/usr/bin/python3.11" -m compileall \
    -q -j "$(nproc)" -x '/tests?/|idlelib|lib2to3|tkinter|turtledemo|ensurepip' \
    "$pyroot/usr/lib/python3.11" "$pyroot/site" > "$pyroot/compileall.log" 2>&1 \
    || { tail -20 "$pyroot/compileall.log" >&2; die "compileall failed (log: $pyroot/compileall.log)"; }
  echo "$want" > "$stamp"
fi

# ---- 4. smoke check ----
check='
import sys, numpy, ncnn, MNN
root = sys.argv[1]
foreign = [p for p in sys.path if p and not p.startswith(root)]
if foreign:
    sys.exit(f"the guest sees paths outside {root}: {foreign}")
print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, ncnn {ncnn.__version__}, MNN {MNN.version()}")
'
if ! out=$(env -u PYTHONHOME -u PYTHONSTARTUP PYTHONPATH="$pyroot/site" PYTHONNOUSERSITE=1 \
             PYTHONDONTWRITEBYTECODE=1 qemu-aarch64 -cpu cortex-a76 -L "$pyroot" \
             "$pyroot/usr/bin/python3.11" -c "$check" "$pyroot" 2>&1); then
  echo "$out" >&2
  die "the smoke check failed; rm -rf $pyroot and run again to rebuild"
fi
say "ready: $(echo "$out" | tail -1) in $pyroot (qemu-aarch64 -cpu cortex-a76 -L $pyroot $pyroot/usr/bin/python3.11 host/bench/arm64/guest.py)"
