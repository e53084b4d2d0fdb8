// The backend-independent part of a loaded model: input checks, default inputs, one run and
// the benchmark loop. Backends only put inputs in place, execute steps and fetch outputs.
#include "core/model.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/os_util.h"
#include "core/thread_pool.h"

namespace npas {

Status check_artifacts_in_store(const Manifest& manifest, ArtifactStore& store) {
  // Every artifact is verified before the first error is returned, so that all the corrupted
  // ones are gone and one re-upload replaces them all.
  Status first;
  for (const ArtifactRef& a : manifest.artifacts) {
    auto size = store.size_of(a.sha256);
    Status s;
    if (!size.ok()) {
      s = NotFound("artifact '" + clip(a.role) + "' " + a.sha256 +
                   " is not in the runner's store; upload it first");
    } else if (Status good = store.verify(a.sha256); !good.ok()) {
      s = Status(good.code(), "artifact '" + clip(a.role) + "': " + good.message());
    } else if (size.value() != a.size) {
      s = FailedPrecondition("artifact '" + clip(a.role) + "' " + a.sha256 + " has " +
                             u(size.value()) + " bytes in the store, the manifest says " +
                             u(a.size));
    }
    if (!s.ok() && first.ok()) first = s;
  }
  return first;
}

MemoryNeed memory_need(const Manifest& m, Backend backend, int threads) {
  MemoryNeed n;
  for (const ArtifactRef& a : m.artifacts) {
    if (a.role == "weights" && !m.prepare.empty()) n.shipped = a.size;
  }
  n.weights = m.weights_bytes;  // the blob's size when there are no prepare steps
  n.arena = m.arena_bytes;
  if (backend == Backend::kCpu) {
    n.scratch_stride = (m.scratch_bytes_per_thread + 63) / 64 * 64;
    n.threads = uint64_t(threads > 0 ? threads : 1);
  } else {
    for (uint32_t idx : m.outputs) n.outputs += m.tensors[idx].nbytes;
  }
  return n;  // every term bounded by validate_manifest's limits: no overflow
}

std::string MemoryNeed::describe(const std::string& model_name) const {
  std::string s = "model '" + clip(model_name) + "' needs " + u(total()) +
                  " bytes of memory (weights " + u(weights) + ", activation arena " + u(arena);
  if (scratch_stride) s += ", scratch " + u(scratch_stride) + " bytes x " + u(threads) + " threads";
  if (outputs) s += ", output copies " + u(outputs);
  if (shipped) s += "; the " + u(shipped) + "-byte shipped blob beside the weights while they are prepared";
  return s + ")";
}

Status read_file_into(const std::string& path, uint8_t* dst, uint64_t size,
                      const std::string& what) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError("cannot open " + what + " " + path, errno);
  uint64_t done = 0;
  while (done < size) {
    ssize_t n = ::read(fd.get(), dst + done, size_t(std::min<uint64_t>(size - done, 1 << 30)));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot read " + what + " " + path, errno);
    }
    if (n == 0) return DataLoss(what + " " + path + " ended after " + u(done) + " bytes");
    done += uint64_t(n);
  }
  return Status::Ok();
}

