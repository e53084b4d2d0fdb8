// The CPU backend: a bundle's kernel library (dlopen), weight blob, activation arena,
// per-thread scratch, the precomputed kernel arguments of every step, and the thread pool
// that splits each step's work range.
#ifndef NPAS_CORE_CPU_MODEL_H
#define NPAS_CORE_CPU_MODEL_H

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/artifact_store.h"
#include "core/device_info.h"
#include "core/manifest.h"
#include "core/model.h"
#include "core/status.h"

namespace npas {

// Threads and pinning as asked by the client (proto LoadModelRequest).
struct ThreadRequest {
  uint32_t threads = 0;           // 0: one per big core
  std::vector<uint32_t> cpu_affinity;
  bool pin_big_cores = false;
};

// Threads and pinning as used: affinity is empty (no pinning) or has one CPU per thread.
struct ThreadPlan {
  int threads = 1;
  std::vector<int> affinity;
};

constexpr uint32_t kMaxThreads = 256;
StatusOr<ThreadPlan> plan_threads(const ThreadRequest& req, const DeviceInfo& device);

// Validates the manifest completely (backend CPU), then loads. Errors name the step, symbol
// or artifact.
StatusOr<std::unique_ptr<Model>> load_cpu_model(const Manifest& manifest,
                                                ArtifactStore& store,
                                                const ManifestLimits& limits,
                                                const ThreadPlan& plan);

// Reads the ELF header of `path` and checks it is a shared object for this runner's machine.
Status check_kernel_elf(const std::string& path, const std::string& sha);

// What a kernel library exports, read from the file (section headers, .dynsym, the ABI
// symbol's bytes) without loading it: its npas_kernel_abi_version, and which defined dynamic
// symbols are functions in executable sections (a step's symbol must be one: dlsym also finds
// data objects, and calling one crashes the runner).
struct KernelExports {
  uint32_t abi_version = 0;
  std::set<std::string> functions;
};

// FailedPrecondition when the ABI symbol is missing or not a 4-byte constant stored in the
// file, or the tables are malformed. After check_kernel_elf.
StatusOr<KernelExports> read_kernel_exports(const std::string& path, const std::string& sha);

}  // namespace npas

#endif  // NPAS_CORE_CPU_MODEL_H
