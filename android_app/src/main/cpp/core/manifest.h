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
  uint64_t work_items = 0;
  uint64_t flops = 0;
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
};

constexpr uint32_t kManifestFormatVersion = 1;
constexpr uint64_t kTensorAlignment = 16;  // arena offsets
constexpr uint64_t kParamAlignment = 64;   // weight blob offsets (kernel ABI promise)

// Indices of the artifacts a CPU load uses (after validate_manifest).
struct ManifestArtifacts {
  int kernels = -1;
  int weights = -1;  // -1: no weight blob
};

// Checks everything that does not need the store: versions, counts, shapes, sizes, offsets,
// indices, symbols. Params are checked against the weight artifact's declared size; the
// loader checks that size against the store.
Status validate_manifest(const Manifest& m, const ManifestLimits& limits,
                         ManifestArtifacts* which);

// A C identifier: [A-Za-z_][A-Za-z0-9_]*, at most 256 characters.
bool is_c_identifier(const std::string& s);

}  // namespace npas

#endif  // NPAS_CORE_MANIFEST_H
