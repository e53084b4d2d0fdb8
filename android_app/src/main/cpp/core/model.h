// A loaded model, whatever runs it: the validated manifest, input checks, one run, and the
// benchmark protocol (warm-up discarded, N timed runs, per-layer times), written once here.
// Backends (core/cpu_model.h: kernel library + thread pool; core/gpu_model.h: OpenCL) supply
// the hooks: put inputs in place, execute every step once, fetch outputs.
#ifndef NPAS_CORE_MODEL_H
#define NPAS_CORE_MODEL_H

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/artifact_store.h"
#include "core/manifest.h"
#include "core/status.h"

namespace npas {

// A tensor handed in by a caller; `data` is borrowed for the duration of the call.
struct TensorView {
  std::string name;  // empty: positional
  std::vector<int64_t> shape;
  std::string dtype;  // empty: float32
  const void* data = nullptr;
  size_t size = 0;
};

// Literal counts (the proto's "0 means default" is the service's business).
constexpr uint32_t kDefaultBenchmarkWarmup = 10;  // proto BenchmarkRequest: 0 means these
constexpr uint32_t kDefaultBenchmarkRuns = 100;

// The protocol, in order: one first inference (timed, reported alone, not a warm-up run), then
// warm-up runs until there have been `warmup` of them AND `warmup_min_ns` have passed (at most
// kMaxBenchmarkWarmup runs), then `runs` timed runs, each followed by a pause of `pause_ns`
// outside its timing. The runner's peak resident memory is measured over all of it.
struct BenchmarkOptions {
  uint32_t warmup = kDefaultBenchmarkWarmup;
  uint32_t runs = kDefaultBenchmarkRuns;
  uint64_t warmup_min_ns = 0;
  uint64_t pause_ns = 0;
  bool per_layer = false;
  std::vector<TensorView> inputs;  // empty: deterministic pseudo-random inputs
  // Polled between runs; true stops the benchmark with CANCELLED.
  std::function<bool()> cancelled;
};

constexpr uint32_t kMaxBenchmarkRuns = 100000;
constexpr uint32_t kMaxBenchmarkWarmup = 10000;
constexpr uint64_t kMaxLayerSamples = 20000000;  // runs x steps with per_layer
constexpr uint64_t kMaxWarmupMinNs = 600ull * 1000000000ull;  // 10 minutes
constexpr uint64_t kMaxPauseNs = 10ull * 1000000000ull;       // 10 s between two runs
constexpr uint64_t kMaxTotalPauseNs = 3600ull * 1000000000ull;  // runs x pause: an hour

struct BenchmarkResult {
  std::vector<uint64_t> samples_ns;
  std::vector<uint64_t> warmup_ns;
  std::vector<std::vector<uint64_t>> layer_ns;  // [step][run] when per_layer
  uint64_t first_run_ns = 0;
  bool first_run_cold = false;     // it was the model's first inference since its load
  uint64_t warmup_elapsed_ns = 0;  // wall time of the warm-up phase
  // The runner process's resident memory: before the benchmark, and its peak during it (the
  // kernel's high-water mark, reset first); 0 when unknown. memory_note is empty when the
  // peak covers the benchmark alone, else what it covers or why it is missing.
  uint64_t rss_before_bytes = 0;
  uint64_t peak_rss_bytes = 0;
  std::string memory_note;
};

// Fills `values` (count floats) with the default benchmark input: splitmix64 from a fixed
// seed, per model input in order, mapped to [-1, 1). float16 inputs get the same values,
// rounded to half precision.
void default_input_values(float* values, size_t count, uint64_t* state);
constexpr uint64_t kDefaultInputSeed = 0x4E50415300000001ull;  // "NPAS", 1

// IEEE 754 binary16 bits of `f`, rounded to nearest even (inf/NaN kept).
uint16_t float_to_half(float f);

// Every artifact of the manifest is in the store, its content verified against its sha256
// (ArtifactStore::verify: NotFound when one is missing, or was corrupted and is now removed),
// with its declared size (FailedPrecondition when a size differs). Loaders call it before they
// open any artifact.
Status check_artifacts_in_store(const Manifest& manifest, ArtifactStore& store);

// The memory a model of a validated manifest needs: its weight buffer (weights_bytes),
// activation arena, scratch (per thread, 64-byte aligned) and, on the GPU, host copies of its
// outputs; while its prepare steps run, also the shipped blob (freed before the arena and
// scratch are allocated, so the larger of the two counts).
struct MemoryNeed {
  uint64_t weights = 0, arena = 0, scratch_stride = 0, outputs = 0;
  uint64_t shipped = 0;  // the blob held during the prepare steps (0: none)
  uint64_t threads = 1;
  // Saturating: a weight size the manifest states (checked against the store only later)
  // must not wrap the sum into a small reservation.
  uint64_t total() const {
    auto add = [](uint64_t a, uint64_t b) { return b > UINT64_MAX - a ? UINT64_MAX : a + b; };
    const uint64_t scratch =
        threads && scratch_stride > UINT64_MAX / threads ? UINT64_MAX : scratch_stride * threads;
    const uint64_t running = add(arena, scratch);
    return add(add(weights, running > shipped ? running : shipped), outputs);
  }
  // "model 'NAME' needs N bytes of memory (weights .., activation arena .., scratch .. x T
  // threads)"
  std::string describe(const std::string& model_name) const;
};
MemoryNeed memory_need(const Manifest& m, Backend backend, int threads);
// Reads exactly `size` bytes of the file at `path` into `dst`; `what` names it in errors.
Status read_file_into(const std::string& path, uint8_t* dst, uint64_t size,
                      const std::string& what);

class Model {
 public:
  virtual ~Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const Manifest& manifest() const { return manifest_; }
  uint64_t init_ns() const { return init_ns_; }
  virtual Backend backend() const = 0;
  virtual int threads() const = 0;
  // CPUs the worker threads are pinned to; empty: no pinning.
  virtual std::vector<int> cpu_affinity() const { return {}; }
  // Empty when every thread got its core; else the cores the OS refused, and why (those
  // threads run unpinned; the measurement goes on).
  virtual std::string affinity_note() const { return ""; }