void default_input_values(float* values, size_t count, uint64_t* state) {
  for (size_t i = 0; i < count; ++i) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    // 24 random bits -> [0, 1) exactly representable, then [-1, 1).
    values[i] = float(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
  }
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t exp = (x >> 23) & 0xFFu;
  uint32_t mant = x & 0x7FFFFFu;
  if (exp == 0xFF) return uint16_t(sign | 0x7C00u | (mant ? 0x200u : 0));  // inf, NaN
  int32_t e = int32_t(exp) - 127 + 15;
  if (e >= 31) return uint16_t(sign | 0x7C00u);  // overflow -> inf
  if (e <= 0) {                                   // subnormal half, or zero
    if (e < -10) return uint16_t(sign);
    mant |= 0x800000u;
    uint32_t shift = uint32_t(14 - e);
    uint32_t h = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return uint16_t(sign | h);
  }
  uint32_t h = (uint32_t(e) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;  // may carry into the exponent: ok
  return uint16_t(sign | h);
}

Status Model::check_inputs(const std::vector<TensorView>& inputs) const {
  const auto& m = manifest_;
  if (inputs.size() != m.inputs.size()) {
    std::string names;
    for (uint32_t idx : m.inputs) {
      names += (names.empty() ? "" : ", ") + clip(m.tensors[idx].name, 40);
    }
    return InvalidArgument("model '" + clip(m.name) + "' takes " + u(m.inputs.size()) +
                           " input(s) [" + clip(names, 400) + "], got " + u(inputs.size()));
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorSpec& t = m.tensors[m.inputs[i]];
    const TensorView& v = inputs[i];
    std::string who = "input " + u(i) + " '" + clip(t.name) + "'";
    if (!v.name.empty() && v.name != t.name) {
      return InvalidArgument(who + ": got a tensor named '" + clip(v.name) +
                             "'; inputs go in the manifest's order");
    }
    const std::string dtype = v.dtype.empty() ? "float32" : v.dtype;
    if (dtype != t.dtype) {
      return InvalidArgument(who + ": dtype expected " + t.dtype + ", got " + clip(dtype) +
                             (v.dtype.empty() ? " (empty means float32)" : ""));
    }
    if (v.shape != t.shape) {
      return InvalidArgument(who + ": shape expected " + shape_str(t.shape) + ", got " +
                             shape_str(v.shape));
    }
    if (v.size != t.nbytes) {
      return InvalidArgument(who + ": data expected " + u(t.nbytes) + " bytes, got " +
                             u(v.size));
    }
  }
  return Status::Ok();
}

const std::vector<TensorView>& Model::default_inputs() {
  if (default_views_.size() == manifest_.inputs.size()) return default_views_;
  size_t total_elems = 0, total_bytes = 0;
  for (uint32_t idx : manifest_.inputs) {
    const TensorSpec& t = manifest_.tensors[idx];
    total_elems += size_t(t.nbytes / dtype_size(t.dtype));
    total_bytes += size_t(t.nbytes);
  }
  std::vector<float> values(total_elems);
  uint64_t state = kDefaultInputSeed;
  default_input_values(values.data(), total_elems, &state);
  default_bytes_.assign(total_bytes, 0);
  default_views_.clear();
  size_t elem = 0, byte = 0;
  for (uint32_t idx : manifest_.inputs) {
    const TensorSpec& t = manifest_.tensors[idx];
    size_t n = size_t(t.nbytes / dtype_size(t.dtype));
    uint8_t* dst = default_bytes_.data() + byte;
    if (t.dtype == "float16") {
      for (size_t k = 0; k < n; ++k) {
        uint16_t h = float_to_half(values[elem + k]);
        std::memcpy(dst + 2 * k, &h, 2);
      }
    } else {
      std::memcpy(dst, values.data() + elem, n * 4);
    }
    default_views_.push_back({t.name, t.shape, t.dtype, dst, size_t(t.nbytes)});
    elem += n;
    byte += size_t(t.nbytes);
  }
  return default_views_;
}

Status Model::run(const std::vector<TensorView>& inputs, uint64_t* latency_ns) {
  NPAS_RETURN_IF_ERROR(check_inputs(inputs));
  ScopedCallerAffinity pin(caller_cpu());
  NPAS_RETURN_IF_ERROR(write_inputs(inputs));
  uint64_t t = 0;
  NPAS_RETURN_IF_ERROR(execute(nullptr, 0, &t));
  ++inferences_;
  NPAS_RETURN_IF_ERROR(read_outputs());
  if (latency_ns) *latency_ns = t;
  return Status::Ok();
}

size_t Model::output_size(size_t i) const {
  return size_t(manifest_.tensors[manifest_.outputs[i]].nbytes);
}

Status Model::benchmark(const BenchmarkOptions& opts, BenchmarkResult* result) {
  const size_t n_steps = manifest_.steps.size();
  if (opts.runs > kMaxBenchmarkRuns) {
    return InvalidArgument("runs " + u(opts.runs) + " is over the limit of " +
                           u(kMaxBenchmarkRuns));
  }
  if (opts.warmup > kMaxBenchmarkWarmup) {
    return InvalidArgument("warmup " + u(opts.warmup) + " is over the limit of " +
                           u(kMaxBenchmarkWarmup));
  }
  if (opts.runs == 0) return InvalidArgument("runs must be at least 1");
  if (opts.warmup_min_ns > kMaxWarmupMinNs) {
    return InvalidArgument("warmup_min_ms " + u(opts.warmup_min_ns / 1000000) +
                           " is over the limit of " + u(kMaxWarmupMinNs / 1000000) + " ms");
  }
  if (opts.pause_ns > kMaxPauseNs) {
    return InvalidArgument("pause_us " + u(opts.pause_ns / 1000) + " is over the limit of " +
                           u(kMaxPauseNs / 1000) + " us");
  }
  uint32_t runs = opts.runs;
  if (opts.pause_ns * runs > kMaxTotalPauseNs) {  // both bounded: no overflow
    return InvalidArgument("pause_us " + u(opts.pause_ns / 1000) + " x " + u(runs) +
                           " runs is over the limit of " + u(kMaxTotalPauseNs / 1000000000) +
                           " s of pauses; ask for a shorter pause or fewer runs");
  }
  if (opts.per_layer && uint64_t(runs) * n_steps > kMaxLayerSamples) {
    return InvalidArgument("per_layer with " + u(runs) + " runs x " + u(n_steps) +
                           " steps is " + u(uint64_t(runs) * n_steps) +
                           " samples, over the limit of " + u(kMaxLayerSamples) +
                           "; ask for fewer runs");
  }
  bool given = !opts.inputs.empty() || manifest_.inputs.empty();
  if (given) NPAS_RETURN_IF_ERROR(check_inputs(opts.inputs));
  const std::vector<TensorView>& inputs = given ? opts.inputs : default_inputs();

  result->samples_ns.assign(runs, 0);
  result->warmup_ns.clear();
  result->warmup_ns.reserve(opts.warmup);
  result->layer_ns.clear();
  if (opts.per_layer) result->layer_ns.assign(n_steps, std::vector<uint64_t>(runs, 0));

  // Memory first, so the high-water mark covers this benchmark only where the OS lets us
  // reset it; where it does not, the process's lifetime peak is reported and said to be.
  MemoryUsage mem;
  std::string why;
  const bool have_mem = read_memory_usage(&mem, &why);
  result->rss_before_bytes = have_mem ? mem.rss_bytes : 0;
  const bool reset = have_mem && reset_peak_rss(&why);
  auto cancelled = [&] { return opts.cancelled && opts.cancelled(); };
  const Status stop(Code::kCancelled, "benchmark cancelled");

  ScopedCallerAffinity pin(caller_cpu());
  // Inputs go in before every run (outside the timing): the memory plan may reuse their space.
  if (cancelled()) return stop;
  result->first_run_cold = inferences_ == 0;
  NPAS_RETURN_IF_ERROR(write_inputs(inputs));
  NPAS_RETURN_IF_ERROR(execute(nullptr, 0, &result->first_run_ns));
  ++inferences_;
  const uint64_t warmup_start = monotonic_ns();
  for (uint32_t r = 0; r < kMaxBenchmarkWarmup; ++r) {
    if (r >= opts.warmup && monotonic_ns() - warmup_start >= opts.warmup_min_ns) break;
    if (cancelled()) return stop;
    uint64_t t = 0;
    NPAS_RETURN_IF_ERROR(write_inputs(inputs));
    NPAS_RETURN_IF_ERROR(execute(nullptr, 0, &t));
    ++inferences_;
    result->warmup_ns.push_back(t);
  }
  result->warmup_elapsed_ns = monotonic_ns() - warmup_start;
  auto* layers = opts.per_layer ? &result->layer_ns : nullptr;
  for (uint32_t r = 0; r < runs; ++r) {
    if (cancelled()) return stop;
    count_mark(kMarkRunBegin);
    NPAS_RETURN_IF_ERROR(write_inputs(inputs));
    NPAS_RETURN_IF_ERROR(execute(layers, r, &result->samples_ns[r]));
    ++inferences_;
    count_mark(kMarkRunEnd);
    if (opts.pause_ns && r + 1 < runs) sleep_ns(opts.pause_ns);
  }

  MemoryUsage after;
  if (have_mem && read_memory_usage(&after, &why)) {
    result->peak_rss_bytes = after.peak_rss_bytes;
    result->memory_note = reset ? "" : "peak since the runner started (cannot reset it: " +
                                           why + ")";
  } else {
    result->memory_note = "peak resident memory unknown: " + why;
  }
  return Status::Ok();
}

}  // namespace npas
