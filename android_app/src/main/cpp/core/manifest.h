// The manifest as plain structs: a mirror of proto Manifest and codegen/bundle.py, and the
// complete check that runs before anything in it is used.
#ifndef NPAS_CORE_MANIFEST_H
#define NPAS_CORE_MANIFEST_H

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace npas {

enum class ArtifactKind : int { kUnspecified = 0, kKernelLibrary = 1, kWeights = 2, kOpenClSource = 3 };

struct ArtifactRef {
  std::string role;
  ArtifactKind kind = ArtifactKind::kUnspecified;
  std::string sha256;
  uint64_t size = 0;
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
  uint64_t arena_offset = 0;
  uint64_t nbytes = 0;
};

struct ParamRef {
  uint64_t offset = 0;
  uint64_t nbytes = 0;
};

struct Step {
  std::string name;
  std::string op;
  std::string symbol;
  std::vector<uint32_t> inputs;
  uint32_t output = 0;
  std::vector<ParamRef> params;
  uint64_t work_items = 0;  // CPU: [begin, end) range; GPU: the 1-D global work size
  uint64_t flops = 0;
  uint64_t local_size = 0;  // GPU only: work-group size, 0 lets the driver choose
};

// A load-time step that builds part of the weight buffer (what step params point into) from
// the shipped weight blob: symbol empty, a byte copy of src to dst (equal sizes); else a kernel
// of the library, called on [0, work_items) with params[0] = blob + src.offset and output =
// buffer + dst.offset (a Winograd layer's raw weights transformed into its kernels' layout).
struct PrepareStep {
  std::string name;
  std::string symbol;
  ParamRef src, dst;
  uint64_t work_items = 1;
};

struct Target {
  std::string arch, os, abi;
  std::vector<std::string> features;
};

struct Toolchain {
  std::string compiler, version;
  std::vector<std::string> flags;
};

struct Manifest {
  uint32_t format_version = 0;
  std::string name;
  Target target;
  Toolchain toolchain;
  uint32_t kernel_abi_version = 0;
  std::vector<ArtifactRef> artifacts;
  std::vector<TensorSpec> tensors;
  std::vector<uint32_t> inputs;
  std::vector<uint32_t> outputs;
  uint64_t arena_bytes = 0;
  uint64_t scratch_bytes_per_thread = 0;
  std::vector<Step> steps;
  // Since format 2: the weight buffer's size and the steps that build it from the blob; no
  // prepare steps: the buffer is the blob (weights_bytes equals its size).
  uint64_t weights_bytes = 0;
  std::vector<PrepareStep> prepare;
  std::string content_hash;
};

// What the runner accepts; over a limit is ResourceExhausted.
struct ManifestLimits {
  uint64_t max_arena_bytes = 2ull << 30;
  uint64_t max_scratch_bytes_per_thread = 256ull << 20;
  size_t max_steps = 100000;
  size_t max_tensors = 1000000;
  size_t max_step_inputs = 64;
  size_t max_step_params = 1024;
  size_t max_model_io = 1024;  // model inputs, and outputs
  size_t max_rank = 8;
  uint64_t max_work_items = 1ull << 40;
  // GPU: the 1-D global size. Drivers take no more than their address space (an assertion
  // in PoCL at 2^40), and kernels index with 32-bit ints.
  uint64_t max_gpu_work_items = (1ull << 31) - 1;
  size_t max_build_flags = 256;           // GPU: Toolchain.flags entries
  size_t max_build_options_bytes = 4096;  // GPU: the flags joined with spaces
  uint64_t max_weights_bytes = 16ull << 30;  // the loaded weight buffer (memory budget too)
  size_t max_prepare_steps = 100000;
};

// Which executor a bundle is loaded for: CPU bundles carry a kernel library (target arch
// x86_64/aarch64), GPU bundles OpenCL C source (target arch "opencl").
enum class Backend : int { kCpu = 0, kGpu = 1 };

constexpr uint32_t kManifestFormatVersion = 2;  // 2: weights_bytes, prepare steps
constexpr uint64_t kTensorAlignment = 16;  // arena offsets
constexpr uint64_t kParamAlignment = 64;   // weight blob offsets (kernel ABI promise)

// Indices of the artifacts a load uses (after validate_manifest).
struct ManifestArtifacts {
  int kernels = -1;  // CPU: the kernel library
  int opencl = -1;   // GPU: the OpenCL C source
  int weights = -1;  // -1: no weight blob
};

constexpr const char* kOpenClArch = "opencl";

// Checks everything that does not need the store or the device: versions, artifacts for the
// backend, counts, shapes, dtypes ("float16" only for GPU), sizes, offsets, indices, symbols,
// GPU work sizes and build flags. Params are checked against the weight artifact's declared
// size, step params against weights_bytes and the prepare steps' destinations (each param
// inside one; destinations disjoint; sources inside the blob); the loader checks the blob's
// size against the store.
Status validate_manifest(const Manifest& m, const ManifestLimits& limits,
                         ManifestArtifacts* which, Backend backend = Backend::kCpu);

// Bytes per element of a tensor dtype the runner knows: float32 4, float16 2; 0 otherwise.
uint64_t dtype_size(const std::string& dtype);

// Toolchain.flags joined with single spaces: the options for clBuildProgram.
std::string build_options(const Manifest& m);

// A C identifier: [A-Za-z_][A-Za-z0-9_]*, at most 256 characters.
bool is_c_identifier(const std::string& s);

// "(1, 3, 224, 224)", as Python prints a shape: for error messages.
std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace npas

#endif  // NPAS_CORE_MANIFEST_H
