# Cross-builds the runner for arm64 Linux (glibc) with Debian's aarch64-linux-gnu gcc, against
# gRPC/protobuf unpacked from Debian's arm64 .debs into a sysroot (scripts/build_arm64.sh makes
# it). The result runs under qemu-aarch64 -L <sysroot>. libc and libstdc++ come from the cross
# toolchain's own /usr/aarch64-linux-gnu (same Debian versions as the sysroot's runtime copies);
# everything else is searched in the sysroot only, never in the host's /usr.
#
#   cmake -S android_app/src/main/cpp -B build/arm64 -G Ninja \
#     -DCMAKE_TOOLCHAIN_FILE=android_app/src/main/cpp/cmake/aarch64-linux-gnu.cmake \
#     -DNPAS_ARM64_SYSROOT=$PWD/build/arm64-sysroot \
#     -DNPAS_PROTOC=/usr/bin/protoc -DNPAS_GRPC_CPP_PLUGIN=/usr/bin/grpc_cpp_plugin
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

if(NOT NPAS_ARM64_SYSROOT)
  # The toolchain file is read again for try_compile projects; the cache has it by then.
  set(NPAS_ARM64_SYSROOT "$ENV{NPAS_ARM64_SYSROOT}")
endif()
if(NOT NPAS_ARM64_SYSROOT OR NOT EXISTS "${NPAS_ARM64_SYSROOT}/usr/include/grpcpp")
  message(FATAL_ERROR "NPAS_ARM64_SYSROOT='${NPAS_ARM64_SYSROOT}' has no arm64 gRPC headers; "
                      "run scripts/build_arm64.sh, which makes build/arm64-sysroot")
endif()
set(NPAS_ARM64_SYSROOT "${NPAS_ARM64_SYSROOT}" CACHE PATH "arm64 sysroot with gRPC/protobuf")
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES NPAS_ARM64_SYSROOT)

set(_lib "${NPAS_ARM64_SYSROOT}/usr/lib/aarch64-linux-gnu")
set(CMAKE_FIND_ROOT_PATH "${NPAS_ARM64_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)  # protoc & co. run here: NPAS_PROTOC etc.
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# gRPC's Findre2/Findc-ares use pkg-config: only the sysroot's .pc files, paths prefixed.
set(ENV{PKG_CONFIG_LIBDIR} "${_lib}/pkgconfig:${NPAS_ARM64_SYSROOT}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${NPAS_ARM64_SYSROOT}")

# Multiarch headers (openssl/opensslconf.h) and the shared libraries' own dependencies at link.
set(CMAKE_C_FLAGS_INIT "-isystem ${NPAS_ARM64_SYSROOT}/usr/include/aarch64-linux-gnu")
set(CMAKE_CXX_FLAGS_INIT "-isystem ${NPAS_ARM64_SYSROOT}/usr/include/aarch64-linux-gnu")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-L${_lib} -Wl,-rpath-link,${_lib}")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-L${_lib} -Wl,-rpath-link,${_lib}")
