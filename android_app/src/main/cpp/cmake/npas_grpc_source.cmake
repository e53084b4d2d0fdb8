# The one pin of the gRPC source used where no system gRPC exists: the Android build
# (npas_grpc_android.cmake) and the host codegen tools built for it (grpc_host_tools/).
#
# v1.51.1 is the gRPC that Debian 12 ships (libgrpc++ 1.51.1, protobuf 3.21.12), which builds
# the host runner. Keeping the phone on the same release means:
#   - the C++ that Debian's protoc 3.21.x + grpc_cpp_plugin 1.51.1 generate compiles against the
#     fetched runtime (gRPC 1.51.1 bundles protobuf 3.21.x), so a Debian workstation needs no
#     extra step, and grpc_host_tools/ builds the same pair anywhere else;
#   - host and phone speak the same gRPC release, so a bug seen on one is the other's too.
# Moving the pin means moving both, and the protoc check in npas_grpc_android.cmake says so.
include(FetchContent)

set(NPAS_GRPC_GIT_TAG "v1.51.1" CACHE STRING "gRPC release fetched for Android builds")

FetchContent_Declare(grpc
  GIT_REPOSITORY https://github.com/grpc/grpc.git
  GIT_TAG        ${NPAS_GRPC_GIT_TAG}
  GIT_SHALLOW    TRUE
  GIT_PROGRESS   TRUE
)

# What every build of the fetched tree needs: no tests, no install rules, abseil built with our
# C++ standard (abseil's ABI changes with it).
set(gRPC_BUILD_TESTS OFF CACHE BOOL "" FORCE)
set(gRPC_INSTALL OFF CACHE BOOL "" FORCE)
set(gRPC_BUILD_CSHARP_EXT OFF CACHE BOOL "" FORCE)
set(protobuf_BUILD_TESTS OFF CACHE BOOL "" FORCE)
set(protobuf_INSTALL OFF CACHE BOOL "" FORCE)
set(ABSL_PROPAGATE_CXX_STD ON CACHE BOOL "" FORCE)
set(ABSL_ENABLE_INSTALL OFF CACHE BOOL "" FORCE)
set(RE2_BUILD_TESTING OFF CACHE BOOL "" FORCE)
set(CARES_BUILD_TOOLS OFF CACHE BOOL "" FORCE)
# Only the C++ plugin is ever needed.
foreach(_lang CSHARP NODE OBJECTIVE_C PHP PYTHON RUBY)
  set(gRPC_BUILD_GRPC_${_lang}_PLUGIN OFF CACHE BOOL "" FORCE)
endforeach()
