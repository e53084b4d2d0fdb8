// Bundle loading (validate, ELF check, dlopen, buffers, kernel arguments) and execution.
#include "core/model.h"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace npas {
namespace {

std::string u(uint64_t v) { return std::to_string(v); }

uint64_t now_ns() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
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

}  // namespace

StatusOr<ThreadPlan> plan_threads(const ThreadRequest& req, const DeviceInfo& device) {
  ThreadPlan plan;
  std::vector<int> big = big_core_ids(device);
  if (req.threads > kMaxThreads) {
    return InvalidArgument("threads " + u(req.threads) + " is over the limit of " +
                           u(kMaxThreads));
  }
  for (uint32_t cpu : req.cpu_affinity) {
    if (cpu >= device.cores.size() || cpu >= CPU_SETSIZE) {
      return InvalidArgument("cpu_affinity names core " + u(cpu) + ", this device has cores 0.." +
                             u(device.cores.size() - 1));
    }
  }
  plan.threads = req.threads > 0 ? int(req.threads)
                                 : int(big.empty() ? device.max_threads : big.size());
  if (plan.threads < 1) plan.threads = 1;
  std::vector<int> cpus;
  if (!req.cpu_affinity.empty()) {
    cpus.assign(req.cpu_affinity.begin(), req.cpu_affinity.end());
  } else if (req.pin_big_cores) {
    cpus = big;
  }
  for (size_t i = 0; !cpus.empty() && i < size_t(plan.threads); ++i) {
    plan.affinity.push_back(cpus[i % cpus.size()]);
  }
  return plan;
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

Status check_kernel_elf(const std::string& path, const std::string& sha) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError("cannot open kernel library " + sha, errno);
  Elf64_Ehdr h{};
  ssize_t n = ::pread(fd.get(), &h, sizeof h, 0);
  std::string who = "kernel library " + sha;
  if (n < EI_NIDENT || std::memcmp(h.e_ident, ELFMAG, SELFMAG) != 0) {
    return FailedPrecondition(who + " is not an ELF file");
  }
  if (h.e_ident[EI_CLASS] != ELFCLASS64 || n < ssize_t(sizeof h)) {
    return FailedPrecondition(who + " is a 32-bit ELF file, this runner is " +
                              elf_machine_name(runner_elf_machine()) + " (64-bit)");
  }
  if (h.e_ident[EI_DATA] != ELFDATA2LSB) {
    return FailedPrecondition(who + " is big-endian; the runner needs little-endian");
  }
  if (h.e_machine != runner_elf_machine()) {
    return FailedPrecondition(who + " is built for " + elf_machine_name(h.e_machine) +
                              ", this runner is " + elf_machine_name(runner_elf_machine()));
  }
  if (h.e_type != ET_DYN) {
    return FailedPrecondition(who + " is not a shared object (e_type " + u(h.e_type) +
                              "); build it with -shared -fPIC");
  }
  return Status::Ok();
}

void Model::DlClose::operator()(void* h) const {
  if (h) dlclose(h);
}

Model::~Model() {
  pool_.reset();  // workers stop before the library that holds their code goes away
}

