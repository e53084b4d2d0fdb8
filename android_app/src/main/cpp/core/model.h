// A loaded model: the validated manifest, its kernel library (dlopen), weight blob, activation
// arena, per-thread scratch, the precomputed kernel arguments of every step, and the thread
// pool that runs them. Also the executor: one run, and the benchmark protocol.
#ifndef NPAS_CORE_MODEL_H
#define NPAS_CORE_MODEL_H

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/artifact_store.h"
#include "core/device_info.h"
#include "core/manifest.h"
#include "core/npas_kernel_abi.h"
#include "core/os_util.h"
#include "core/status.h"
#include "core/thread_pool.h"

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

// A tensor handed in by a caller; `data` is borrowed for the duration of the call.
struct TensorView {
  std::string name;  // empty: positional
  std::vector<int64_t> shape;
  std::string dtype;  // empty: float32
  const void* data = nullptr;
  size_t size = 0;
};

// Literal counts (the proto's "0 means default" is the service's business).
struct BenchmarkOptions {
  uint32_t warmup = 10;
  uint32_t runs = 100;
  bool per_layer = false;
  std::vector<TensorView> inputs;  // empty: deterministic pseudo-random inputs
  // Polled between runs; true stops the benchmark with CANCELLED.
  std::function<bool()> cancelled;
};

constexpr uint32_t kMaxBenchmarkRuns = 100000;
constexpr uint32_t kMaxBenchmarkWarmup = 10000;
constexpr uint64_t kMaxLayerSamples = 20000000;  // runs x steps with per_layer

struct BenchmarkResult {
  std::vector<uint64_t> samples_ns;
  std::vector<uint64_t> warmup_ns;
  std::vector<std::vector<uint64_t>> layer_ns;  // [step][run] when per_layer
};

// Fills `values` (count floats) with the default benchmark input: splitmix64 from a fixed
// seed, per model input in order, mapped to [-1, 1).
void default_input_values(float* values, size_t count, uint64_t* state);
constexpr uint64_t kDefaultInputSeed = 0x4E50415300000001ull;  // "NPAS", 1

class Model {
 public:
  // Validates the manifest completely, then loads. Errors name the step, symbol or artifact.
  static StatusOr<std::unique_ptr<Model>> load(const Manifest& manifest,
                                               const ArtifactStore& store,
                                               const ManifestLimits& limits,
                                               const ThreadPlan& plan);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const Manifest& manifest() const { return manifest_; }
  uint64_t init_ns() const { return init_ns_; }
  int threads() const { return pool_->threads(); }
  const std::vector<int>& cpu_affinity() const { return plan_.affinity; }

  // InvalidArgument naming the tensor and the expected vs the received value.
  Status check_inputs(const std::vector<TensorView>& inputs) const;
  // One inference: copies the inputs into the arena, runs every step, reports the time of the
  // steps alone. Read the outputs with output_data() afterwards (same caller, same lock).
  Status run(const std::vector<TensorView>& inputs, uint64_t* latency_ns);
  const uint8_t* output_data(size_t i) const;
  size_t output_size(size_t i) const;

  Status benchmark(const BenchmarkOptions& opts, BenchmarkResult* result);

 private:
  struct PreparedStep {
    npas_kernel_fn fn = nullptr;
    npas_step_args args{};
    int64_t work_items = 0;
    uint8_t* scratch = nullptr;  // worker w uses scratch + w * scratch_stride
    size_t scratch_stride = 0;
  };
  struct DlClose {
    void operator()(void* h) const;
  };

  Model() = default;
  static void run_range(void* ctx, int worker, int64_t begin, int64_t end);
  void copy_inputs(const std::vector<TensorView>& inputs);
  void copy_default_inputs();
  void run_steps();
  uint64_t run_steps_timed(std::vector<std::vector<uint64_t>>* layer_ns, size_t run);

  Manifest manifest_;
  ThreadPlan plan_;
  uint64_t init_ns_ = 0;
  std::unique_ptr<void, DlClose> lib_;
  AlignedBuffer weights_;
  AlignedBuffer arena_;
  AlignedBuffer scratch_;
  std::vector<const float*> arg_pointers_;  // every step's inputs and params, back to back
  std::vector<PreparedStep> steps_;
  std::unique_ptr<ThreadPool> pool_;
  std::vector<float> default_inputs_;  // concatenated, built on first use
};

// Reads the ELF header of `path` and checks it is a shared object for this runner's machine.
Status check_kernel_elf(const std::string& path, const std::string& sha);

}  // namespace npas

#endif  // NPAS_CORE_MODEL_H