  // InvalidArgument naming the tensor and the expected vs the received value. The dtype must
  // be the manifest's (empty counts as float32), so float16 tensors travel as 2-byte halves.
  Status check_inputs(const std::vector<TensorView>& inputs) const;
  // One inference: puts the inputs in place, runs every step, fetches the outputs; reports
  // the time of the steps alone. Read the outputs with output_data() afterwards (same caller,
  // same lock).
  Status run(const std::vector<TensorView>& inputs, uint64_t* latency_ns);
  virtual const uint8_t* output_data(size_t i) const = 0;
  size_t output_size(size_t i) const;

  Status benchmark(const BenchmarkOptions& opts, BenchmarkResult* result);

 protected:
  explicit Model(const Manifest& manifest) : manifest_(manifest) {}

  // Copies checked inputs (in Manifest.inputs order) to their arena offsets.
  virtual Status write_inputs(const std::vector<TensorView>& inputs) = 0;
  // Runs every step once and returns the wall time of the steps (monotonic clock) in *ns.
  // With layer_ns, also each step's time into (*layer_ns)[step][run].
  virtual Status execute(std::vector<std::vector<uint64_t>>* layer_ns, size_t run,
                         uint64_t* ns) = 0;
  // After run(): makes output_data() valid (a device backend copies the outputs back).
  virtual Status read_outputs() { return Status::Ok(); }
  // The CPU the calling thread is pinned to during run/benchmark; -1: none.
  virtual int caller_cpu() const { return -1; }

  uint64_t init_ns_ = 0;

 private:
  const std::vector<TensorView>& default_inputs();

  Manifest manifest_;
  uint64_t inferences_ = 0;  // executions since the load (run, benchmark)
  std::vector<uint8_t> default_bytes_;  // concatenated, built on first use
  std::vector<TensorView> default_views_;
};

}  // namespace npas

#endif  // NPAS_CORE_MODEL_H