StatusOr<std::unique_ptr<Model>> Model::load(const Manifest& manifest, const ArtifactStore& store,
                                             const ManifestLimits& limits,
                                             const ThreadPlan& plan) {
  uint64_t t0 = now_ns();
  ManifestArtifacts which;
  NPAS_RETURN_IF_ERROR(validate_manifest(manifest, limits, &which));
  for (const ArtifactRef& a : manifest.artifacts) {
    auto size = store.size_of(a.sha256);
    if (!size.ok()) {
      return NotFound("artifact '" + a.role + "' " + a.sha256 +
                      " is not in the runner's store; upload it first");
    }
    if (size.value() != a.size) {
      return FailedPrecondition("artifact '" + a.role + "' " + a.sha256 + " has " +
                                u(size.value()) + " bytes in the store, the manifest says " +
                                u(a.size));
    }
  }

  std::unique_ptr<Model> m(new Model());  // private constructor
  m->manifest_ = manifest;
  m->plan_ = plan;

  // Kernel library: header first, so a wrong architecture is a clear error, not a dlerror.
  const ArtifactRef& kref = manifest.artifacts[size_t(which.kernels)];
  std::string kpath = store.path_of(kref.sha256);
  NPAS_RETURN_IF_ERROR(check_kernel_elf(kpath, kref.sha256));
  dlerror();
  m->lib_.reset(dlopen(kpath.c_str(), RTLD_NOW | RTLD_LOCAL));
  if (!m->lib_) {
    const char* e = dlerror();
    return FailedPrecondition("kernel library " + kref.sha256 + " cannot be loaded: " +
                              (e ? e : "unknown dlopen error"));
  }
  const void* abi_sym = dlsym(m->lib_.get(), NPAS_ABI_VERSION_SYMBOL);
  if (!abi_sym) {
    return FailedPrecondition("kernel library " + kref.sha256 + " does not export " +
                              NPAS_ABI_VERSION_SYMBOL);
  }
  uint32_t abi = *static_cast<const uint32_t*>(abi_sym);
  if (abi != NPAS_KERNEL_ABI_VERSION) {
    return FailedPrecondition("kernel library " + kref.sha256 + " has kernel ABI version " +
                              u(abi) + ", this runner implements " + u(NPAS_KERNEL_ABI_VERSION));
  }

  // Weights.
  if (which.weights >= 0) {
    const ArtifactRef& wref = manifest.artifacts[size_t(which.weights)];
    m->weights_ = AlignedBuffer(size_t(wref.size));
    if (!m->weights_.allocated()) {
      return ResourceExhausted("cannot allocate " + u(wref.size) + " bytes for the weights");
    }
    NPAS_RETURN_IF_ERROR(
        read_file_into(store.path_of(wref.sha256), m->weights_.data(), wref.size, "weights"));
  }

  // Arena and scratch.
  m->arena_ = AlignedBuffer(size_t(manifest.arena_bytes));
  if (!m->arena_.allocated()) {
    return ResourceExhausted("cannot allocate the activation arena of " +
                             u(manifest.arena_bytes) + " bytes");
  }
  size_t stride = size_t((manifest.scratch_bytes_per_thread + 63) / 64 * 64);
  if (stride > 0) {
    m->scratch_ = AlignedBuffer(stride * size_t(plan.threads));
    if (!m->scratch_.allocated()) {
      return ResourceExhausted("cannot allocate scratch of " + u(stride) + " bytes x " +
                               u(plan.threads) + " threads");
    }
  }

  // Kernel arguments, computed once. arg_pointers_ is sized before any pointer into it is taken.
  size_t n_ptrs = 0;
  for (const Step& s : manifest.steps) n_ptrs += s.inputs.size() + s.params.size();
  m->arg_pointers_.resize(n_ptrs);
  m->steps_.resize(manifest.steps.size());
  size_t next = 0;
  uint8_t* arena = m->arena_.data();
  for (size_t i = 0; i < manifest.steps.size(); ++i) {
    const Step& s = manifest.steps[i];
    PreparedStep& p = m->steps_[i];
    dlerror();
    void* fn = dlsym(m->lib_.get(), s.symbol.c_str());
    if (!fn) {
      return NotFound("step " + u(i) + " '" + s.name + "': symbol '" + s.symbol +
                      "' is not exported by kernel library " + kref.sha256);
    }
    p.fn = reinterpret_cast<npas_kernel_fn>(fn);
    const float** in = m->arg_pointers_.data() + next;
    for (size_t j = 0; j < s.inputs.size(); ++j) {
      in[j] = reinterpret_cast<const float*>(arena + manifest.tensors[s.inputs[j]].arena_offset);
    }
    next += s.inputs.size();
    const float** par = m->arg_pointers_.data() + next;
    for (size_t j = 0; j < s.params.size(); ++j) {
      par[j] = reinterpret_cast<const float*>(m->weights_.data() + s.params[j].offset);
    }
    next += s.params.size();
    p.args.inputs = in;
    p.args.params = par;
    p.args.output = reinterpret_cast<float*>(arena + manifest.tensors[s.output].arena_offset);
    p.work_items = int64_t(s.work_items);
    p.scratch = stride > 0 ? m->scratch_.data() : nullptr;
    p.scratch_stride = stride;
  }

  m->pool_ = std::make_unique<ThreadPool>(plan.threads, plan.affinity);
  m->init_ns_ = now_ns() - t0;
  return m;
}

Status Model::check_inputs(const std::vector<TensorView>& inputs) const {
  const auto& m = manifest_;
  if (inputs.size() != m.inputs.size()) {
    std::string names;
    for (uint32_t idx : m.inputs) names += (names.empty() ? "" : ", ") + m.tensors[idx].name;
    return InvalidArgument("model '" + m.name + "' takes " + u(m.inputs.size()) + " input(s) [" +
                           names + "], got " + u(inputs.size()));
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorSpec& t = m.tensors[m.inputs[i]];
    const TensorView& v = inputs[i];
    std::string who = "input " + u(i) + " '" + t.name + "'";
    if (!v.name.empty() && v.name != t.name) {
      return InvalidArgument(who + ": got a tensor named '" + v.name +
                             "'; inputs go in the manifest's order");
    }
    if (!v.dtype.empty() && v.dtype != t.dtype) {
      return InvalidArgument(who + ": dtype expected " + t.dtype + ", got " + v.dtype);
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

void Model::copy_inputs(const std::vector<TensorView>& inputs) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorSpec& t = manifest_.tensors[manifest_.inputs[i]];
    if (t.nbytes) std::memcpy(arena_.data() + t.arena_offset, inputs[i].data, t.nbytes);
  }
}

void Model::copy_default_inputs() {
  if (default_inputs_.empty()) {
    size_t total = 0;
    for (uint32_t idx : manifest_.inputs) total += manifest_.tensors[idx].nbytes / 4;
    default_inputs_.resize(total);
    uint64_t state = kDefaultInputSeed;
    default_input_values(default_inputs_.data(), total, &state);
  }
  size_t off = 0;
  for (uint32_t idx : manifest_.inputs) {
    const TensorSpec& t = manifest_.tensors[idx];
    std::memcpy(arena_.data() + t.arena_offset, default_inputs_.data() + off, t.nbytes);
    off += t.nbytes / 4;
  }
}

void Model::run_range(void* ctx, int worker, int64_t begin, int64_t end) {
  const auto* p = static_cast<const PreparedStep*>(ctx);
  void* scratch = p->scratch ? p->scratch + size_t(worker) * p->scratch_stride : nullptr;
  p->fn(&p->args, begin, end, scratch);
}

void Model::run_steps() {
  for (PreparedStep& p : steps_) pool_->parallel_for(p.work_items, &Model::run_range, &p);
}

uint64_t Model::run_steps_timed(std::vector<std::vector<uint64_t>>* layer_ns, size_t run) {
  uint64_t t0 = now_ns();
  if (!layer_ns) {
    run_steps();
  } else {
    uint64_t prev = t0;
    for (size_t i = 0; i < steps_.size(); ++i) {
      pool_->parallel_for(steps_[i].work_items, &Model::run_range, &steps_[i]);
      uint64_t t = now_ns();
      (*layer_ns)[i][run] = t - prev;
      prev = t;
    }
  }
  return now_ns() - t0;
}

Status Model::run(const std::vector<TensorView>& inputs, uint64_t* latency_ns) {
  NPAS_RETURN_IF_ERROR(check_inputs(inputs));
  ScopedCallerAffinity pin(plan_.affinity.empty() ? -1 : plan_.affinity[0]);
  copy_inputs(inputs);
  uint64_t t = run_steps_timed(nullptr, 0);
  if (latency_ns) *latency_ns = t;
  return Status::Ok();
}

const uint8_t* Model::output_data(size_t i) const {
  return arena_.data() + manifest_.tensors[manifest_.outputs[i]].arena_offset;
}

size_t Model::output_size(size_t i) const {
  return size_t(manifest_.tensors[manifest_.outputs[i]].nbytes);
}

Status Model::benchmark(const BenchmarkOptions& opts, BenchmarkResult* result) {
  if (opts.runs > kMaxBenchmarkRuns) {
    return InvalidArgument("runs " + u(opts.runs) + " is over the limit of " +
                           u(kMaxBenchmarkRuns));
  }
  if (opts.warmup > kMaxBenchmarkWarmup) {
    return InvalidArgument("warmup " + u(opts.warmup) + " is over the limit of " +
                           u(kMaxBenchmarkWarmup));
  }
  if (opts.runs == 0) return InvalidArgument("runs must be at least 1");
  uint32_t runs = opts.runs;
  if (opts.per_layer && uint64_t(runs) * steps_.size() > kMaxLayerSamples) {
    return InvalidArgument("per_layer with " + u(runs) + " runs x " + u(steps_.size()) +
                           " steps is " + u(uint64_t(runs) * steps_.size()) +
                           " samples, over the limit of " + u(kMaxLayerSamples) +
                           "; ask for fewer runs");
  }
  bool given = !opts.inputs.empty() || manifest_.inputs.empty();
  if (given) NPAS_RETURN_IF_ERROR(check_inputs(opts.inputs));

  result->samples_ns.assign(runs, 0);
  result->warmup_ns.assign(opts.warmup, 0);
  result->layer_ns.clear();
  if (opts.per_layer) result->layer_ns.assign(steps_.size(), std::vector<uint64_t>(runs, 0));

  ScopedCallerAffinity pin(plan_.affinity.empty() ? -1 : plan_.affinity[0]);
  // Inputs go in before every run (outside the timing): the memory plan may reuse their space.
  auto load_inputs = [&] { given ? copy_inputs(opts.inputs) : copy_default_inputs(); };
  for (uint32_t r = 0; r < opts.warmup; ++r) {
    if (opts.cancelled && opts.cancelled()) return Status(Code::kCancelled, "benchmark cancelled");
    load_inputs();
    result->warmup_ns[r] = run_steps_timed(nullptr, 0);
  }
  auto* layers = opts.per_layer ? &result->layer_ns : nullptr;
  for (uint32_t r = 0; r < runs; ++r) {
    if (opts.cancelled && opts.cancelled()) return Status(Code::kCancelled, "benchmark cancelled");
    load_inputs();
    result->samples_ns[r] = run_steps_timed(layers, r);
  }
  return Status::Ok();
}

}  // namespace npas
